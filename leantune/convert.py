"""Any adapter whose update is a change of weights — LoRA/DoRA, IA3, LoKr, OFT, VeRA, full fine-tuning — as a
plain LoRA of a chosen rank, for engines that serve LoRA only (vLLM, batched LoRA serving).

Each adapted layer's update ``ΔW = W_merged - W_base`` is factored by a truncated SVD, ``ΔW ≈ B A`` with
``rank`` columns (balanced: ``B = U √S``, ``A = √S Vᵀ``); the report gives per layer and overall the relative
Frobenius error ``‖ΔW - BA‖ / ‖ΔW‖``, which is 0 up to rounding when ``rank`` is at least the delta's rank. Task
heads trained in full (``modules_to_save``) are kept as they are, biases the method changed are saved with
peft's ``bias`` option, and the result is a peft-format LoRA adapter that loads in leantune and in HF peft.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from leantune.adapters import CONFIG_NAME, WEIGHTS_NAME, task_type
from leantune.errors import LeantuneError
from leantune.files import atomic_write
from leantune.methods.base import (
    LINEAR_TYPES,
    AdapterLayer,
    ModulesToSave,
    base_biases,
    get_state,
    is_conv1d,
    weight_as_out_in,
)
from leantune.methods.lora import LoraConfig
from leantune.methods.targeting import portable_target_names
from leantune.models.quantize import is_quantized
from leantune.models.targets import default_head_modules

CONVERTIBLE = ("lora", "dora", "ia3", "lokr", "oft", "vera", "full")


@dataclass
class LayerConversion:
    """How well one layer's update is kept."""

    name: str
    shape: tuple[int, int]
    """(out_features, in_features) of a linear layer; (num_embeddings, dim) of an embedding."""
    delta_rank: int
    """Numerical rank of ΔW: a LoRA of at least this rank reproduces it."""
    relative_error: float
    """‖ΔW - BA‖_F / ‖ΔW‖_F (0 for a layer whose update is zero)."""
    delta_norm: float


