"""An adapter folder (peft format: ``adapter_config.json`` + ``adapter_model.safetensors``) read into per-layer row
ops for a shared base, and checked against that base before anything is served with it.

The file is checked first (its config, every value finite, every key on a layer of the base). Then the method's
own loader (``lt.load_adapter``, with its key and shape checks) loads it into a *skeleton* of the base: the base's
architecture on the meta device whose servable layers are the base's own (shared, not copied; loading adds
the adapter beside them and writes nothing into them). Each adapter layer of the skeleton gives its row op
(``AdapterLayer.row_op``), each trained head copy its own (``ModulesToSave.row_ops``), and a prompt-learning
method its virtual tokens. Whatever is wrong is an :class:`AdapterRejected` that names the file and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.overrides import TorchFunctionMode

from leantune.adapters import CONFIG_NAME, WEIGHTS_NAME, load_adapter, read_adapter_config
from leantune.errors import LeantuneError
from leantune.methods.base import AdapterLayer, ModulesToSave, in_out_features
from leantune.methods.lora_parameters import NOT_SERVED
from leantune.methods.prompt_learning import VirtualTokens
from leantune.methods.registry import REGISTRY, method_for_peft_type
from leantune.methods.rows import RowOp
from leantune.system.memory import heap_trimmer

SERVABLE_TYPES = tuple(spec.peft_type for spec in REGISTRY.values() if not spec.preset and spec.method.multi_adapter)
"""Methods that add to a base without changing its weights, so that many of them share one copy of it."""
ADAPTER = "default"

__all__ = ["AdapterRejected", "AdapterWeights", "VirtualTokens", "load_adapter_weights", "read_config"]


class AdapterRejected(LeantuneError):
    """An adapter that cannot be served on this base (the message says why)."""


@dataclass
class AdapterWeights:
    """What one adapter changes on its base: row ops per layer name, and virtual tokens for prompt/prefix tuning."""

    method: str  # peft_type
    ops: dict[str, RowOp] = field(default_factory=dict)
    virtual: VirtualTokens | None = None


def read_config(folder: Path) -> dict[str, Any]:
    """The raw adapter config, checked by leantune's method config (unsupported peft options are refused)."""
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        raise AdapterRejected(f"{folder}: no {CONFIG_NAME}.")
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterRejected(f"{cfg_file}: not valid JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise AdapterRejected(f"{cfg_file}: expected a JSON object.")
    peft_type = raw.get("peft_type")
    if peft_type not in SERVABLE_TYPES:
        try:
            changes_base = not method_for_peft_type(peft_type).multi_adapter
        except LeantuneError:
            changes_base = False
        if changes_base:
            raise AdapterRejected(f"{cfg_file}: a {peft_type} run changes the base model's own weights, so it cannot "
                                  "share a base with other adapters; export it merged and serve that as its own model.")
        raise AdapterRejected(f"{cfg_file}: peft_type {peft_type!r} is not servable; served: {list(SERVABLE_TYPES)}.")
    try:
        read_adapter_config(folder)  # leantune's own validation of every field
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise AdapterRejected(f"{cfg_file}: {where}: {err['msg']}") from None
    except LeantuneError as e:
        raise AdapterRejected(str(e)) from None
    if raw.get("target_parameters"):
        raise AdapterRejected(f"{cfg_file}: {NOT_SERVED}")
    if raw.get("bias") not in (None, "none"):
        raise AdapterRejected(f"{cfg_file}: bias={raw['bias']!r} trains the base model's biases, which other adapters "
                              "share; export it merged instead.")
    return raw


def load_adapter_weights(folder: Path, layers: dict[str, nn.Module], model_config: Any, device: torch.device,
                         dtype: torch.dtype, skeleton: Callable[[], nn.Module]) -> AdapterWeights:
    """Read and check the adapter in ``folder`` against the base whose servable ``layers`` are given by name.
    ``skeleton`` makes a model of the base's architecture on the meta device (the run's task builds it with
    ``meta=True``); ``device`` and ``dtype`` are the base's."""
    raw = read_config(folder)
    weights_file = folder / WEIGHTS_NAME
    if not weights_file.is_file():
        raise AdapterRejected(f"{folder}: no {WEIGHTS_NAME}.")
    keys = _finite_keys(weights_file)
    prompt_learning = raw["peft_type"] in ("PROMPT_TUNING", "PREFIX_TUNING")
    if prompt_learning and getattr(model_config, "is_encoder_decoder", False):
        raise AdapterRejected(f"{weights_file}: prompt/prefix tuning of encoder-decoder models is not served.")
    model = skeleton().eval()
    _check_keys(weights_file, keys, "base_model." if prompt_learning else "base_model.model.", raw, layers,
                dict(model.named_modules()))
    _share_layers(model, layers, device, dtype)
    try:
        with _FileInit():
            load_adapter(model, folder, ADAPTER)
    except LeantuneError as e:
        raise AdapterRejected(str(e)) from None
    except (RuntimeError, ValueError) as e:
        raise AdapterRejected(f"{folder}: the adapter does not load on its base: {str(e).splitlines()[0]}") from None
    adapter = AdapterWeights(method=raw["peft_type"], ops=_row_ops(model, layers, weights_file))
    if prompt_learning:
        adapter.virtual = model.__dict__["_leantune"].method.virtual_tokens(model, ADAPTER)
    del model
    heap_trimmer(device)()  # the skeleton's adapter and the temporaries of the ops are freed: give the pages back
    if not adapter.ops and adapter.virtual is None:
        raise AdapterRejected(f"{weights_file}: no adapter weights in the file.")
    return adapter


def _finite_keys(weights_file: Path) -> list[str]:
    """The file's keys, once every floating-point tensor in it is checked finite (read one at a time)."""
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            keys = list(f.keys())
            for key in keys:
                value = f.get_tensor(key)
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise AdapterRejected(f"{weights_file}: '{key}' holds NaN or infinite values.")
    except (SafetensorError, OSError) as e:
        raise AdapterRejected(f"{weights_file}: not a readable safetensors file ({e}).") from None
    return keys


def _check_keys(source: Path, keys: list[str], prefix: str, raw: dict[str, Any], layers: dict[str, nn.Module],
                modules: dict[str, nn.Module]) -> None:
    """Every key under ``prefix`` must sit on a servable layer of the base (``layers``): beside it (an adapter's
    part) or as its own weight (a head in ``modules_to_save``). Keys elsewhere are the method loader's to check."""
    heads = raw.get("modules_to_save") or []
    not_linear = []
    for key in keys:
        if not key.startswith(prefix):
            continue
        if key.endswith(".base_layer.weight"):
            raise AdapterRejected(f"{source}: '{key}' replaces a weight of the base model, which other adapters "
                                  "share; export it merged instead.")
        parts = key[len(prefix):].split(".")
        depth = max(i for i in range(len(parts)) if ".".join(parts[:i]) in modules)
        name = ".".join(parts[:depth])
        if name in layers:
            continue
        if depth and _in_module(name, heads):
            not_linear.append(key)
            continue
        missing = ".".join(parts[:depth + 1])
        raise AdapterRejected(f"{source}: '{key}' names layer '{missing}', which the base model does not have "
                              "(was it trained on another base?).")
    if not_linear:
        raise AdapterRejected(f"{source}: modules_to_save tensor(s) {not_linear[:3]} are not weights of linear "
                              "layers; only heads made of linear layers are served.")


def _in_module(name: str, modules: list[str]) -> bool:
    """Whether layer ``name`` is, or is inside, a module that ``modules`` names (peft's suffix rule)."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        path = ".".join(parts[:i])
        if any(path == m or path.endswith("." + m) for m in modules):
            return True
    return False


class _FileInit(TorchFunctionMode):
    """Within the block (this thread only), ``torch.nn.init``'s random fills do nothing: the adapter's parameters
    are read from its file right after injection creates them, so drawing their starting values is wasted time."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


def _share_layers(model: nn.Module, layers: dict[str, nn.Module], device: torch.device, dtype: torch.dtype) -> None:
    """Put the base's own layers into the skeleton ``model`` in place of its weightless ones. A layer of another
    shape (a task head with another number of labels) gets weights of its own instead, which an adapter that
    trains the head overwrites."""
    for name, layer in layers.items():
        try:
            own = model.get_submodule(name)
        except AttributeError:
            continue
        if _shape(own) == _shape(layer):
            model.set_submodule(name, layer)
        else:
            own.to_empty(device=device).to(dtype)


def _shape(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Embedding):
        return layer.num_embeddings, layer.embedding_dim
    return in_out_features(layer)


def _row_ops(model: nn.Module, layers: dict[str, nn.Module], source: Path) -> dict[str, RowOp]:
    """The row op of every adapted layer and trained head copy of the loaded skeleton, by layer name."""
    ops: dict[str, RowOp] = {}
    try:
        for name, module in model.named_modules():
            if isinstance(module, AdapterLayer) and ADAPTER in module.adapter_names:
                if module.base_layer is not layers.get(name):
                    raise AdapterRejected(f"{source}: '{name}' has another shape in the base model (was it trained "
                                          "on another base?).")
                ops[name] = module.row_op(ADAPTER)
            elif isinstance(module, ModulesToSave) and ADAPTER in module.adapter_names:
                for sub, op in module.row_ops(ADAPTER).items():
                    ops[f"{name}.{sub}" if sub else name] = _fitting_head(source, f"{name}.{sub}" if sub else name,
                                                                          op, layers)
    except AdapterRejected:
        raise
    except LeantuneError as e:
        raise AdapterRejected(f"{source}: {e}") from None
    return ops


def _fitting_head(source: Path, name: str, op: Any, layers: dict[str, nn.Module]) -> RowOp:
    """A trained head copy must take the base layer's input (its width of output may differ)."""
    base = layers.get(name)
    if base is None:
        raise AdapterRejected(f"{source}: modules_to_save '{name}' is not a layer of the base model.")
    want, got = _shape(base)[0], _shape(op.module)[0]
    if want != got:
        raise AdapterRejected(f"{source}: modules_to_save '{name}' has shape {tuple(op.module.weight.shape)}; the "
                              f"base model needs {want} input features (was it trained on another base?).")
    return op
