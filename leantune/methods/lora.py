"""LoRA (Hu et al. 2021) and its family: rsLoRA scaling, DoRA (weight-decomposed), PiSSA initialisation.

``y = W x + s · B A dropout(x)`` with ``A: r × in`` and ``B: out × r``; ``s = alpha / r`` (``alpha / sqrt(r)`` with
rsLoRA). DoRA rescales each output row of ``W + s·BA`` to a learned magnitude ``m``. Works on ``nn.Linear``,
GPT-2's ``Conv1D`` (weight stored transposed) and ``nn.Embedding``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import (
    LINEAR_TYPES,
    AdapterLayer,
    Method,
    MethodConfig,
    find_targets,
    in_out_features,
    inject_layers,
    is_conv1d,
    portable_target_names,
    protected_prefixes,
    require_state,
    target_matches,
    weight_as_out_in,
)
from leantune.models.quantize import is_quantized_layer
from leantune.models.targets import arch_targets

LoraInit = Literal["standard", "gaussian", "pissa", "random"]

# peft keys that change what an adapter computes and that leantune does not implement: refuse rather than guess.
_UNSUPPORTED_PEFT_KEYS = (
    "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "layer_replication", "use_qalora",
    "lora_bias", "target_parameters", "trainable_token_indices", "alora_invocation_tokens", "use_bdlora",
    "megatron_config", "arrow_config", "velora_config", "kasa_config", "monteclora_config",
)


class LoraConfig(MethodConfig):
    """LoRA settings. ``use_dora`` turns it into DoRA, ``use_rslora`` scales by ``alpha / sqrt(r)``."""

    peft_type: ClassVar[str] = "LORA"

    r: int = Field(8, gt=0, description="rank of the update")
    alpha: float = Field(16.0, gt=0, description="scale numerator: s = alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str | None = None
    """Module names (suffix match), a regex, ``"all-linear"``, or None for the architecture's default."""
    exclude_modules: list[str] | str | None = None
    use_rslora: bool = False
    use_dora: bool = False
    init: LoraInit = "standard"
    """standard: A Kaiming-uniform, B zero; gaussian: A ~ N(0, 1/r); pissa: from the weight's top singular vectors;
    random: A and B both random (the adapter is not a no-op at start; for tests)."""
    bias: Literal["none", "all", "lora_only"] = "none"
    fan_in_fan_out: bool | None = None
    """True for layers that store weight as (in, out); None: detected (GPT-2's Conv1D)."""

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        r, alpha = resolved.get("saved_r", self.r), resolved.get("saved_alpha", self.alpha)
        return {
            "peft_type": "LORA",
            "r": r,
            "lora_alpha": alpha,
            "lora_dropout": self.dropout,
            "target_modules": resolved["target_modules"],
            "exclude_modules": None,
            "fan_in_fan_out": bool(resolved.get("fan_in_fan_out", False)),
            "bias": self.bias,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "init_lora_weights": {"gaussian": "gaussian", "random": False}.get(self.init, True),
            "modules_to_save": resolved.get("modules_to_save"),
            "rank_pattern": {},
            "alpha_pattern": {},
            "layers_to_transform": None,
            "layers_pattern": None,
        }

    @classmethod
    def from_peft_dict(cls, d: dict[str, Any]) -> LoraConfig:
        bad = [k for k in _UNSUPPORTED_PEFT_KEYS if d.get(k) not in (None, {}, [], False, "megatron.core")]
        if bad:
            raise LeantuneError(f"This LoRA adapter uses peft options leantune does not support: {bad}.")
        init = d.get("init_lora_weights", True)
        if init not in (True, False, "gaussian"):
            raise LeantuneError(
                f"This adapter was saved with init_lora_weights={init!r}, which changes the base weights; convert it "
                "to a standard LoRA first (peft: save_pretrained(..., path_initial_model_for_weight_conversion=...))."
            )
        return cls(
            r=d["r"],
            alpha=d.get("lora_alpha", 8),
            dropout=d.get("lora_dropout", 0.0),
            target_modules=d.get("target_modules"),
            exclude_modules=d.get("exclude_modules"),
            use_rslora=d.get("use_rslora", False),
            use_dora=d.get("use_dora", False),
            init={True: "standard", False: "random", "gaussian": "gaussian"}[init],
            bias=d.get("bias", "none"),
            fan_in_fan_out=d.get("fan_in_fan_out"),
            modules_to_save=d.get("modules_to_save"),
        )


