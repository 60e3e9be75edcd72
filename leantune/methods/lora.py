"""LoRA (Hu et al. 2021), with rsLoRA scaling, PiSSA and OLoRA initialisation, LoRA+ rates, and the variant seam.

``y = W x + s · B A dropout(x)`` with ``A: r × in`` and ``B: out × r``; ``s = alpha / r`` (``alpha / sqrt(r)`` with
rsLoRA). Works on ``nn.Linear``, GPT-2's ``Conv1D`` (weight stored transposed) and ``nn.Embedding``. A variant
changes what a layer computes for the adapters that use it (:mod:`leantune.methods.lora_variant`): DoRA
(``use_dora``) is one, in :mod:`leantune.methods.dora`. PiSSA starts A and B from the weight's top singular
directions, OLoRA from its QR decomposition; both leave the residual in the base (:data:`RESIDUAL_INITS`).
LoRA+ (``loraplus_lr_ratio``) trains B at a higher learning rate (:mod:`leantune.methods.loraplus`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch import nn

from leantune.errors import LeantuneError
from leantune.kernels.lora_linear import lora_linear
from leantune.methods.base import (
    LINEAR_TYPES,
    AdapterLayer,
    Method,
    MethodConfig,
    base_biases,
    in_out_features,
    is_conv1d,
    require_state,
    weight_as_out_in,
    weight_dtype_device,
)
from leantune.methods.dora import DoraEmbeddingVariant, DoraVariant
from leantune.methods.lora_parameters import inject_parameter_lora, parameter_lora_b
from leantune.methods.lora_variant import LoraVariant
from leantune.methods.loraplus import loraplus_learning_rates
from leantune.methods.rows import RowOp
from leantune.methods.targeting import (
    check_layer_selection,
    check_patterns,
    inject_layers,
    keep_layers,
    pattern_value,
    portable_target_names,
    resolve_linear_targets,
)
from leantune.models.quantize import is_quantized_layer

LoraInit = Literal["standard", "gaussian", "pissa", "olora", "random"]

# peft keys that change what an adapter computes and that leantune does not implement: refuse rather than guess.
_UNSUPPORTED_PEFT_KEYS = (
    "layer_replication", "use_qalora",
    "lora_bias", "trainable_token_indices", "alora_invocation_tokens", "use_bdlora",
    "megatron_config", "arrow_config", "velora_config", "kasa_config", "monteclora_config",
)
_LORAPLUS_LR_EMBEDDING = 1e-6  # peft's default
# peft's init_lora_weights values leantune implements, as leantune's ``init``.
_PEFT_INITS: dict[str, LoraInit] = {"gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def init_from_peft(value: Any) -> LoraInit:
    """leantune's ``init`` for peft's ``init_lora_weights`` (True: standard, False: random, or a supported name)."""
    if value is True or value is False:
        return "standard" if value else "random"
    if isinstance(value, str) and value in _PEFT_INITS:
        return _PEFT_INITS[value]
    raise ValueError(f"init_lora_weights={value!r} is not supported by leantune; supported: True, False, "
                     f"{', '.join(map(repr, _PEFT_INITS))} (leantune's init: standard, random, gaussian, pissa, "
                     "olora)")


class LoraConfig(MethodConfig):
    """LoRA settings. ``use_dora`` turns it into DoRA, ``use_rslora`` scales by ``alpha / sqrt(r)``."""

    peft_type: ClassVar[str] = "LORA"
    peft_names: ClassVar[dict[str, str]] = {
        "lora_alpha": "alpha", "lora_dropout": "dropout", "init_lora_weights": "init",
    }

    r: int = Field(8, gt=0, description="rank of the update")
    alpha: float = Field(16.0, gt=0, description="scale numerator: s = alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str | None = None
    """Module names (suffix match), a regex, ``"all-linear"``, or None for the architecture's default."""
    target_parameters: list[str] | None = None
    """Parameters to put LoRA on (peft's ``target_parameters``, suffix match): the 3-D expert weights of MoE blocks
    (:mod:`leantune.methods.lora_parameters`). None: the architecture's default (the experts' weights of an MoE
    model, none otherwise); []: none."""
    exclude_modules: list[str] | str | None = None
    use_rslora: bool = False
    use_dora: bool = False
    init: LoraInit = "standard"
    """standard: A Kaiming-uniform, B zero; gaussian: A ~ N(0, 1/r); pissa: from the weight's top singular vectors;
    olora: from the weight's QR decomposition; random: A and B both random (the adapter is not a no-op at start;
    for tests)."""
    bias: Literal["none", "all", "lora_only"] = "none"
    fan_in_fan_out: bool | None = None
    """True for layers that store weight as (in, out); None: detected (GPT-2's Conv1D)."""
    loraplus_lr_ratio: float | None = Field(None, gt=0)
    """LoRA+: B matrices (and 1-D parameters) train at lr × this ratio (the paper suggests 16). A training setting:
    kept in the optimizer's groups and the run's config, not in adapter_config.json."""
    loraplus_lr_embedding: float = Field(_LORAPLUS_LR_EMBEDDING, gt=0)
    """LoRA+: the learning rate of LoRA's embedding layers (peft's ``loraplus_lr_embedding``)."""
    rank_pattern: dict[str, PositiveInt] = {}
    """Module name or regex -> its rank instead of ``r`` (peft's matching: the key matches the end of the module's
    name at a dot boundary, the first matching key wins), e.g. ``{"q_proj": 16, "layers\\.0\\..*": 4}``."""
    alpha_pattern: dict[str, PositiveFloat] = {}
    """Module name or regex -> its alpha instead of ``alpha`` (matched as ``rank_pattern``)."""
    layers_to_transform: list[int] | int | None = None
    """Adapt only the modules in these layer indexes (the first number in the module's name after a dot, or after
    ``layers_pattern``). Needs a list of target_modules (or the architecture's default)."""
    layers_pattern: list[str] | str | None = None
    """The name of the model's layer list (``layers``, ``h``) that ``layers_to_transform`` counts in."""

    @classmethod
    def peft_value(cls, field: str, value: Any) -> Any:
        return init_from_peft(value) if field == "init" else value

    @model_validator(mode="after")
    def _refuse_bad_combinations(self) -> LoraConfig:
        if self.use_dora and self.init in RESIDUAL_INITS:
            raise ValueError(f"DoRA with init '{self.init}' is not supported; choose one of them")
        if self.init in RESIDUAL_INITS and (self.rank_pattern or self.alpha_pattern):
            raise ValueError(f"init '{self.init}' with rank_pattern/alpha_pattern is not supported; use one r and "
                             "alpha, or another init")
        check_patterns(self.rank_pattern, self.alpha_pattern)
        check_layer_selection(self.target_modules, self.layers_to_transform, self.layers_pattern)
        if self.loraplus_lr_ratio is None and self.loraplus_lr_embedding != _LORAPLUS_LR_EMBEDDING:
            raise ValueError("loraplus_lr_embedding applies with LoRA+ only: set loraplus_lr_ratio too")
        return self

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def for_module(self, name: str) -> LoraConfig:
        """The config of the module named ``name``: its r and alpha from ``rank_pattern``/``alpha_pattern``."""
        r, alpha = pattern_value(self.rank_pattern, name, self.r), pattern_value(self.alpha_pattern, name, self.alpha)
        return self if (r, alpha) == (self.r, self.alpha) else self.model_copy(update={"r": r, "alpha": alpha})

    @property
    def variant(self) -> str | None:
        """The LoRA variant of this adapter's layers (None: plain LoRA)."""
        return "dora" if self.use_dora else None

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        r, alpha = resolved.get("saved_r", self.r), resolved.get("saved_alpha", self.alpha)
        return {
            "peft_type": "LORA",
            "r": r,
            "lora_alpha": alpha,
            "lora_dropout": self.dropout,
            "target_modules": resolved["target_modules"],
            "target_parameters": resolved.get("target_parameters"),
            "exclude_modules": None,
            "fan_in_fan_out": bool(resolved.get("fan_in_fan_out", False)),
            "bias": self.bias,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "init_lora_weights": {"gaussian": "gaussian", "random": False}.get(self.init, True),
            "modules_to_save": resolved.get("modules_to_save"),
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "layers_to_transform": self.layers_to_transform,
            "layers_pattern": self.layers_pattern,
        }

    @classmethod
    def from_peft_dict(cls, saved: dict[str, Any]) -> LoraConfig:
        bad = [k for k in _UNSUPPORTED_PEFT_KEYS if saved.get(k) not in (None, {}, [], False, "megatron.core")]
        if bad:
            raise LeantuneError(f"This LoRA adapter uses peft options leantune does not support: {bad}.")
        init = saved.get("init_lora_weights", True)
        if init not in (True, False, "gaussian"):
            raise LeantuneError(
                f"This adapter was saved with init_lora_weights={init!r}, which changes the base weights; convert it "
                "to a standard LoRA first (peft: save_pretrained(..., path_initial_model_for_weight_conversion=...))."
            )
        return cls(
            r=saved["r"],
            alpha=saved.get("lora_alpha", 8),
            dropout=saved.get("lora_dropout", 0.0),
            target_modules=saved.get("target_modules"),
            target_parameters=saved.get("target_parameters") or [],
            exclude_modules=saved.get("exclude_modules"),
            use_rslora=saved.get("use_rslora", False),
            use_dora=saved.get("use_dora", False),
            init=init_from_peft(init),
            bias=saved.get("bias", "none"),
            fan_in_fan_out=saved.get("fan_in_fan_out"),
            modules_to_save=saved.get("modules_to_save"),
            rank_pattern=saved.get("rank_pattern") or {},
            alpha_pattern=saved.get("alpha_pattern") or {},
            layers_to_transform=saved.get("layers_to_transform"),
            layers_pattern=saved.get("layers_pattern") or None,
        )


