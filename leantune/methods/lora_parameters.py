"""LoRA on parameters (peft's ``target_parameters``): the stacked 3-D expert weights of mixture-of-experts blocks,
which are ``nn.Parameter``\\ s of an experts module rather than linear layers.

peft's math (its ``lora.ParamWrapper``), so an adapter loads in either: a parameter ``W`` of shape
``(experts, out, in)`` (``(experts, in, out)`` where the module says ``is_transposed``) gets ``A: (r·E) × in`` and
``B: out × (r·E)``; expert ``e``'s factors are rows ``e·r … e·r+r-1`` of A and the columns ``j·E + e`` of B, and
the module computes with ``W + s · B_e A_e`` in place of each expert's weight (a 2-D parameter: ``W + s · B A``).
The delta is put in for the base module's forward pass only (the module's own attribute is swapped for that call).
peft nests one wrapper per parameter of a module, the first-registered innermost, so the keys of all but the
outermost carry ``base_layer.`` prefixes; one :class:`ParamLoraLayer` here holds them all and saves under those
keys. Dropout, DoRA and residual inits do not apply (as in peft).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call

from leantune.errors import LeantuneError
from leantune.methods.base import AdapterLayer
from leantune.methods.rows import RowOp
from leantune.methods.targeting import protected_prefixes, target_matches
from leantune.models.targets import arch_targets, block_expert_parameters

if TYPE_CHECKING:
    from leantune.methods.lora import LoraConfig

NOT_SERVED = ("LoRA on expert parameters (target_parameters) is not served yet; export the run merged "
              "(leantune export RUN --to merged) and serve that as its own model.")


class ParamLoraLayer(AdapterLayer):
    """LoRA on some parameters of ``base_layer`` (``parameter_names``, in the module's registration order)."""

    adapter_containers = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module, parameter_names: list[str]) -> None:
        super().__init__(base_layer)
        self.parameter_names = list(parameter_names)
        self.lora_A = nn.ModuleDict()  # adapter -> parameter name -> nn.Linear (peft's layout)
        self.lora_B = nn.ModuleDict()
        self.scaling: dict[str, float] = {}

    def add(self, name: str, cfg: LoraConfig) -> None:
        r = cfg.r
        self.lora_A[name], self.lora_B[name] = nn.ModuleDict(), nn.ModuleDict()
        for pname in self.parameter_names:
            experts, fan_in, fan_out = self.geometry(pname)
            weight = getattr(self.base_layer, pname)
            kw = {"bias": False, "device": weight.device, "dtype": weight.dtype}
            A, B = nn.Linear(fan_in, r * experts, **kw), nn.Linear(r * experts, fan_out, **kw)
            with torch.no_grad():
                if cfg.init == "gaussian":
                    nn.init.normal_(A.weight, std=1 / r)
                else:
                    nn.init.kaiming_uniform_(A.weight, a=math.sqrt(5))
                if cfg.init == "random":
                    nn.init.kaiming_uniform_(B.weight, a=math.sqrt(5))
                else:
                    nn.init.zeros_(B.weight)
            self.lora_A[name][pname], self.lora_B[name][pname] = A, B
        self.scaling[name] = cfg.scaling

    def geometry(self, pname: str) -> tuple[int, int, int]:
        """(experts, in_features, out_features) of parameter ``pname`` (a 2-D one is one expert, (out, in))."""
        shape = getattr(self.base_layer, pname).shape
        if len(shape) == 2:
            return 1, shape[1], shape[0]
        if getattr(self.base_layer, "is_transposed", False):
            return shape[0], shape[1], shape[2]
        return shape[0], shape[2], shape[1]

    def factors(self, name: str, pname: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(lhs, rhs) with ``W + s · lhs @ rhs`` the adapted 3-D weight, per expert, in the weight's dtype."""
        weight = getattr(self.base_layer, pname)
        experts = weight.shape[0]
        A, B = self.lora_A[name][pname].weight, self.lora_B[name][pname].weight
        a = A.reshape(experts, -1, A.shape[-1])  # (E, r, in)
        b = B.reshape(B.shape[0], -1, experts).permute(2, 0, 1)  # (E, out, r)
        if getattr(self.base_layer, "is_transposed", False):  # weight is (E, in, out)
            return a.transpose(-2, -1).to(weight.dtype), b.transpose(-2, -1).to(weight.dtype)
        return b.to(weight.dtype), a.to(weight.dtype)

    def adapted_weight(self, name: str, pname: str) -> torch.Tensor:
        """``W + s · ΔW`` of parameter ``pname`` under adapter ``name``."""
        weight, s = getattr(self.base_layer, pname), self.scaling[name]
        if weight.dim() == 2:
            A, B = self.lora_A[name][pname].weight, self.lora_B[name][pname].weight
            return weight + ((B @ A) * s).to(weight.dtype)
        lhs, rhs = self.factors(name, pname)
        return torch.baddbmm(weight, lhs, rhs, alpha=s)

    def delta_weight(self, name: str, pname: str) -> torch.Tensor:
        weight, s = getattr(self.base_layer, pname), self.scaling[name]
        if weight.dim() == 2:
            return (self.lora_B[name][pname].weight @ self.lora_A[name][pname].weight).mul_(s).to(weight.dtype)
        lhs, rhs = self.factors(name, pname)
        return torch.bmm(lhs, rhs).mul_(s)

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """Keyed as peft saves its nested wrappers: the last parameter outermost, each one further in under one
        more ``base_layer.``."""
        if name not in self.lora_A:
            return {}
        out = {}
        for i, pname in enumerate(self.parameter_names):
            prefix = "base_layer." * (len(self.parameter_names) - 1 - i)
            out[f"{prefix}lora_A.weight"] = self.lora_A[name][pname].weight
            out[f"{prefix}lora_B.weight"] = self.lora_B[name][pname].weight
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        name = self.live_adapter()
        if name is None:
            return self.base_layer(*args, **kwargs)
        weights = {pname: self.adapted_weight(name, pname) for pname in self.parameter_names}
        return functional_call(self.base_layer, weights, args, kwargs, tie_weights=False, strict=False)

    def row_op(self, name: str) -> RowOp:
        raise LeantuneError(NOT_SERVED)

    def _merge(self, name: str) -> None:
        for pname in self.parameter_names:
            getattr(self.base_layer, pname).add_(self.delta_weight(name, pname))

    def _unmerge(self, name: str) -> None:
        for pname in self.parameter_names:
            getattr(self.base_layer, pname).sub_(self.delta_weight(name, pname))

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.scaling.pop(name, None)


def resolve_parameter_targets(model: nn.Module, target: list[str] | None) -> dict[str, list[str]]:
    """Module name -> its parameters to adapt (registration order), by peft's rule: an entry matches the
    parameter's full name or a ``.``-suffix of it. None: the architecture's default (the experts' weights), or
    for a family leantune has no entry for, the experts' 3-D weights found inside its transformer blocks."""
    if target is None:
        arch = arch_targets(model)
        target = list(arch.lora_parameters) if arch is not None else block_expert_parameters(model)
    if not target:
        return {}
    skip = protected_prefixes(model)
    adapted = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    found: dict[str, list[str]] = {}
    for mname, module in model.named_modules():
        if any(mname.startswith(p + ".") for p in adapted) or any(mname == s or mname.startswith(s + ".")
                                                                   for s in skip):
            continue
        owner = module.base_layer if isinstance(module, AdapterLayer) else module
        for pname, param in owner.named_parameters(recurse=False):
            key = f"{mname}.{pname}" if mname else pname
            if not target_matches(list(target), key):
                continue
            if isinstance(module, AdapterLayer) and not isinstance(module, ParamLoraLayer):
                raise LeantuneError(f"target_parameters: '{key}' belongs to a layer that target_modules already "
                                    "adapts; take it out of one of them.")
            if not mname:
                raise LeantuneError(f"target_parameters: '{key}' sits on the model itself; name a parameter of a "
                                    "submodule.")
            if param.dim() not in (2, 3) or not param.is_floating_point():
                raise LeantuneError(f"target_parameters: '{key}' is a {param.dim()}-D {param.dtype} tensor; LoRA "
                                    "adapts 2-D and 3-D floating-point weights.")
            found.setdefault(mname, []).append(pname)
    if not found:
        examples = sorted({".".join(n.split(".")[-2:]) for n, p in model.named_parameters() if p.dim() == 3})
        raise LeantuneError(f"LoRA: target_parameters={target!r} matched no parameter of {type(model).__name__}. "
                            f"3-D parameters it has: {examples[:20] or 'none'}")
    return found


def check_parameter_config(cfg: LoraConfig) -> None:
    """The LoRA settings that LoRA on parameters cannot honour (nor can peft): a LeantuneError naming the field."""
    problems = []
    if cfg.dropout:
        problems.append("dropout must be 0 (the input of the experts' matmuls is not seen)")
    if cfg.use_dora:
        problems.append("use_dora must be false")
    if cfg.init not in ("standard", "gaussian", "random"):
        problems.append(f"init {cfg.init!r} is not available (standard, gaussian or random)")
    if cfg.fan_in_fan_out:
        problems.append("fan_in_fan_out must not be set")
    if problems:
        raise LeantuneError("LoRA on parameters (target_parameters): " + "; ".join(problems)
                            + ". Or set target_parameters: [] to adapt linear layers only.")


def inject_parameter_lora(model: nn.Module, name: str, cfg: LoraConfig) -> list[str] | None:
    """Add adapter ``name`` to the parameters ``cfg.target_parameters`` names; returns the names to save as
    peft's ``target_parameters`` (None when it adapts none)."""
    found = resolve_parameter_targets(model, cfg.target_parameters)
    if not found:
        return None
    check_parameter_config(cfg)
    for mname, pnames in found.items():
        module = model.get_submodule(mname)
        if not isinstance(module, ParamLoraLayer):
            module = ParamLoraLayer(module, pnames)
            model.set_submodule(mname, module)
        elif module.parameter_names != pnames:
            raise LeantuneError(f"'{mname}': every adapter must target the same parameters (peft's rule); the "
                                f"first targets {module.parameter_names}, this one {pnames}.")
        module.add(name, cfg)
    return portable_parameter_names(model, [f"{m}.{p}" for m, ps in found.items() for p in ps])


def portable_parameter_names(model: nn.Module, chosen: list[str]) -> list[str]:
    """The shortest list peft resolves to exactly ``chosen``: module and parameter name (``experts.down_proj``)
    where that picks the same parameters, else the full names."""
    short = sorted({".".join(n.split(".")[-2:]) for n in chosen})
    every = []
    for mname, module in model.named_modules():
        owner = module.base_layer if isinstance(module, ParamLoraLayer) else module
        if mname and ".base_layer" not in mname:
            every += [f"{mname}.{p}" for p, _ in owner.named_parameters(recurse=False)
                      if target_matches(short, f"{mname}.{p}")]
    return short if sorted(every) == sorted(chosen) else sorted(chosen)


def parameter_lora_b(model: nn.Module) -> list[nn.Parameter]:
    """Every B matrix of LoRA on parameters (LoRA+ trains them at a higher rate)."""
    return [p for m in model.modules() if isinstance(m, ParamLoraLayer) for p in m.lora_B.parameters()]
