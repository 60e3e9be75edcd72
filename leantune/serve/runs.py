"""Run folders as the server sees them: which base, which task, which adapter, how prompts are written.

This is the one place where serving reaches into the rest of leantune (config, tasks, model loading), so a change
there is met here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from torch import nn

from leantune.errors import LeantuneError

KINDS = {"instruction": "generate", "translation": "generate", "classification": "classify",
         "extractive_qa": "answer"}


@dataclass
class ServedRun:
    """A finished run folder: its config, its adapter folder, and the base it needs."""

    name: str
    run_dir: Path
    cfg: Any  # leantune.config.RunConfig
    model_path: str
    labels: list[str] | None

    @property
    def kind(self) -> str:
        """What the run serves: generate (chat / completions), classify or answer (extractive QA)."""
        return KINDS[self.cfg.task]

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def base_key(self) -> tuple:
        """Runs with the same key share one copy of the base model."""
        cfg = self.cfg
        head = f"classification:{cfg.task_args.pooling}" if cfg.task == "classification" else self.kind
        return (self.model_path, head, cfg.quantize, cfg.trust_remote_code, cfg.allow_pickle_weights)


def read_run(run_dir: str | os.PathLike, name: str | None = None) -> ServedRun:
    """Check a run folder (config, adapter, labels) without loading any weights."""
    from leantune.config import validate_config
    from leantune.models.registry import resolve_model

    run = Path(run_dir).expanduser()
    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        raise LeantuneError(f"{run} is not a leantune run folder: it has no config.yaml.")
    try:
        cfg = validate_config(yaml.safe_load(cfg_file.read_text()), str(cfg_file))
    except yaml.YAMLError as e:  # where, never the text there
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "position unknown"
        raise LeantuneError(f"{cfg_file}: not valid YAML ({where}).") from None
    if not (run / "adapter").is_dir():
        raise LeantuneError(f"{run}: no adapter/ folder (did the run finish?).")
    labels_file = run / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.is_file() else None
    if cfg.task == "classification" and not labels:
        raise LeantuneError(f"{run}: a classification run needs its labels.json.")
    return ServedRun(name or run.resolve().name, run.resolve(), cfg, resolve_model(cfg.model), labels)


def make_run_task(run: ServedRun, tokenizer: Any) -> Any:
    """The run's task object (prompt formatting, model building), with the run's artifacts (labels) read."""
    from leantune.tasks import make_task

    task = make_task(run.cfg, tokenizer, run.model_path)
    task.load_artifacts(run.run_dir)
    return task


def load_tokenizer(run: ServedRun) -> Any:
    from leantune.models.loading import load_tokenizer as load

    return load(run.model_path, run.cfg.trust_remote_code)


def load_base(run: ServedRun, tokenizer: Any) -> nn.Module:
    """The base model of ``run`` without any adapter (built as the run's task builds it), in eval mode."""
    model = make_run_task(run, tokenizer).build_model(run.model_path)
    if run.cfg.quantize != "none":
        from leantune.models.quantize import quantize_model, resolve_backend

        device = next(model.parameters()).device
        quantize_model(model, run.cfg.quantize, resolve_backend(run.cfg.quantize_backend, device))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def parse_adapter_config(folder: Path) -> None:
    """leantune's own check of an adapter config (unknown peft options, bad values): a LeantuneError if wrong."""
    from leantune.adapters import read_adapter_config

    try:
        read_adapter_config(folder)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise LeantuneError(f"{folder / 'adapter_config.json'}: {field}: {err['msg']}") from None


WEIGHT_UPDATE_PARTS = ("lokr_", "oft_", "vera_lambda_")
"""The key parts of the methods served through leantune's own layers (LoKr, OFT, VeRA)."""


def meta_model(task: Any, model_path: str) -> nn.Module:
    """The run's model (as its task builds it) on the meta device: its module tree without weights."""
    return task.build_model(model_path, meta=True)


def weight_update_ops(skeleton: nn.Module, folder: Path, layers: dict[str, nn.Module], names: list[str],
                      device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Per-row ops of a LoKr, OFT or VeRA adapter, computed by leantune's own layers of that method: the adapter is
    loaded (``lt.load_adapter``, with its checks) into ``skeleton`` (the base's architecture, e.g. from
    :func:`meta_model`) after its adapted layers ``names`` are replaced by copies of the base's ``layers``; the
    base is not touched.

    LoKr becomes its dense ΔW (:class:`DeltaOp`), VeRA a LoRA op (``Λ_d A`` and ``Λ_b B``: the same function at
    rank r), OFT its rotation of the layer's input (:class:`InputRotationOp`)."""
    import copy

    import leantune as lt
    from leantune.methods.base import in_out_features
    from leantune.methods.lokr import LoKrLinear
    from leantune.methods.oft import OFTLinear
    from leantune.methods.vera import VeraLinear
    from leantune.serve.ops import DeltaOp, InputRotationOp, LoraOp

    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(skeleton.get_submodule(parent_name) if parent_name else skeleton, child, copy.deepcopy(layers[name]))
    lt.load_adapter(skeleton, folder)
    ops: dict[str, Any] = {}
    with torch.no_grad():
        for name in names:
            layer = skeleton.get_submodule(name)
            if isinstance(layer, LoKrLinear):
                ops[name] = DeltaOp(layer.delta_weight("default").to(device=device, dtype=dtype))
            elif isinstance(layer, VeraLinear):
                fan_in, fan_out = in_out_features(layer.base_layer)
                a, b = layer.vera_projections.pair("default")
                A = layer.vera_lambda_d["default"][:, None] * a[:, :fan_in]
                B = layer.vera_lambda_b["default"][:, None] * b[:fan_out, :]
                ops[name] = LoraOp(A.to(device=device, dtype=dtype), B.to(device=device, dtype=dtype))
            elif isinstance(layer, OFTLinear):
                rotate = layer.oft_R["default"].to(device).eval()
                ops[name] = InputRotationOp(rotate, rotate.weight.dtype)
    return ops


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """A layer's weight as (out_features, in_features), dequantised if needed."""
    from leantune.methods.base import weight_as_out_in

    return weight_as_out_in(layer)


def servable_layer_types() -> tuple[type, ...]:
    from leantune.methods.base import LINEAR_TYPES

    return (*LINEAR_TYPES, nn.Embedding)


def stop_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    from leantune.generate import eos_ids

    return eos_ids(model, tokenizer)


def chat_prompt(run: ServedRun, task: Any, messages: list[dict[str, str]]) -> str:
    """The prompt for chat ``messages`` exactly as the run was trained (its template and system prompt)."""
    return task.conversation_prompt(messages)


def qa_windows(tokenizer: Any, question: str, context: str, run: ServedRun) -> Any:
    from leantune.tasks.extractive_qa import make_windows

    max_length = run.cfg.train.max_length
    return make_windows(tokenizer, [question], [context], max_length, run.cfg.task_args.doc_stride or max_length // 3)


def cache_kwarg(model: nn.Module) -> str:
    from leantune.models.compat import cache_kwarg as kwarg

    return kwarg(model)


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: Any) -> torch.Tensor:
    """leantune generate's sampling, so a seeded request samples what ``leantune generate`` samples."""
    from leantune.generate import sample_tokens as sample

    return sample(logits, temperature, top_p, generator)


def uses_full_attention_cache(model: nn.Module) -> bool:
    """Whether every layer of the model's KV cache is plain full attention (what the batch cache handles)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def heap_trimmer(device: torch.device) -> Any:
    """A function that hands the heap's free pages back to the OS (glibc on CPU; else a no-op): decode steps
    allocate and free attention buffers that grow by a column each step, which fragments the heap."""
    from leantune.train.memory import heap_trimmer as trimmer

    return trimmer(device)
