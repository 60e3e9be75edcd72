"""OFT (Qiu et al. 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning"): the input of each adapted
layer is rotated by a learned block-diagonal orthogonal matrix, ``y = W (R x)``, i.e. ``W' = W Rᵀ``.

Each of the ``r`` diagonal blocks (``oft_block_size`` wide, ``r · oft_block_size = in_features``) is the Cayley
transform of a skew-symmetric matrix ``Q`` whose upper triangle is trained: exactly ``(I - Q)(I + Q)⁻¹``, or with
``use_cayley_neumann`` (peft's default) the truncated series ``I + 2Q + 2Q² + … + Qᵏ``. ``coft`` keeps ``Q`` within
``eps`` of zero (constrained OFT); ``block_share`` trains one block for all. Zero ``Q`` is the identity, so the
model starts as the base. Parameter names, maths and file format are peft's (``peft.tuners.oft``, 0.18+).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from leantune.errors import LeantuneError
from leantune.methods.base import AdapterLayer, MethodConfig, in_out_features, weight_as_out_in
from leantune.methods.rows import RowOp
from leantune.methods.targeting import check_layer_selection
from leantune.methods.weight_delta import (
    LinearAdapterMethod,
    adapter_dtype,
    config_from_peft_fields,
    peft_dict_from_fields,
    write_weight,
)

# The Cayley-Neumann series changed in peft 0.18; leantune computes the current one and says so in the files it
# writes (peft warns about adapters without a version).
_NEUMANN_FORMAT_VERSION = "0.18.0"


class OFTConfig(MethodConfig):
    """OFT settings (peft's ``OFTConfig`` fields). Give either ``oft_block_size`` or ``r`` (blocks per layer)."""

    peft_type: ClassVar[str] = "OFT"

    r: int = Field(0, ge=0, description="blocks per layer (0: from oft_block_size)")
    oft_block_size: int = Field(32, ge=0, description="block width (0: from r)")
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Training only: this fraction of the blocks is replaced by the identity (multiplicative dropout)."""
    coft: bool = False
    eps: float = Field(6e-5, gt=0, description="COFT: how far Q may move from zero")
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = Field(5, ge=1)
    bias: Literal["none", "all", "oft_only"] = "none"
    init_weights: bool = True
    """True: Q = 0 (the identity rotation); False: Q ~ N(0, 0.1²) (for tests)."""
    target_modules: list[str] | str | None = None
    """Module names (suffix match), a regex, ``"all-linear"``, or None for the architecture's default."""
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    """Adapt only the modules in these layer indexes (peft's rule, as LoRA's ``layers_to_transform``)."""
    layers_pattern: list[str] | str | None = None
    """The name of the model's layer list (``layers``, ``h``) that ``layers_to_transform`` counts in."""

    @model_validator(mode="before")
    @classmethod
    def _r_means_blocks(cls, data: Any) -> Any:
        # ``{r: 4}`` alone asks for 4 blocks: drop the default block size instead of refusing the pair.
        if isinstance(data, dict) and data.get("r") and "oft_block_size" not in data:
            data = {**data, "oft_block_size": 0}
        return data

    @model_validator(mode="after")
    def _one_of_r_and_block_size(self) -> OFTConfig:
        if (self.r == 0) == (self.oft_block_size == 0):
            raise ValueError(f"give exactly one of r ({self.r}) and oft_block_size ({self.oft_block_size}); "
                             "r x oft_block_size = in_features, and the other is set to 0")
        check_layer_selection(self.target_modules, self.layers_to_transform, self.layers_pattern)
        return self

    def peft_dict(self, resolved: dict[str, Any]) -> dict[str, Any]:
        return peft_dict_from_fields(self, resolved, peft_version=_NEUMANN_FORMAT_VERSION,
                                     fan_in_fan_out=bool(resolved.get("fan_in_fan_out", False)))

    @classmethod
    def from_peft_dict(cls, d: dict[str, Any]) -> OFTConfig:
        if "oft_block_size" not in d:
            raise LeantuneError("This OFT adapter predates peft 0.14 (no oft_block_size); its format is not "
                                "supported by leantune nor by current peft. Retrain it.")
        if d.get("use_cayley_neumann", False) and _older(d.get("peft_version"), _NEUMANN_FORMAT_VERSION):
            warnings.warn(f"This OFT adapter was saved by peft {d.get('peft_version') or '< 0.18'}, whose "
                          "Cayley-Neumann series differed slightly; it is computed the current way, as peft does.",
                          stacklevel=2)
        return config_from_peft_fields(cls, d, (), "OFT")


def _older(version: str | None, than: str) -> bool:
    if not version:
        return True
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version.partition("@")[0]) < Version(than)
    except InvalidVersion:
        return True


