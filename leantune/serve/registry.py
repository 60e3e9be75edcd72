"""The served models: one copy of each base, and the adapters registered on it.

Adapters are registered by name (from their run folders) and kept in memory up to ``max_adapters``: the least
recently used one that no running request holds is dropped when another must load, and is read again from its
folder when asked for. Registering validates everything first (config, base, every tensor's shape, one forward
pass), so an adapter that is listed is an adapter that serves. An adapter unregistered while requests hold it is
retired: those requests finish with it, no new one gets it, and its weights go when the last one releases them.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leantune.errors import LeantuneError
from leantune.run.loader import ServedRun, load_base, make_run_task, read_run, run_tokenizer
from leantune.serve.layers import RowContext, Segment, wrap_model
from leantune.serve.weights import AdapterRejected, AdapterWeights, load_adapter_weights

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")


class UnknownModel(LeantuneError):
    """A request named a model that is not served."""


class AdapterBusy(LeantuneError):
    """Every adapter slot is held by running requests (``--max-adapters``)."""


@dataclass
class ServedBase:
    """One base model in memory, wrapped so each batch row can carry its own adapter."""

    name: str
    run: ServedRun  # the first run on this base: task, tokenizer, prompt format
    model: nn.Module
    tokenizer: Any
    task: Any
    ctx: RowContext
    layers: dict[str, nn.Module]
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: Any = None  # GenerationEngine or EncoderEngine
    text_lock: threading.Lock = field(default_factory=threading.Lock)  # one request's tokenisation at a time

    @property
    def kind(self) -> str:
        return self.run.kind

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


@dataclass
class ServedAdapter:
    name: str
    run: ServedRun
    base: ServedBase
    order: int  # rows of one adapter sit together, sorted by this
    task: Any
    created: int = field(default_factory=lambda: int(time.time()))
    weights: AdapterWeights | None = None
    holders: int = 0
    loading: bool = False
    retired: bool = False  # unregistered: nobody may acquire it any more

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt for chat ``messages`` exactly as the run was trained (its template and system prompt)."""
        return self.task.conversation_prompt(messages)


def load_served_base(name: str, run: ServedRun, loaded: list[ServedBase]) -> ServedBase:
    """The base ``run`` needs. An encoder already loaded from the same weights for another task (classification
    and extractive QA on one MiniLM) is shared: only the task head is new; both then take turns on one lock."""
    tokenizer = run_tokenizer(run)
    model = load_base(run, tokenizer)
    donor, prefix = _backbone_donor(model, run, loaded)
    if donor is None:
        ctx, lock, layers = RowContext(), threading.Lock(), {}
    else:
        setattr(model, prefix, getattr(donor.model, prefix))
        ctx, lock = donor.ctx, donor.lock
        layers = {k: v for k, v in donor.layers.items() if k.startswith(prefix + ".")}
    layers.update(wrap_model(model, ctx))
    return ServedBase(name, run, model, tokenizer, make_run_task(run, tokenizer), ctx, layers, lock)


def _backbone_name(model: nn.Module) -> str | None:
    return getattr(model, "base_model_prefix", None) or getattr(model, "prefix", None)


def _backbone_donor(model: nn.Module, run: ServedRun, loaded: list[ServedBase]) -> tuple[ServedBase | None, str]:
    """A loaded encoder base whose backbone has the same weights (same folder and settings) and the same
    parameters as ``model``'s, with the backbone's attribute name."""
    prefix = _backbone_name(model)
    if run.kind == "generate" or not prefix or not isinstance(getattr(model, prefix, None), nn.Module):
        return None, ""
    mine = {n: tuple(p.shape) for n, p in getattr(model, prefix).named_parameters()}
    for base in loaded:
        if base.kind == "generate" or base.run.base_key[0] != run.base_key[0] or _backbone_name(base.model) != prefix:
            continue
        if base.run.base_key[2:] != run.base_key[2:]:  # quantisation and loading settings
            continue
        theirs = {n.replace(".base_layer", ""): tuple(p.shape)
                  for n, p in getattr(base.model, prefix).named_parameters()}
        if theirs == mine:
            return base, prefix
    return None, ""


