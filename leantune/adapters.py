"""The public adapter API: attach, switch, save, load, merge. One function each, working for every method."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from leantune.errors import AdapterMismatchError, LeantuneError
from leantune.files import atomic_write
from leantune.methods import method_for_config, method_for_peft_type
from leantune.methods.base import (
    AdapterLayer,
    AdapterState,
    MethodConfig,
    ModulesToSave,
    get_state,
    require_state,
)
from leantune.methods.targeting import wrap_modules_to_save
from leantune.models.quantize import dequantize_model, is_quantized, quantized_weight_count
from leantune.models.targets import default_head_modules
from leantune.tensors import full_tensor

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def attach(model: nn.Module, config: MethodConfig, adapter_name: str = "default") -> nn.Module:
    """Inject the method described by ``config`` into ``model``, freeze the base, and return the model.

    The model stays the same object (a transformers model keeps ``generate``, ``config`` ...); the adapter
    ``adapter_name`` is active and its parameters are the only ones that require gradients.
    """
    if get_state(model) is not None:
        raise LeantuneError("This model already has adapters: use lt.add_adapter(model, name, config) to add one.")
    model.__dict__["_leantune"] = AdapterState(method=method_for_config(config))
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        _add(model, adapter_name, config)
    except Exception:
        del model.__dict__["_leantune"]
        raise
    set_adapter(model, adapter_name)
    return model


def add_adapter(model: nn.Module, adapter_name: str, config: MethodConfig) -> nn.Module:
    """Add another adapter beside the existing ones (inactive until :func:`set_adapter`)."""
    state = require_state(model)
    if adapter_name in state.configs:
        raise LeantuneError(f"An adapter named '{adapter_name}' already exists; pick another name or delete it.")
    if type(config) is not state.method.config_cls:
        raise LeantuneError(
            f"This model carries {state.method.name} adapters; a {type(config).__name__} cannot be added beside them."
        )
    if not state.method.multi_adapter:
        raise LeantuneError(f"{state.method.name} trains base parameters in place: one adapter per model.")
    _add(model, adapter_name, config)
    for p in state.method.adapter_tensors(model, adapter_name).values():
        p.requires_grad_(False)
    state.method.activate(model, state.active, state.disabled)
    return model


def _add(model: nn.Module, name: str, config: MethodConfig) -> None:
    state = require_state(model)
    heads = config.modules_to_save if config.modules_to_save is not None else default_head_modules(model)
    resolved: dict[str, Any] = {}
    state.configs[name] = config
    try:
        if heads:
            resolved["modules_to_save"] = wrap_modules_to_save(model, heads, name)
        resolved.update(state.method.inject(model, name, config))
    except Exception:
        state.method.remove(model, name)
        del state.configs[name]
        raise
    state.resolved[name] = resolved
    model.train(model.training)  # new modules (dropout ...) follow the model's train/eval mode


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the active (and trainable) adapter."""
    state = require_state(model)
    if adapter_name not in state.configs:
        raise LeantuneError(f"No adapter named '{adapter_name}'. Adapters: {list(state.configs)}")
    for name in state.configs:
        for p in state.method.adapter_tensors(model, name).values():
            p.requires_grad_(name == adapter_name)
    state.active = adapter_name
    state.method.activate(model, adapter_name, state.disabled)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base (adapters and head copies bypassed)."""
    state = require_state(model)
    if not state.method.multi_adapter:
        raise LeantuneError(f"{state.method.name} changes base parameters in place; it cannot be disabled.")
    previous = state.disabled
    state.disabled = True
    state.method.activate(model, state.active, True)
    try:
        yield model
    finally:
        state.disabled = previous
        state.method.activate(model, state.active, previous)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter and its parameters; layers left without adapters are unwrapped."""
    state = require_state(model)
    if adapter_name not in state.configs:
        raise LeantuneError(f"No adapter named '{adapter_name}'. Adapters: {list(state.configs)}")
    state.method.remove(model, adapter_name)
    del state.configs[adapter_name]
    state.resolved.pop(adapter_name, None)
    if state.active == adapter_name:
        state.active = next(iter(state.configs), None)
        if state.active is not None:
            set_adapter(model, state.active)
    if not state.configs:
        del model.__dict__["_leantune"]