@dataclass
class ConversionReport:
    """The converted LoRA (``config`` and ``tensors`` in peft's format) and how faithful it is."""

    method: str
    rank: int
    layers: list[LayerConversion]
    relative_error: float
    """Over all layers: sqrt(Σ ‖ΔW - BA‖²) / sqrt(Σ ‖ΔW‖²)."""
    modules_to_save: list[str]
    bias: str
    """peft's bias option of the converted LoRA: none, lora_only (the adapted layers' biases) or all."""
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    out_dir: Path | None = None

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` atomically to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.tensors.items()}
        atomic_write(out / WEIGHTS_NAME, lambda f: save_file(tensors, f, metadata={"format": "pt"}))
        text = json.dumps(self.config, indent=2, sort_keys=True) + "\n"
        atomic_write(out / CONFIG_NAME, lambda f: Path(f).write_text(text))
        self.out_dir = out
        return out

    def summary(self) -> str:
        """A few lines for a terminal: the overall error, the worst layers, what was kept."""
        worst = sorted(self.layers, key=lambda c: -c.relative_error)[:5]
        lines = [f"{self.method} -> LoRA rank {self.rank}: {len(self.layers)} layers, relative error of the update "
                 f"{self.relative_error:.3g} (largest delta rank {max((c.delta_rank for c in self.layers), default=0)})"]
        lines += [f"  {c.name} {c.shape}: rank {c.delta_rank}, error {c.relative_error:.3g}" for c in worst]
        if self.modules_to_save:
            lines.append(f"  kept in full: {', '.join(self.modules_to_save)}")
        if self.bias != "none":
            lines.append(f"  biases saved: {self.bias}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class _Update:
    """One layer's change: ``delta`` as (out, in) for a linear layer, as the weight (num, dim) for an embedding."""

    name: str
    delta: torch.Tensor
    embedding: bool
    conv1d: bool
    dtype: torch.dtype
    bias: torch.Tensor | None
    bias_changed: bool


def to_lora(source: nn.Module | str | os.PathLike, rank: int, out_dir: str | os.PathLike | None = None, *,
            base: nn.Module | None = None, alpha: float | None = None) -> ConversionReport:
    """Convert the active adapter of ``source`` (a model with a leantune adapter, or a run folder) to a LoRA of
    ``rank``; saved to ``out_dir`` when given.

    Full fine-tuning has no base weights left to compare with: give the original model as ``base`` (a run folder
    reloads it itself; a plain fine-tuned model without a leantune adapter is compared with ``base`` too). The
    LoRA's scale is ``alpha / rank`` (default alpha = rank: scale 1).
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LeantuneError(f"to_lora: rank must be a positive integer, got {rank!r}.")
    if isinstance(source, (str, os.PathLike)):
        model, base = _load_run(Path(source), base)
    else:
        model = source
    if is_quantized(model):
        raise LeantuneError("to_lora needs the base in full precision: this model's base is quantized, so its "
                            "merged weights carry the quantisation error. Load the adapter on an unquantized base.")
    state = get_state(model)
    if state is None or state.method.name == "full":
        if base is None:
            raise LeantuneError("to_lora of a fully fine-tuned model needs the original model: pass base=<model>.")
        label, bias_all = "full", False
        updates, heads, notes = _full_updates(model, base)
    else:
        name = state.active
        settings = state.configs[name].model_dump()
        label = "dora" if settings.get("use_dora") else state.method.name
        if label not in CONVERTIBLE:
            raise LeantuneError(f"to_lora converts adapters whose update is a change of weights "
                                f"({', '.join(CONVERTIBLE)}); {label} is not one.")
        if settings.get("init") not in (None, "standard", "gaussian", "random"):
            raise LeantuneError(f"this LoRA was initialised with init={settings['init']}, which changed the base "
                                "weights: save it (lt.save_adapter writes it relative to the original weights), "
                                "load it on a fresh base, then convert.")
        if state.resolved[name].get("target_parameters"):
            raise LeantuneError("to_lora: this LoRA adapts expert parameters (target_parameters "
                                f"{state.resolved[name]['target_parameters']}), which a LoRA of linear layers cannot "
                                "hold; export it merged (--to merged) or as it is (--to peft).")
        updates, notes = _adapter_updates(model, name), []
        heads = list(state.resolved[name].get("modules_to_save") or [])
        bias_all = settings.get("bias") == "all"
        if settings.get("bias", "none") not in ("none", "all"):  # <method>_only: trained in place
            for u in updates:
                u.bias_changed = u.bias is not None
    if not updates:
        raise LeantuneError(f"to_lora: {label} changed no linear or embedding weight; there is nothing to convert.")
    return _assemble(model, label, updates, heads, rank, float(alpha or rank), bias_all, notes, out_dir)


def _load_run(run: Path, base: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    from leantune.models.registry import resolve_model
    from leantune.run.loader import load_run

    cfg, task, model = load_run(run)
    if cfg.method == "full" and base is None:
        base = task.build_model(resolve_model(cfg.model)).eval()
    return model, base


# ------------------------------------------------------------------------------------------- the updates


def _weight(layer: nn.Module) -> torch.Tensor:
    return layer.weight if isinstance(layer, nn.Embedding) else weight_as_out_in(layer)


def _adapter_updates(model: nn.Module, name: str) -> list[_Update]:
    """Each adapter layer's ΔW, read by merging a float32 (or wider) copy of the layer: the model is not touched,
    and a half-precision base's rounding does not blur the update."""
    updates = []
    for mname, layer in model.named_modules():
        if not isinstance(layer, AdapterLayer) or name not in layer.adapter_names:
            continue
        if layer.merged_adapters:
            raise LeantuneError(f"'{mname}' has a merged adapter: call lt.unmerge_adapter(model) first.")
        dtype = layer.base_layer.weight.dtype
        probe = copy.deepcopy(layer).to(dtype=torch.promote_types(dtype, torch.float32))
        base = probe.base_layer
        before = _weight(base).detach().double()
        bias_before = base.bias.detach().clone() if getattr(base, "bias", None) is not None else None
        probe.merge(name)
        bias = base.bias.detach() if bias_before is not None else None
        changed = bias is not None and not torch.equal(bias, bias_before)
        updates.append(_Update(mname, _weight(base).detach().double() - before, isinstance(base, nn.Embedding),
                               is_conv1d(base), dtype, bias, changed))
    return updates


def _full_updates(model: nn.Module, base: nn.Module) -> tuple[list[_Update], list[str], list[str]]:
    """The changes of a fully fine-tuned ``model`` against ``base``: linear and embedding weights become LoRA
    updates; heads, other changed modules (norms) and weights tied between modules are kept in full."""
    base_modules = dict(base.named_modules())
    heads = default_head_modules(model)
    owners: dict[int, list[str]] = {}
    for mname, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(mname)
    updates, kept, notes = [], [], []
    for mname, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not mname or not own or any(mname == h or mname.startswith(h + ".") for h in heads):
            continue
        ref = base_modules.get(mname)
        ref_own = dict(ref.named_parameters(recurse=False)) if ref is not None else {}
        if {k: tuple(p.shape) for k, p in own.items()} != {k: tuple(p.shape) for k, p in ref_own.items()}:
            raise LeantuneError(f"to_lora: base does not match the fine-tuned model at '{mname}'.")
        changed = [k for k in own if not torch.equal(own[k].detach(), ref_own[k].detach())]
        if not changed:
            continue
        tied = sorted({n for p in own.values() for n in owners[id(p)] if n != mname})
        if isinstance(module, (*LINEAR_TYPES, nn.Embedding)) and not tied:
            delta = _weight(module).detach().double() - _weight(ref).detach().double()
            bias = module.bias.detach().clone() if getattr(module, "bias", None) is not None else None
            updates.append(_Update(mname, delta, isinstance(module, nn.Embedding), is_conv1d(module),
                                   module.weight.dtype, bias, "bias" in changed))
        else:
            kept.append(mname)
            if tied:
                notes.append(f"'{mname}' shares its changed weight with {tied}: kept in full (modules_to_save)")
    kept += [h for h in heads if h in base_modules]
    return updates, kept, notes


# ------------------------------------------------------------------------------------------- the LoRA


def _factor(u: _Update, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, LayerConversion]:
    """(A, B) with ``scale · B A ≈ ΔW`` (ΔWᵀ for an embedding, peft's layout), and the layer's error."""
    target = u.delta.T if u.embedding else u.delta
    U, S, Vh = torch.linalg.svd(target, full_matrices=False)
    k = min(rank, S.numel())
    root = S[:k].sqrt()
    B = torch.zeros(target.shape[0], rank, dtype=target.dtype, device=target.device)
    A = torch.zeros(rank, target.shape[1], dtype=target.dtype, device=target.device)
    B[:, :k] = U[:, :k] * root / scale
    A[:k] = root[:, None] * Vh[:k]
    saved = torch.promote_types(u.dtype, torch.float32)  # half-precision bases get float32 factors (as peft keeps)
    A, B = A.to(saved), B.to(saved)
    norm = target.norm().item()
    err = (target - scale * (B.double() @ A.double())).norm().item()
    tol = S[0].item() * max(target.shape) * torch.finfo(saved).eps if S.numel() else 0.0
    conv = LayerConversion(u.name, tuple(u.delta.shape), int((S > tol).sum()), err / norm if norm else 0.0, norm)
    return A, B, conv


def _assemble(model: nn.Module, label: str, updates: list[_Update], heads: list[str], rank: int, alpha: float,
              bias_all: bool, notes: list[str], out_dir: str | os.PathLike | None) -> ConversionReport:
    scale = alpha / rank
    tensors: dict[str, torch.Tensor] = {}
    layers, err2, norm2 = [], 0.0, 0.0
    for u in updates:
        A, B, conv = _factor(u, rank, scale)
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if u.embedding else ("lora_A.weight", "lora_B.weight")
        tensors[f"base_model.model.{u.name}.{a_key}"] = A.cpu()
        tensors[f"base_model.model.{u.name}.{b_key}"] = B.cpu()
        layers.append(conv)
        err2 += (conv.relative_error * conv.delta_norm) ** 2
        norm2 += conv.delta_norm**2
    targets = [u.name for u in updates]
    if bias_all:
        bias = "all"
        tensors.update(_all_biases(model, updates))
    elif any(u.bias_changed for u in updates):
        bias = "lora_only"
        tensors.update({f"base_model.model.{u.name}.base_layer.bias": u.bias.cpu() for u in updates
                        if u.bias is not None})
    else:
        bias = "none"
    tensors.update(_head_tensors(model, heads))
    lora = LoraConfig(r=rank, alpha=alpha, bias=bias, target_modules=targets, modules_to_save=heads)
    config = lora.peft_dict({
        "target_modules": portable_target_names(model, targets, (*LINEAR_TYPES, nn.Embedding)),
        "fan_in_fan_out": any(u.conv1d for u in updates),
        "modules_to_save": heads,
    })
    base_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    config.update(base_model_name_or_path=base_name, task_type=task_type(model), inference_mode=True)
    report = ConversionReport(label, rank, layers, math.sqrt(err2 / norm2) if norm2 else 0.0, heads, bias, notes,
                              config, tensors)
    if out_dir is not None:
        report.save(out_dir)
    return report


def _all_biases(model: nn.Module, updates: list[_Update]) -> dict[str, torch.Tensor]:
    """Every bias of the model (the adapted layers' as merged), keyed as a LoRA with ``bias="all"`` saves them."""
    merged = {f"{u.name}.base_layer.bias": u.bias for u in updates if u.bias is not None}
    out = {}
    for key, p in base_biases(model).items():
        value = merged.get(key)
        if value is None:
            value = p.detach()
            key = key.replace(".base_layer.bias", ".bias")  # a layer of another adapter: plain in the LoRA
        out[f"base_model.model.{key}"] = value.cpu().clone()
    return out


def _head_tensors(model: nn.Module, heads: list[str]) -> dict[str, torch.Tensor]:
    """The kept modules' parameters: the active adapter's copy of a wrapped head, else the module itself."""
    state = get_state(model)
    out = {}
    for mname, module in model.named_modules():
        if isinstance(module, ModulesToSave):
            params = module.adapter_parameters(state.active) if state is not None and state.active else {}
        elif mname in heads:
            params = dict(module.named_parameters())
        else:
            continue
        out.update({f"base_model.model.{mname}.{k}": p.detach().cpu().clone() for k, p in params.items()})
    return out