def lora_update(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``s · B A x``: the scale is applied on the rank-r activations (r columns, not out_features)."""
    return F.linear(F.linear(x, a) * scaling, b)


class LoraLinear(AdapterLayer):
    """LoRA (and DoRA) beside an ``nn.Linear`` or GPT-2 ``Conv1D``.

    The plain LoRA path does no needless work: no input copy when dropout is 0 (Identity), no upcast of the frozen
    weight (the base layer runs as it is), the adapter weights in the base weight's dtype.
    """

    adapter_containers = ("lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector")
    update_fn = staticmethod(lora_update)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.pissa_init: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._dora_norms: dict[str, torch.Tensor] = {}

    def add(self, name: str, cfg: LoraConfig) -> None:
        fan_in, fan_out = in_out_features(self.base_layer)
        w = self.base_layer.weight
        dtype = w.dtype if w.is_floating_point() else torch.float32
        self.lora_A[name] = nn.Linear(fan_in, cfg.r, bias=False, device=w.device, dtype=dtype)
        self.lora_B[name] = nn.Linear(cfg.r, fan_out, bias=False, device=w.device, dtype=dtype)
        self.lora_dropout[name] = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.scaling[name] = cfg.scaling
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        with torch.no_grad():
            if cfg.init == "pissa":
                self._init_pissa(name, cfg.r)
            else:
                if cfg.init == "gaussian":
                    nn.init.normal_(A, std=1 / cfg.r)
                else:
                    nn.init.kaiming_uniform_(A, a=math.sqrt(5))
                if cfg.init == "random":
                    nn.init.kaiming_uniform_(B, a=math.sqrt(5))
                else:
                    nn.init.zeros_(B)
        if cfg.use_dora:
            if cfg.init == "pissa":
                raise LeantuneError("DoRA with PiSSA initialisation is not supported; choose one of them.")
            with torch.no_grad():
                norm = self._row_norm(self._delta(name))
            self.lora_magnitude_vector[name] = nn.Parameter(norm)

    def _init_pissa(self, name: str, r: int) -> None:
        """PiSSA: A, B from the top-r singular triplets of W; the base keeps the residual W - s·BA."""
        W = weight_as_out_in(self.base_layer).float()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        s = self.scaling[name]
        sqrt_s = torch.sqrt(S[:r] / s)
        A = sqrt_s[:, None] * Vh[:r]
        B = U[:, :r] * sqrt_s[None, :]
        dtype = self.lora_A[name].weight.dtype
        self.lora_A[name].weight.copy_(A.to(dtype))
        self.lora_B[name].weight.copy_(B.to(dtype))
        self.pissa_init[name] = (A.to(dtype).clone(), B.to(dtype).clone())
        self._set_weight(weight_as_out_in(self.base_layer) - (s * B @ A).to(W.dtype))

    def _delta(self, name: str) -> torch.Tensor:
        """s · B A as (out_features, in_features)."""
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]

    def _row_norm(self, delta: torch.Tensor) -> torch.Tensor:
        W = weight_as_out_in(self.base_layer)
        return torch.linalg.norm(W.to(delta.dtype) + delta, dim=1)

    def _set_weight(self, w_out_in: torch.Tensor) -> None:
        if is_quantized_layer(self.base_layer):
            raise LeantuneError("this LoRA setting writes to the base weight, which is quantized here; "
                                "use init standard/gaussian with a quantized base, or dequantise it first.")
        target = self.base_layer.weight
        target.data.copy_(w_out_in.T if is_conv1d(self.base_layer) else w_out_in)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        name = self.live_adapter()
        if name is None:
            return result
        A, B = self.lora_A[name], self.lora_B[name]
        dropout = self.lora_dropout[name]
        xa = x if x.dtype == A.weight.dtype else x.to(A.weight.dtype)
        xd = dropout(xa)
        s = self.scaling[name]
        if name not in self.lora_magnitude_vector:
            return result + self.update_fn(xd, A.weight, B.weight, s).to(result.dtype)
        # DoRA: rescale rows of (W + s·BA) to the magnitude m; the norm is a constant for the gradient (paper §4.3).
        W = weight_as_out_in(self.base_layer).to(xd.dtype)
        norm = torch.linalg.norm(W + self._delta(name).detach(), dim=1).detach()
        scale = self.lora_magnitude_vector[name] / norm
        if isinstance(dropout, nn.Identity) or not self.training:
            bias = self.base_layer.bias
            base_out = result - bias if bias is not None else result
        else:
            base_out = F.linear(xd, W)
        lora_out = B(A(xd)) * s
        return result + ((scale - 1) * base_out + scale * lora_out).to(result.dtype)

    def _merge(self, name: str) -> None:
        delta = self._delta(name)
        W = weight_as_out_in(self.base_layer)
        if name in self.lora_magnitude_vector:
            norm = self._row_norm(delta)
            self._dora_norms[name] = norm
            factor = (self.lora_magnitude_vector[name] / norm)[:, None]
            self._set_weight((factor * (W.to(delta.dtype) + delta)).to(W.dtype))
        else:
            self._set_weight(W + delta.to(W.dtype))

    def _unmerge(self, name: str) -> None:
        delta = self._delta(name)
        W = weight_as_out_in(self.base_layer)
        if name in self.lora_magnitude_vector:
            factor = (self.lora_magnitude_vector[name] / self._dora_norms.pop(name))[:, None]
            self._set_weight((W.to(delta.dtype) / factor - delta).to(W.dtype))
        else:
            self._set_weight(W - delta.to(W.dtype))


class LoraEmbedding(AdapterLayer):
    """LoRA (and DoRA) beside an ``nn.Embedding``: ``A: r × num_embeddings``, ``B: dim × r`` (peft's layout)."""

    adapter_containers = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.lora_magnitude_vector = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self._dora_norms: dict[str, torch.Tensor] = {}

    def add(self, name: str, cfg: LoraConfig) -> None:
        if cfg.init == "pissa":
            raise LeantuneError("PiSSA initialisation applies to linear layers, not to embeddings.")
        w = self.base_layer.weight
        num, dim = w.shape
        A = torch.zeros(cfg.r, num, device=w.device, dtype=w.dtype)
        B = torch.empty(dim, cfg.r, device=w.device, dtype=w.dtype)
        nn.init.normal_(B)
        if cfg.init == "random":
            nn.init.normal_(A)
        self.lora_embedding_A[name] = nn.Parameter(A)
        self.lora_embedding_B[name] = nn.Parameter(B)
        self.scaling[name] = cfg.scaling
        if cfg.use_dora:
            with torch.no_grad():
                norm = self._col_norm(self._delta(name))
            self.lora_magnitude_vector[name] = nn.Parameter(norm)

    def _delta(self, name: str) -> torch.Tensor:
        """s · (B A)ᵀ, shaped like the embedding weight (num_embeddings, dim)."""
        return (self.lora_embedding_A[name].T @ self.lora_embedding_B[name].T) * self.scaling[name]

    def _col_norm(self, delta: torch.Tensor) -> torch.Tensor:
        return torch.linalg.norm(self.base_layer.weight + delta, dim=0)

    def _embed(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b = self.base_layer
        return F.embedding(x, weight, b.padding_idx, b.max_norm, b.norm_type, b.scale_grad_by_freq, b.sparse)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        name = self.live_adapter()
        if name is None:
            return result
        s = self.scaling[name]
        lora_out = self._embed(x, self.lora_embedding_A[name].T) @ self.lora_embedding_B[name].T * s
        embed_scale = getattr(self.base_layer, "embed_scale", None)  # e.g. Gemma's scaled embeddings
        if embed_scale is not None:
            lora_out = lora_out * embed_scale
        if name not in self.lora_magnitude_vector:
            return result + lora_out.to(result.dtype)
        norm = self._col_norm(self._delta(name).detach()).detach()
        scale = self.lora_magnitude_vector[name] / norm
        return result * scale + scale * lora_out

    def _merge(self, name: str) -> None:
        delta = self._delta(name)
        W = self.base_layer.weight
        if name in self.lora_magnitude_vector:
            norm = self._col_norm(delta)
            self._dora_norms[name] = norm
            W.copy_((W + delta) * (self.lora_magnitude_vector[name] / norm)[None, :])
        else:
            W.add_(delta.to(W.dtype))

    def _unmerge(self, name: str) -> None:
        delta = self._delta(name)
        W = self.base_layer.weight
        if name in self.lora_magnitude_vector:
            factor = (self.lora_magnitude_vector[name] / self._dora_norms.pop(name))[None, :]
            W.copy_(W / factor - delta)
        else:
            W.sub_(delta.to(W.dtype))


class LoraMethod(Method):
    name = "lora"
    config_cls = LoraConfig

    def inject(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, Any]:
        assert isinstance(config, LoraConfig)
        targets = resolve_linear_targets(model, config.target_modules, config.exclude_modules, "LoRA", embeddings=True)

        def make(tname: str, module: nn.Module) -> AdapterLayer:
            if config.fan_in_fan_out is False and is_conv1d(module):
                raise LeantuneError(f"'{tname}' is a Conv1D (weight stored in×out): fan_in_fan_out must be True.")
            return LoraEmbedding(module) if isinstance(module, nn.Embedding) else LoraLinear(module)

        inject_layers(model, targets, (LoraLinear, LoraEmbedding), make, name, config)
        allowed = LINEAR_TYPES + (nn.Embedding,)
        return {
            "target_modules": portable_target_names(model, targets, allowed),
            "fan_in_fan_out": any(is_conv1d(model.get_submodule(t).base_layer) for t in targets),
        }

    def extra_parameters(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, nn.Parameter]:
        assert isinstance(config, LoraConfig)
        if config.bias == "none":
            return {}
        if config.bias == "lora_only":
            return {
                f"{m}.base_layer.bias": mod.base_layer.bias
                for m, mod in model.named_modules()
                if isinstance(mod, LoraLinear) and name in mod.adapter_names and mod.base_layer.bias is not None
            }
        return base_biases(model)

    def save_tensors(self, model: nn.Module, name: str) -> dict[str, torch.Tensor]:
        tensors = super().save_tensors(model, name)
        # A PiSSA adapter is saved as a plain LoRA of rank 2r relative to the *original* weights:
        # W + s(BA - B0A0) = W + s [B, -B0] [A; A0].
        for mname, mod in model.named_modules():
            if isinstance(mod, LoraLinear) and name in mod.pissa_init:
                A0, B0 = mod.pissa_init[name]
                ka, kb = f"base_model.model.{mname}.lora_A.weight", f"base_model.model.{mname}.lora_B.weight"
                tensors[ka] = torch.cat([tensors[ka], A0.to(tensors[ka])], dim=0)
                tensors[kb] = torch.cat([tensors[kb], -B0.to(tensors[kb])], dim=1)
        return tensors

    def saved_resolved(self, model: nn.Module, name: str) -> dict[str, Any]:
        state = require_state(model)
        cfg, resolved = state.configs[name], dict(state.resolved[name])
        assert isinstance(cfg, LoraConfig)
        if cfg.init == "pissa":
            # the converted adapter has rank 2r; keep the same scaling s.
            r2 = 2 * cfg.r
            resolved["saved_r"] = r2
            resolved["saved_alpha"] = cfg.scaling * (math.sqrt(r2) if cfg.use_rslora else r2)
        return resolved


def resolve_linear_targets(
    model: nn.Module,
    target: list[str] | str | None,
    exclude: list[str] | str | None,
    what: str,
    embeddings: bool = False,
) -> list[str]:
    """Full names of the layers to adapt: explicit names/regex, ``"all-linear"``, or the architecture default."""
    if target is None:
        defaults = arch_targets(model)
        target = list(defaults.lora) if defaults is not None else "all-linear"
    if target == "all-linear":
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        skip = protected_prefixes(model)
        names = []
        for mname, module in model.named_modules():
            base = module.base_layer if isinstance(module, AdapterLayer) else module
            if (
                isinstance(base, LINEAR_TYPES)
                and base is not out_emb
                and ".base_layer" not in mname
                and not any(mname == p or mname.startswith(p + ".") for p in skip)
                and not (exclude and target_matches(exclude, mname))
            ):
                names.append(mname)
        if not names:
            raise LeantuneError(f"{what}: 'all-linear' found no linear layer in {type(model).__name__}.")
        return names
    allowed = LINEAR_TYPES + ((nn.Embedding,) if embeddings else ())
    return find_targets(model, target, allowed, what, exclude)


def base_biases(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every bias of the base model, by full name (the copies kept for modules_to_save excluded)."""
    return {
        n: p
        for n, p in model.named_parameters()
        if n.endswith("bias") and ".original_module." not in n and ".modules_to_save." not in n
        and not n.startswith(("original_module.", "modules_to_save."))
        and "prompt_encoder." not in n
    }


def compile_lora(model: nn.Module) -> int:
    """Use one ``torch.compile``d adapter path (dynamic shapes) in every LoRA linear layer; returns how many."""
    compiled = torch.compile(lora_update, dynamic=True)
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for layer in layers:
        layer.update_fn = compiled
    return len(layers)