def adapter_names(model: nn.Module) -> list[str]:
    state = get_state(model)
    return list(state.configs) if state else []


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) parameters are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    total += quantized_weight_count(model)
    return trainable, total


# --------------------------------------------------------------------------------------------- save / load


def task_type(model: nn.Module) -> str | None:
    """peft's task_type for a transformers model class (decides which PeftModel class loads the adapter)."""
    name = type(model).__name__
    for suffix, task in (
        ("ForCausalLM", "CAUSAL_LM"),
        ("LMHeadModel", "CAUSAL_LM"),
        ("ForSequenceClassification", "SEQ_CLS"),
        ("ForTokenClassification", "TOKEN_CLS"),
        ("ForQuestionAnswering", "QUESTION_ANS"),
        ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
        ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
    ):
        if name.endswith(suffix):
            return task
    return None


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None,
                 write: bool = True) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (peft's format) atomically to ``path``.

    Sharded (FSDP) parameters are gathered whole first, which every rank must take part in: call it on every
    rank with ``write`` true on one of them only."""
    state = require_state(model)
    name = adapter_name or state.active
    if name not in state.configs:
        raise LeantuneError(f"No adapter named '{name}'. Adapters: {list(state.configs)}")
    method = state.method
    resolved = method.saved_resolved(model, name)
    config = state.configs[name].peft_dict(resolved)
    base_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    config.update(base_model_name_or_path=base_name, task_type=task_type(model), inference_mode=True)
    tensors = {k: full_tensor(v.detach()).to("cpu").contiguous().clone()
               for k, v in method.save_tensors(model, name).items()}
    out = Path(path)
    if not write:
        return out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, lambda f: save_file(tensors, f, metadata={"format": "pt"}))
    atomic_write(out / CONFIG_NAME, lambda f: Path(f).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    return out


def read_adapter_config(path: str | os.PathLike) -> tuple[MethodConfig, dict[str, Any]]:
    """Parse ``adapter_config.json`` (leantune's or peft's) into a leantune config."""
    folder = Path(path)
    cfg_file = folder / CONFIG_NAME
    if not folder.is_dir():
        raise LeantuneError(f"Adapter folder not found: {folder}")
    if not cfg_file.is_file():
        raise LeantuneError(f"{folder} is not an adapter folder: it has no {CONFIG_NAME}.")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise LeantuneError(f"{cfg_file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    peft_type = raw.get("peft_type")
    method = method_for_peft_type(peft_type, cfg_file)
    try:
        return method.config_cls.from_peft_dict(raw), raw
    except KeyError as e:
        raise LeantuneError(f"{cfg_file}: missing field {e.args[0]!r} for peft_type {peft_type}.") from None


def load_adapter(
    model: nn.Module, path: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False
) -> nn.Module:
    """Load an adapter saved by leantune or by HF peft into ``model`` and make it active.

    With ``is_trainable=False`` (the default, as in peft) its parameters are frozen for inference.
    """
    config, _ = read_adapter_config(path)
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        hint = " (a pickle adapter_model.bin is not loaded: convert it to safetensors)" if (
            Path(path) / "adapter_model.bin").exists() else ""
        raise LeantuneError(f"{path}: no {WEIGHTS_NAME}{hint}.")
    with contextlib.ExitStack() as stack:
        try:  # read one tensor at a time: the file's tensors and the adapter are never both in memory whole
            file = stack.enter_context(safe_open(str(weights), framework="pt"))
            shapes = {k: tuple(file.get_slice(k).get_shape()) for k in file.keys()}
        except (SafetensorError, OSError) as e:
            raise LeantuneError(f"{weights}: not a readable safetensors file ({e}).") from None
        state = get_state(model)
        if state is None:
            attach(model, config, adapter_name)
        else:
            add_adapter(model, adapter_name, config)
        try:
            _copy_into(model, adapter_name, shapes, file.get_tensor, weights)
        except Exception:
            delete_adapter(model, adapter_name)
            raise
    set_adapter(model, adapter_name)
    if not is_trainable:
        for p in require_state(model).method.adapter_tensors(model, adapter_name).values():
            p.requires_grad_(False)
    return model


def _copy_into(model: nn.Module, name: str, shapes: dict[str, tuple[int, ...]],
               read: Callable[[str], torch.Tensor], source: Path) -> None:
    """Copy the file's tensors (``shapes`` by key; ``read`` gives one) into adapter ``name``, once every key and
    shape is checked."""
    expected = require_state(model).method.load_keys(model, name)
    unknown, mismatched = [], []
    extra_base: list[str] = []
    for key, shape in shapes.items():
        target = expected.get(key)
        if target is None:
            # peft also saves the base weight of a targeted embedding: accept it if it fits.
            if key.endswith(".base_layer.weight"):
                extra_base.append(key)
                continue
            unknown.append(key)
        elif tuple(target.shape) != shape:
            mismatched.append(f"{key} has shape {shape}; the model needs {tuple(target.shape)}")
    missing = sorted(set(expected) - set(shapes))
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:3]}")
    if unknown:
        problems.append(f"{len(unknown)} key(s) match nothing in the model, e.g. {unknown[:3]}")
    if missing:
        problems.append(f"{len(missing)} adapter parameter(s) missing from the file, e.g. {missing[:3]}")
    if problems:
        raise AdapterMismatchError(
            f"{source} does not fit this {type(model).__name__}: " + "; ".join(problems)
            + ". Was it trained for another base model?"
        )
    with torch.no_grad():
        for key in shapes:
            if key in expected:
                expected[key].copy_(read(key).to(expected[key].dtype))
        for key in extra_base:
            value = read(key)
            module_name = key.removeprefix("base_model.model.").removesuffix(".base_layer.weight")
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                raise AdapterMismatchError(f"{source}: '{key}' matches no module of the model.") from None
            if not isinstance(module, AdapterLayer) or module.weight.shape != value.shape:
                raise AdapterMismatchError(f"{source}: '{key}' does not fit the model's '{module_name}'.")
            module.weight.copy_(value.to(module.weight.dtype))


# --------------------------------------------------------------------------------------------- merge


def merge(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights and remove every leantune module and hook.

    Returns the plain transformers model (same object), which saves with ``save_pretrained`` and reloads with
    transformers alone.
    """
    state = require_state(model)
    method = state.method
    if not method.mergeable:
        raise LeantuneError(
            f"{method.name} adds computation that cannot be folded into the base weights; "
            "save the adapter with lt.save_adapter and load it with lt.load_adapter instead."
        )
    name = None if state.disabled else state.active
    if is_quantized(model):
        n = dequantize_model(model)
        print(f"leantune: merging into a quantized base: dequantised its {n} quantized layers to "
              f"{next(model.parameters()).dtype} first (the quantisation error stays in the merged weights).",
              file=sys.stderr, flush=True)
    for mname, module in list(model.named_modules()):
        if isinstance(module, AdapterLayer):
            if name is not None and name in module.adapter_names:
                module.merge(name)
            model.set_submodule(mname, module.base_layer)
        elif isinstance(module, ModulesToSave):
            model.set_submodule(mname, module.current())
    method.detach(model)
    del model.__dict__["_leantune"]
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merge_adapter(model: nn.Module) -> None:
    """Fold the active adapter into the base weights in place, keeping it so :func:`unmerge_adapter` can undo it."""
    state = require_state(model)
    if not state.method.mergeable:
        raise LeantuneError(f"{state.method.name} adapters cannot be merged into the base weights.")
    if is_quantized(model):
        raise LeantuneError("the base is quantized: an adapter cannot be folded into it in place and back; use "
                            "lt.merge(model), which dequantises the base first, or keep the adapter unmerged.")
    # BitFit and full fine-tuning already train the base weights in place: nothing to fold.
    for module in model.modules():
        if isinstance(module, AdapterLayer) and state.active in module.adapter_names:
            module.merge(state.active)


def unmerge_adapter(model: nn.Module) -> None:
    """Undo :func:`merge_adapter`."""
    require_state(model)
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            for name in list(module.merged_adapters):
                module.unmerge(name)