def lora_update(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``s · B A x``: the scale is applied on the rank-r activations (r columns, not out_features)."""
    return F.linear(F.linear(x, a) * scaling, b)


def embedding_lora_output(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                          base: nn.Embedding) -> torch.Tensor:
    """``s · (BA)ᵀ[ids]`` beside the embedding ``base`` (``a``: r × num_embeddings, ``b``: dim × r), times the
    embedding's own scale where it has one (Gemma)."""
    rows = F.embedding(ids, a.T, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse)
    out = rows @ b.T * scaling
    embed_scale = getattr(base, "embed_scale", None)
    return out * embed_scale if embed_scale is not None else out


@dataclass(eq=False)
class LoraRowOp(RowOp):
    """LoRA on a slice of rows: ``y + B (s·A) x``. With ``scale`` (DoRA's ``m / ‖W + sBA‖`` per output, fixed
    while serving): ``b + scale · (y - b + B (s·A) x)``, which is DoRA's ``y + (k - 1)(y - b) + k·sBAx``.

    ``scaled_a`` holds ``s·A`` and the update is added in place (one GEMM with accumulate): on a CPU a segment costs
    mostly its number of kernel launches, so each saved one counts."""

    scaled_a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    scale: torch.Tensor | None = None  # (out,)

    def __post_init__(self) -> None:
        self.bt = self.b.T  # addmm_ takes the transposed view as it is

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        rows = out[s:e]
        xs = x[s:e] if x.dtype == self.scaled_a.dtype else x[s:e].to(self.scaled_a.dtype)
        if self.scale is None:
            rows.addmm_(F.linear(xs, self.scaled_a).to(rows.dtype), self.bt.to(rows.dtype))
            return
        bias = getattr(base, "bias", None)
        if bias is not None:
            rows.sub_(bias)
        rows.addmm_(F.linear(xs, self.scaled_a).to(rows.dtype), self.bt.to(rows.dtype))
        rows.mul_(self.scale)
        if bias is not None:
            rows.add_(bias)


@dataclass(eq=False)
class LoraEmbeddingRowOp(RowOp):
    """LoRA beside an embedding on a slice of rows (:func:`embedding_lora_output`); with ``scale`` (DoRA):
    ``scale · (y + lora)``."""

    a: torch.Tensor  # (r, num_embeddings)
    b: torch.Tensor  # (dim, r)
    scaling: float
    scale: torch.Tensor | None = None  # (dim,)

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        lora_out = embedding_lora_output(x[s:e], self.a, self.b, self.scaling, base)
        result = out[s:e]
        if self.scale is None:
            result += lora_out.to(result.dtype)
        else:
            out[s:e] = result * self.scale + self.scale * lora_out


def pissa_factors(weight: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PiSSA's A (r × in) and B (out × r) from the top-r singular triplets of the fp32 (out, in) ``weight``."""
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    sqrt_s = torch.sqrt(S[:r] / scaling)
    return sqrt_s[:, None] * Vh[:r], U[:, :r] * sqrt_s[None, :]


def olora_factors(weight: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """OLoRA's A (r × in) and B (out × r) from the QR decomposition ``W = QR`` of the fp32 (out, in) ``weight``:
    ``B = Q[:, :r]`` (orthonormal columns), ``A = R[:r]`` (peft's ``olora_init``; unscaled, like peft)."""
    Q, R = torch.linalg.qr(weight)
    return R[:r].contiguous(), Q[:, :r].contiguous()


# Initialisations that start the adapter from the base weight: the base keeps the residual W - s·BA, and the
# saved adapter is a plain LoRA of rank 2r relative to the original weight (peft's conversion).
RESIDUAL_INITS: dict[str, Callable[[torch.Tensor, int, float], tuple[torch.Tensor, torch.Tensor]]] = {
    "pissa": pissa_factors,
    "olora": olora_factors,
}


class LoraLayer(AdapterLayer):
    """What LoRA layers share: each adapter's scaling and variant, and merging through the variant.

    A subclass gives its weights in one layout (``in_axis``: the input-feature axis) through ``base_weight``,
    ``delta_weight`` and ``set_base_weight``, and the adapter's output through ``lora_output``; see
    :mod:`leantune.methods.lora_variant` for what a variant may use.
    """

    in_axis: ClassVar[int]
    variant_types: ClassVar[dict[str, type[LoraVariant]]]
    """``LoraConfig.variant`` -> the variant's class for this layer kind."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.scaling: dict[str, float] = {}
        self.variants: dict[str, LoraVariant] = {}

    def base_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self, name: str) -> torch.Tensor:
        """``s·BA`` of adapter ``name``, in the layout of :meth:`base_weight`."""
        raise NotImplementedError

    def set_base_weight(self, weight: torch.Tensor) -> None:
        raise NotImplementedError

    def lora_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The adapter's term of the output, ``s·B A dropout(x)``."""
        raise NotImplementedError

    def add_variant(self, name: str, cfg: LoraConfig) -> None:
        """Give adapter ``name`` its variant (plain LoRA unless ``cfg.variant`` names one) and let it initialise."""
        if cfg.variant is None:
            variant = LoraVariant()
        elif cfg.variant in self.variant_types:
            variant = self.variant_types[cfg.variant]()
        else:
            raise LeantuneError(f"LoRA variant '{cfg.variant}' does not apply to {type(self.base_layer).__name__} "
                                "layers; narrow target_modules.")
        for container, make in variant.containers.items():
            if container not in self._modules:
                self.add_module(container, make())
                self.adapter_containers = (*self.adapter_containers, container)
        self.variants[name] = variant
        variant.init(self, name, cfg)

    def _merge(self, name: str) -> None:
        weight, delta = self.base_weight(), self.delta_weight(name)
        self.set_base_weight(self.variants[name].merged(self, name, weight, delta))

    def _unmerge(self, name: str) -> None:
        weight, delta = self.base_weight(), self.delta_weight(name)
        self.set_base_weight(self.variants[name].unmerged(self, name, weight, delta))

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.scaling.pop(name, None)
        self.variants.pop(name, None)


class LoraLinear(LoraLayer):
    """LoRA beside an ``nn.Linear`` or GPT-2 ``Conv1D``; weights in the (out_features, in_features) layout.

    The plain LoRA path does no needless work: no input copy when dropout is 0 (Identity), no upcast of the frozen
    weight (the base layer runs as it is), the adapter weights in the base weight's dtype; in training, base and
    adapter run as one autograd node when they can (:mod:`leantune.kernels.lora_linear`).
    """

    adapter_containers = ("lora_A", "lora_B", "lora_dropout")
    in_axis = 1
    variant_types = {"dora": DoraVariant}
    update_fn = staticmethod(lora_update)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.residual_init: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        """Per adapter started by a residual init (PiSSA): its starting (A, B), which saving needs."""

    def add(self, name: str, cfg: LoraConfig) -> None:
        fan_in, fan_out = in_out_features(self.base_layer)
        dtype, device = weight_dtype_device(self.base_layer)  # a quantized base is not dequantised for this
        self.lora_A[name] = nn.Linear(fan_in, cfg.r, bias=False, device=device, dtype=dtype)
        self.lora_B[name] = nn.Linear(cfg.r, fan_out, bias=False, device=device, dtype=dtype)
        self.lora_dropout[name] = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.scaling[name] = cfg.scaling
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        with torch.no_grad():
            if cfg.init in RESIDUAL_INITS:
                self._init_residual(name, cfg.init, cfg.r)
            else:
                if cfg.init == "gaussian":
                    nn.init.normal_(A, std=1 / cfg.r)
                else:
                    nn.init.kaiming_uniform_(A, a=math.sqrt(5))
                if cfg.init == "random":
                    nn.init.kaiming_uniform_(B, a=math.sqrt(5))
                else:
                    nn.init.zeros_(B)
        self.add_variant(name, cfg)

    def _init_residual(self, name: str, init: str, r: int) -> None:
        """A, B from the weight by ``RESIDUAL_INITS[init]`` (PiSSA: its top singular directions; OLoRA: its QR
        decomposition); the base keeps W - s·BA."""
        W = weight_as_out_in(self.base_layer).float()
        if r > min(W.shape):
            raise LeantuneError(f"init '{init}' needs r <= min(out_features, in_features) of every target layer: "
                                f"r is {r}, a layer has {min(W.shape)}; lower r or narrow target_modules.")
        s = self.scaling[name]
        A, B = RESIDUAL_INITS[init](W, r, s)
        dtype = self.lora_A[name].weight.dtype
        self.lora_A[name].weight.copy_(A.to(dtype))
        self.lora_B[name].weight.copy_(B.to(dtype))
        self.residual_init[name] = (A.to(dtype).clone(), B.to(dtype).clone())
        self.set_base_weight(weight_as_out_in(self.base_layer) - (s * B @ A).to(W.dtype))

    def base_weight(self) -> torch.Tensor:
        return weight_as_out_in(self.base_layer)

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_B[name].weight @ self.lora_A[name].weight).mul_(self.scaling[name])

    def set_base_weight(self, weight: torch.Tensor) -> None:
        if is_quantized_layer(self.base_layer):
            raise LeantuneError("this LoRA setting writes to the base weight, which is quantized here; "
                                "use init standard/gaussian with a quantized base, or dequantise it first.")
        target = self.base_layer.weight
        target.data.copy_(weight.T if is_conv1d(self.base_layer) else weight)

    def lora_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        return self.update_fn(self.lora_dropout[name](x), A, B, self.scaling[name])

    def row_op(self, name: str) -> RowOp:
        A, B = self.lora_A[name].weight.detach(), self.lora_B[name].weight.detach()
        return LoraRowOp(A * self.scaling[name], B, self.variants[name].row_scale(self, name))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.live_adapter()
        if name is not None and not args and not kwargs and self._fused_path(name, x):
            A, B = self.lora_A[name].weight, self.lora_B[name].weight
            return lora_linear(x, self.base_layer.weight, self.base_layer.bias, A, B, self.scaling[name])
        result = self.base_layer(x, *args, **kwargs)
        if name is None:
            return result
        dtype = self.lora_A[name].weight.dtype
        return self.variants[name].forward(self, name, x if x.dtype == dtype else x.to(dtype), result)

    def _fused_path(self, name: str, x: torch.Tensor) -> bool:
        """Whether this training forward pass can be one :func:`~leantune.kernels.lora_linear.lora_linear` node:
        plain LoRA without dropout on a frozen, unhooked plain ``nn.Linear``, one dtype, no autocast. In
        evaluation (no gradients) the unfused path runs, as generation and serving compute it."""
        base = self.base_layer
        if not torch.is_grad_enabled() or type(base) is not nn.Linear or base._forward_hooks or base._forward_pre_hooks:
            return False  # quantized layers (leantune's, bitsandbytes') are other classes
        weight, bias, A = base.weight, base.bias, self.lora_A[name].weight
        return (type(self.variants[name]) is LoraVariant and type(self.lora_dropout[name]) is nn.Identity
                and self.update_fn is lora_update and type(weight) is nn.Parameter and not weight.requires_grad
                and (bias is None or not bias.requires_grad) and x.dtype == weight.dtype == A.dtype
                and not torch.is_autocast_enabled(x.device.type))

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        self.residual_init.pop(name, None)


class LoraEmbedding(LoraLayer):
    """LoRA beside an ``nn.Embedding``: ``A: r × num_embeddings``, ``B: dim × r`` (peft's layout); weights in the
    embedding's own (num_embeddings, dim) layout."""

    adapter_containers = ("lora_embedding_A", "lora_embedding_B")
    in_axis = 0
    variant_types = {"dora": DoraEmbeddingVariant}

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def add(self, name: str, cfg: LoraConfig) -> None:
        if cfg.init in RESIDUAL_INITS:
            raise LeantuneError(f"init '{cfg.init}' applies to linear layers, not to embeddings; narrow target_modules.")
        num, dim = self.base_layer.num_embeddings, self.base_layer.embedding_dim
        dtype, device = weight_dtype_device(self.base_layer)
        A = torch.zeros(cfg.r, num, device=device, dtype=dtype)
        B = torch.empty(dim, cfg.r, device=device, dtype=dtype)
        nn.init.normal_(B)
        if cfg.init == "random":
            nn.init.normal_(A)
        self.lora_embedding_A[name] = nn.Parameter(A)
        self.lora_embedding_B[name] = nn.Parameter(B)
        self.scaling[name] = cfg.scaling
        self.add_variant(name, cfg)

    def base_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_embedding_A[name].T @ self.lora_embedding_B[name].T).mul_(self.scaling[name])

    def set_base_weight(self, weight: torch.Tensor) -> None:
        self.base_layer.weight.copy_(weight)

    def lora_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return embedding_lora_output(x, self.lora_embedding_A[name], self.lora_embedding_B[name], self.scaling[name],
                                     self.base_layer)

    def row_op(self, name: str) -> RowOp:
        a, b = self.lora_embedding_A[name].detach(), self.lora_embedding_B[name].detach()
        return LoraEmbeddingRowOp(a, b, self.scaling[name], self.variants[name].row_scale(self, name))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        name = self.live_adapter()
        return result if name is None else self.variants[name].forward(self, name, x, result)


class LoraMethod(Method):
    name = "lora"
    config_cls = LoraConfig

    def inject(self, model: nn.Module, name: str, config: MethodConfig) -> dict[str, Any]:
        assert isinstance(config, LoraConfig)
        targets = [] if config.target_modules == [] else resolve_linear_targets(
            model, config.target_modules, config.exclude_modules, "LoRA", embeddings=True)
        targets = keep_layers(targets, config.target_modules, config.layers_to_transform, config.layers_pattern, "LoRA")

        def make(tname: str, module: nn.Module) -> AdapterLayer:
            if config.fan_in_fan_out is False and is_conv1d(module):
                raise LeantuneError(f"'{tname}' is a Conv1D (weight stored in×out): fan_in_fan_out must be True.")
            return LoraEmbedding(module) if isinstance(module, nn.Embedding) else LoraLinear(module)

        inject_layers(model, targets, (LoraLinear, LoraEmbedding), make, name, config)
        parameters = inject_parameter_lora(model, name, config)
        if not targets and not parameters:
            raise LeantuneError("LoRA: target_modules and target_parameters select nothing; name what to adapt.")
        allowed = LINEAR_TYPES + (nn.Embedding,)
        return {
            "target_modules": portable_target_names(model, targets, allowed),
            "target_parameters": parameters,
            "fan_in_fan_out": any(is_conv1d(model.get_submodule(t).base_layer) for t in targets),
        }

    def learning_rates(self, model: nn.Module, config: MethodConfig, lr: float) -> dict[int, float]:
        assert isinstance(config, LoraConfig)
        if config.loraplus_lr_ratio is None:
            return {}
        layers = list(model.modules())
        return loraplus_learning_rates(
            model, lr, config.loraplus_lr_ratio, config.loraplus_lr_embedding,
            b_params=[p for m in layers if isinstance(m, LoraLinear) for p in m.lora_B.parameters()]
            + parameter_lora_b(model),
            embedding_params=[p for m in layers if isinstance(m, LoraEmbedding)
                              for p in (*m.lora_embedding_A.parameters(), *m.lora_embedding_B.parameters())],
        )

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
        # A residual-init (PiSSA) adapter is saved as a plain LoRA of rank 2r relative to the *original* weights:
        # W + s(BA - B0A0) = W + s [B, -B0] [A; A0].
        for mname, mod in model.named_modules():
            if isinstance(mod, LoraLinear) and name in mod.residual_init:
                A0, B0 = mod.residual_init[name]
                ka, kb = f"base_model.model.{mname}.lora_A.weight", f"base_model.model.{mname}.lora_B.weight"
                tensors[ka] = torch.cat([tensors[ka], A0.to(tensors[ka])], dim=0)
                tensors[kb] = torch.cat([tensors[kb], -B0.to(tensors[kb])], dim=1)
        return tensors

    def saved_resolved(self, model: nn.Module, name: str) -> dict[str, Any]:
        state = require_state(model)
        cfg, resolved = state.configs[name], dict(state.resolved[name])
        assert isinstance(cfg, LoraConfig)
        if cfg.init in RESIDUAL_INITS:
            # the converted adapter has rank 2r; keep the same scaling s.
            r2 = 2 * cfg.r
            resolved["saved_r"] = r2
            resolved["saved_alpha"] = cfg.scaling * (math.sqrt(r2) if cfg.use_rslora else r2)
        return resolved


def compile_lora(model: nn.Module) -> int:
    """Use one ``torch.compile``d adapter path (dynamic shapes) in every LoRA linear layer; returns how many."""
    compiled = torch.compile(lora_update, dynamic=True)
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for layer in layers:
        layer.update_fn = compiled
    return len(layers)