class Registry:
    """Bases and adapters by name; loads, validates, evicts and reloads adapter weights."""

    def __init__(self, max_adapters: int | None = None) -> None:
        self.bases: dict[str, ServedBase] = {}
        self.adapters: dict[str, ServedAdapter] = {}
        self.loaded: OrderedDict[str, ServedAdapter] = OrderedDict()  # least recently used first
        self.retiring: list[ServedAdapter] = []  # unregistered, still held by running requests (each keeps a slot)
        self.max_adapters = max_adapters
        self.tasks: dict[tuple, Any] = {}
        self.cond = threading.Condition()
        self._order = itertools.count()

    # ------------------------------------------------------------------ bases
    def base_for(self, run: ServedRun) -> ServedBase:
        """The served base that ``run`` needs, loading it the first time."""
        for base in self.bases.values():
            if base.run.base_key == run.base_key:
                return base
        name = _base_name(run, self.bases)
        base = load_served_base(name, run, list(self.bases.values()))
        self.bases[name] = base
        return base

    # ------------------------------------------------------------------ adapters
    def names(self) -> list[str]:
        return [*self.bases, *self.adapters]

    def register(self, name: str, run_dir: str | Path, new_bases: bool = True) -> ServedAdapter:
        """Validate the run folder's adapter and make it servable as ``name``."""
        if not NAME_PATTERN.match(name):
            raise AdapterRejected(f"name {name!r}: use letters, digits and . _ - : @ + (at most 128 characters).")
        with self.cond:
            if name in self.adapters or name in self.bases:
                raise AdapterRejected(f"a model named '{name}' is already served; DELETE it first or pick another name.")
        run = read_run(run_dir, name, None if new_bases else {b.run.cfg.model for b in self.bases.values()})
        if not new_bases and not any(b.run.base_key == run.base_key for b in self.bases.values()):
            raise AdapterRejected(f"{run.run_dir} was trained on {run.cfg.model} ({run.kind}), which this server does "
                                  f"not serve; bases: {list(self.bases)}.")
        base = self.base_for(run)
        if run.kind != base.kind:
            raise AdapterRejected(f"{run.run_dir}: a {run.cfg.task} run cannot share the {base.kind} base {base.name}.")
        task = self._task(run, base)
        adapter = ServedAdapter(name, run, base, next(self._order), task)
        weights = self._read(adapter)
        self._dry_run(base, weights)
        with self.cond:
            if name in self.adapters:
                raise AdapterRejected(f"a model named '{name}' is already served.")
            self.adapters[name] = adapter
            if self.max_adapters is None or len(self.loaded) < self.max_adapters:
                adapter.weights = weights
                self.loaded[name] = adapter
        return adapter

    def _task(self, run: ServedRun, base: ServedBase) -> Any:
        """The run's task object (its prompt format); runs whose format settings match share one."""
        key = (base.name, run.cfg.task, run.cfg.task_args.model_dump_json(), str(run.run_dir) if run.labels else "")
        if key not in self.tasks:
            self.tasks[key] = base.task if run is base.run else make_run_task(run, base.tokenizer)
        return self.tasks[key]

    def unregister(self, name: str) -> None:
        """Stop serving ``name``: requests that hold it finish with it, later ones are told it does not exist."""
        with self.cond:
            adapter = self.adapters.pop(name, None)
            if adapter is None:
                raise UnknownModel(f"no adapter named '{name}'; adapters: {sorted(self.adapters)}.")
            adapter.retired = True
            if self.loaded.get(name) is adapter:
                del self.loaded[name]
                if adapter.holders or adapter.loading:
                    self.retiring.append(adapter)
                else:
                    adapter.weights = None
            self.cond.notify_all()

    def lookup(self, name: str) -> ServedAdapter | ServedBase:
        with self.cond:
            found = self.adapters.get(name) or self.bases.get(name)
        if found is None:
            raise UnknownModel(f"The model '{name}' does not exist. Models: {sorted(self.names())}.")
        return found

    def acquire(self, adapter: ServedAdapter, timeout: float = 60.0) -> AdapterWeights:
        """The adapter's weights, loaded (evicting the least recently used idle adapter if needed) and held until
        :meth:`release`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if adapter.retired:
                    raise _unloaded(adapter)
                if adapter.loading:
                    self.cond.wait(max(0.0, deadline - time.monotonic()) or 0.01)
                    continue
                if adapter.weights is not None:
                    self.loaded.move_to_end(adapter.name)
                    adapter.holders += 1
                    return adapter.weights
                if self.max_adapters is None or self.loaded_count < self.max_adapters or self._evict_one():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AdapterBusy(f"all {self.max_adapters} adapter slots (--max-adapters) are in use by running "
                                      "requests; retry shortly.")
                self.cond.wait(left)
            self.loaded[adapter.name] = adapter  # reserve the slot while reading the folder
            adapter.loading = True
        try:
            weights = self._read(adapter)
        except Exception:
            with self.cond:
                if self.loaded.get(adapter.name) is adapter:
                    del self.loaded[adapter.name]
                adapter.loading = False
                self._drop_if_retired(adapter)
                self.cond.notify_all()
            raise
        with self.cond:
            adapter.loading = False
            self.cond.notify_all()
            if adapter.retired:  # unregistered while its folder was read
                self._drop_if_retired(adapter)
                raise _unloaded(adapter)
            adapter.weights = weights
            adapter.holders += 1
            return weights

    def release(self, adapter: ServedAdapter) -> None:
        with self.cond:
            adapter.holders -= 1
            self._drop_if_retired(adapter)
            self.cond.notify_all()

    def _drop_if_retired(self, adapter: ServedAdapter) -> None:
        """Free a retired adapter's weights and slot once nobody holds or loads it (under ``cond``)."""
        if adapter.retired and adapter.holders == 0 and not adapter.loading:
            adapter.weights = None
            self.retiring = [a for a in self.retiring if a is not adapter]

    def _evict_one(self) -> bool:
        for name, candidate in self.loaded.items():
            if candidate.holders == 0 and candidate.weights is not None:
                candidate.weights = None
                del self.loaded[name]
                return True
        return False

    @property
    def loaded_count(self) -> int:
        """Adapters whose weights are in memory (retired ones still in use count)."""
        return len(self.loaded) + len(self.retiring)

    # ------------------------------------------------------------------ checks
    def _read(self, adapter: ServedAdapter) -> AdapterWeights:
        base = adapter.base
        return load_adapter_weights(adapter.run.adapter_dir, base.layers, base.model.config, base.device, base.dtype,
                                    lambda: adapter.task.build_model(adapter.run.model_path, meta=True))

    @staticmethod
    def _dry_run(base: ServedBase, weights: AdapterWeights) -> None:
        """One forward pass on two tokens with the adapter: whatever the shape checks missed fails here."""
        ids = torch.tensor([[base.tokenizer.pad_token_id or 0] * 2], device=base.device)
        try:
            with base.lock, base.ctx.use([Segment(weights.ops, 0, 1)]), torch.no_grad():
                base.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        except (RuntimeError, ValueError, IndexError) as e:
            raise AdapterRejected(f"the adapter does not run on its base: {str(e).splitlines()[0]}") from None


def _unloaded(adapter: ServedAdapter) -> UnknownModel:
    return UnknownModel(f"The model '{adapter.name}' does not exist: it was unloaded (DELETE /v1/adapters).")


def _base_name(run: ServedRun, existing: dict[str, ServedBase]) -> str:
    model = run.cfg.model
    name = Path(model).name if ("/" in model and Path(model).expanduser().exists()) or Path(model).is_dir() else model
    if name in existing:
        name = f"{name}-{run.kind}"
    while name in existing:
        name += "+"
    return name
