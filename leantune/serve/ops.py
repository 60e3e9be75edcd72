"""What one adapter does to one base layer, for the rows ``[s:e]`` of a batch.

Each op computes what leantune's training-time layer computes (the same function; rounding may differ in the last
bits), but on a slice of the batch: the base layer runs once for every row, and each adapter's rows get their own
small update. Inputs and outputs are seen as 2-D (rows × features). Rows outside every segment keep the base
output untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class LayerOp:
    """One adapter's change to one layer. ``scales_input`` ops rescale the rows' input before the base runs."""

    scales_input = False
    out_features: int | None = None  # a replaced head may have another width than the base's

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        """Update ``out[s:e]`` (the base layer's output for those rows) in place."""


@dataclass(eq=False)
class LoraOp(LayerOp):
    """LoRA: ``y + B (s·A) x``. DoRA (``dora_scale`` = m/‖W+sBA‖ per output row, fixed at load time since nothing
    trains): ``b + m/‖W+sBA‖ · (y - b + B (s·A) x)``, which is leantune's ``y + (k - 1)(y - b) + k·sBAx``.

    ``A`` holds ``s·A`` and the update is added in place (one GEMM-with-accumulate): on CPU the cost of a segment is
    mostly the number of kernel launches, so each saved one counts.
    """

    A: torch.Tensor  # (r, in), times the scaling
    B: torch.Tensor  # (out, r)
    dora_scale: torch.Tensor | None = None  # (out,)

    def __post_init__(self) -> None:
        self.Bt = self.B.T  # addmm_ takes the transposed view as it is

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        rows = out[s:e]  # weights are loaded in the base's dtype, so no casts here
        if self.dora_scale is None:
            rows.addmm_(F.linear(x[s:e], self.A), self.Bt)
            return
        bias = getattr(base, "bias", None)
        if bias is not None:
            rows.sub_(bias)
        rows.addmm_(F.linear(x[s:e], self.A), self.Bt)
        rows.mul_(self.dora_scale)
        if bias is not None:
            rows.add_(bias)


@dataclass(eq=False)
class DeltaOp(LayerOp):
    """A dense weight update (LoKr's ``ΔW = s · w1 ⊗ w2``, computed once at load time): ``y + ΔW x``, as
    leantune's LoKr layer computes it. Holds one (out × in) matrix per layer: memory of a copy of the layer."""

    delta: torch.Tensor  # (out, in)

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        out[s:e] += F.linear(x[s:e].to(self.delta.dtype), self.delta).to(out.dtype)


@dataclass(eq=False)
class InputRotationOp(LayerOp):
    """OFT: the rows' input is rotated (block-diagonal orthogonal ``R``) before the frozen layer runs; ``rotate``
    is leantune's own rotation module, in eval mode."""

    rotate: nn.Module
    dtype: torch.dtype
    scales_input = True

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotate(x.to(self.dtype)).to(x.dtype)


@dataclass(eq=False)
class LoraEmbeddingOp(LayerOp):
    """LoRA (and DoRA) beside an embedding: ``A: r × num_embeddings``, ``B: dim × r``."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float
    dora_scale: torch.Tensor | None = None  # (dim,)

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        ids = x[s:e]
        lora_out = F.embedding(ids, self.A.T, base.padding_idx, base.max_norm, base.norm_type,
                               base.scale_grad_by_freq, base.sparse) @ self.B.T * self.scaling
        embed_scale = getattr(base, "embed_scale", None)
        if embed_scale is not None:
            lora_out = lora_out * embed_scale
        result = out[s:e]
        if self.dora_scale is None:
            result += lora_out.to(result.dtype)
        else:
            out[s:e] = result * self.dora_scale + self.dora_scale * lora_out


@dataclass(eq=False)
class IA3Op(LayerOp):
    """IA3: rescale the output (attention) or, for feed-forward layers, the input."""

    vector: torch.Tensor  # flattened
    feedforward: bool

    @property
    def scales_input(self) -> bool:  # type: ignore[override]
        return self.feedforward

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.vector.to(x.dtype)

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        if not self.feedforward:
            out[s:e] = out[s:e] * self.vector.to(out.dtype)


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


@dataclass(eq=False)
class BottleneckOp(LayerOp):
    """A bottleneck adapter after the layer: ``h + s · up(act(down(h)))``."""

    down_w: torch.Tensor
    down_b: torch.Tensor
    up_w: torch.Tensor
    up_b: torch.Tensor
    activation: str
    scaling: float

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        h = out[s:e]
        z = _ACTIVATIONS[self.activation](F.linear(h.to(self.down_w.dtype), self.down_w, self.down_b))
        h += (F.linear(z, self.up_w, self.up_b) * self.scaling).to(h.dtype)


@dataclass(eq=False)
class ReplaceOp(LayerOp):
    """A module trained in full (``modules_to_save``: a classification head ...): its own weights for these rows."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    embedding: bool = False

    @property
    def out_features(self) -> int:  # type: ignore[override]
        return self.weight.shape[1] if self.embedding else self.weight.shape[0]

    def compute(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        if self.embedding:
            return F.embedding(x, self.weight, base.padding_idx)
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)