def fit_to_divisor(in_features: int, value: int) -> int:
    """The divisor of ``in_features`` nearest to ``value`` (the lower one on a tie), as peft adjusts a block size or
    block count that does not divide the layer."""
    if value >= in_features:
        return in_features
    higher = value
    while higher <= in_features and in_features % higher:
        higher += 1
    lower = value
    while lower > 1 and in_features % lower:
        lower -= 1
    return lower if value - lower <= higher - value else higher


class OFTRotation(nn.Module):
    """The trained upper triangles of the skew-symmetric blocks (``weight``: blocks × b(b-1)/2, peft's ``oft_R``) and
    the block-diagonal rotation they define."""

    def __init__(self, blocks: int, block_size: int, cfg: OFTConfig, device: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.blocks, self.block_size = blocks, block_size
        self.block_share, self.coft, self.eps = cfg.block_share, cfg.coft, cfg.eps
        self.neumann_terms = cfg.num_cayley_neumann_terms if cfg.use_cayley_neumann else 0
        self.dropout = cfg.module_dropout
        n = block_size * (block_size - 1) // 2
        self.weight = nn.Parameter(torch.empty(1 if cfg.block_share else blocks, n, device=device, dtype=dtype))
        rows, cols = torch.triu_indices(block_size, block_size, 1, device=device)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def _skew(self, vec: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(vec.shape[0], self.block_size, self.block_size, device=vec.device, dtype=vec.dtype)
        m[:, self.rows, self.cols] = vec
        return m - m.transpose(-2, -1)

    def _project(self) -> None:
        """COFT: pull each skew block back onto the Frobenius ball of radius eps / sqrt(blocks) (peft's rule)."""
        with torch.no_grad():
            q = self._skew(self.weight)
            eps = self.eps * (1 / torch.sqrt(torch.tensor(float(q.shape[0]))))
            norm = torch.linalg.matrix_norm(q, keepdim=True)
            q = torch.where(norm <= eps, q, eps * (q / norm))
            self.weight.copy_(q[:, self.rows, self.cols])

    def rotations(self) -> torch.Tensor:
        """The orthogonal blocks, ``(blocks or 1) × b × b``."""
        if self.coft:
            self._project()
        q = self._skew(self.weight)
        eye = torch.eye(self.block_size, device=q.device, dtype=q.dtype).expand_as(q)
        if not self.neumann_terms:  # solved in float32 at least (no half-precision solver), as peft does
            work = torch.promote_types(q.dtype, torch.float32)
            return torch.linalg.solve((eye + q).to(work), (eye - q).to(work), left=False).to(q.dtype)
        # (I + Q)(I - Q)^-1 = I + 2Q + 2Q² + ...: peft's truncation of it, term for term.
        n = self.neumann_terms
        rot = eye
        if n > 1:
            rot = rot + 2 * q
        if n > 2:
            power = q @ q
            rot = rot + 2 * power
            for _ in range(3, n - 1):
                power = power @ q
                rot = rot + 2 * power
            rot = rot + power @ q
        return rot

    def _dropped(self, rot: torch.Tensor) -> torch.Tensor:
        """Multiplicative dropout: in training, a random ``dropout`` fraction of the blocks become the identity."""
        count = rot.shape[0]
        if not (self.training and self.dropout) or count == 1:
            return rot
        mask = torch.zeros(count, device=rot.device, dtype=rot.dtype)
        mask[torch.randperm(count, device=rot.device)[: int(self.dropout * count)]] = 1
        mask = mask.view(-1, 1, 1)
        return (1 - mask) * rot + mask * torch.eye(self.block_size, device=rot.device, dtype=rot.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x R`` with R block-diagonal, applied block by block to the last dimension."""
        rot = self._dropped(self.rotations())
        if self.block_share:
            rot = rot.expand(self.blocks, -1, -1)
        shape = x.shape
        x = x.reshape(*shape[:-1], self.blocks, self.block_size)
        return torch.einsum("...rk,rkc->...rc", x, rot).reshape(shape)

    def matrix(self) -> torch.Tensor:
        """The whole (in × in) block-diagonal rotation."""
        rot = self.rotations()
        if self.block_share:
            rot = rot.expand(self.blocks, -1, -1)
        return torch.block_diag(*rot.unbind(0))


def rotate_input(rotation: OFTRotation, x: torch.Tensor) -> torch.Tensor:
    """``x`` rotated by ``rotation`` (in its dtype), returned in ``x``'s dtype."""
    return rotation(x.to(rotation.weight.dtype)).to(x.dtype)


@dataclass(eq=False)
class OFTRowOp(RowOp):
    """OFT on a slice of rows: their input is rotated before the frozen layer runs (the rotation in evaluation
    mode)."""

    rotation: OFTRotation
    scales_input = True

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        return rotate_input(self.rotation, x)


class OFTLinear(AdapterLayer):
    """OFT before an ``nn.Linear`` or GPT-2 ``Conv1D``: the input is rotated, then the frozen layer applied."""

    adapter_containers = ("oft_R",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.oft_R = nn.ModuleDict()

    def add(self, name: str, cfg: OFTConfig) -> None:
        fan_in, _ = in_out_features(self.base_layer)
        if cfg.oft_block_size:
            size = fit_to_divisor(fan_in, cfg.oft_block_size)
            blocks = fan_in // size
            asked = f"oft_block_size={cfg.oft_block_size}"
        else:
            blocks = fit_to_divisor(fan_in, cfg.r)
            size = fan_in // blocks
            asked = f"r={cfg.r}"
        if (size if cfg.oft_block_size else blocks) != (cfg.oft_block_size or cfg.r):
            warnings.warn(f"OFT: {asked} does not divide in_features={fan_in}; such layers use {blocks} blocks of "
                          f"{size} (as peft adjusts them).", stacklevel=2)
        rot = OFTRotation(blocks, size, cfg, self.base_layer.weight.device, adapter_dtype(self.base_layer))
        with torch.no_grad():
            if cfg.init_weights:
                nn.init.zeros_(rot.weight)
            else:
                nn.init.normal_(rot.weight, mean=0.0, std=0.1)
        self.oft_R[name] = rot

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.live_adapter()
        if name is not None:
            x = rotate_input(self.oft_R[name], x)
        return self.base_layer(x, *args, **kwargs)

    def row_op(self, name: str) -> RowOp:
        return OFTRowOp(self.oft_R[name])

    def _merge(self, name: str) -> None:
        W = weight_as_out_in(self.base_layer)
        R = self.oft_R[name].matrix()
        write_weight(self.base_layer, (W.to(R.dtype) @ R.T).to(W.dtype))

    def _unmerge(self, name: str) -> None:
        W = weight_as_out_in(self.base_layer)
        R = self.oft_R[name].matrix().float()  # R is orthogonal only up to the series' error: invert it
        write_weight(self.base_layer, (W.float() @ torch.linalg.inv(R.T)).to(W.dtype))


class OFTMethod(LinearAdapterMethod):
    name = "oft"
    label = "OFT"
    config_cls = OFTConfig
    layer_cls = OFTLinear
