"""Serving-side wrappers around a shared base model's layers: each batch row gets its own adapter.

The batch is ordered so that the rows of one adapter are contiguous (a *segment*, as in Punica's SGMV). A wrapped
layer runs its base layer once over all rows, then applies each segment's adapter op (a method's
:class:`~leantune.methods.rows.RowOp`) to that segment's slice.
Rows in no segment (requests for the base model) get exactly the base layer's output. Slices are views, so an
adapter costs two small GEMMs on its own rows and nothing on the others (``benchmarks/RESULTS.md`` compares it
with gathering per-row weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from leantune.methods.base import LINEAR_TYPES
from leantune.methods.rows import RowOp


@dataclass
class Segment:
    """Rows ``start:end`` of the batch use ``ops`` (layer name -> op of one adapter)."""

    ops: dict[str, RowOp]
    start: int
    end: int


@dataclass
class RowContext:
    """The segments of the batch being computed; set by the engine around each forward pass."""

    segments: list[Segment] = field(default_factory=list)

    @contextmanager
    def use(self, segments: list[Segment]) -> Iterator[None]:
        self.segments = segments
        try:
            yield
        finally:
            self.segments = []


class RowLayer(nn.Module):
    """A base ``nn.Linear`` / GPT-2 ``Conv1D`` / ``nn.Embedding`` that applies per-segment adapter ops."""

    def __init__(self, name: str, base_layer: nn.Module, ctx: RowContext) -> None:
        super().__init__()
        self.name = name
        self.base_layer = base_layer
        self.ctx = ctx
        self.is_embedding = isinstance(base_layer, nn.Embedding)

    def __getattr__(self, name: str) -> Any:
        """The base layer's attributes read through (``lm_head.weight``, ``num_embeddings`` ...): the wrapper
        holds no parameters of its own."""
        modules = self.__dict__["_modules"]
        return modules[name] if name in modules else getattr(modules["base_layer"], name)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        active = [(seg.ops[self.name], seg.start, seg.end) for seg in self.ctx.segments if self.name in seg.ops]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        # every op sees rows × features; a batch row is ``per_row`` of those rows (its tokens)
        lead = x.shape if self.is_embedding else x.shape[:-1]
        per_row = lead[1:].numel()
        flat = x.reshape(-1) if self.is_embedding else x.reshape(-1, x.shape[-1])
        x_in = x
        if any(op.scales_input for op, _, _ in active):
            scaled = flat.clone()
            for op, s, e in active:
                if op.scales_input:
                    scaled[s * per_row:e * per_row] = op.scale_input(flat[s * per_row:e * per_row])
            x_in = scaled.view(x.shape)
        out = self.base_layer(x_in, *args, **kwargs)
        out = out.reshape(-1, out.shape[-1])
        replaced = [(op, s * per_row, e * per_row) for op, s, e in active if op.replaces]
        if replaced:
            out = self._replace(out, flat, replaced)
        for op, s, e in active:
            if not op.replaces:
                op.apply(out, flat, s * per_row, e * per_row, self.base_layer)
        return out.view(*lead, out.shape[-1])

    def _replace(self, out: torch.Tensor, x: torch.Tensor, replaced: list) -> torch.Tensor:
        """Heads trained per adapter may have their own width (labels): the output is as wide as the widest,
        zero-filled; callers read the first ``out_features`` columns of each row."""
        width = max([out.shape[-1], *(op.out_features for op, _, _ in replaced)])
        if width != out.shape[-1]:
            wide = out.new_zeros(out.shape[0], width)
            wide[:, :out.shape[-1]] = out
            out = wide
        for op, s, e in replaced:
            y = op.compute(x[s:e], self.base_layer).to(out.dtype)
            out[s:e] = 0
            out[s:e, :y.shape[-1]] = y
        return out


def servable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer an adapter may change: linear layers (plain, GPT-2 Conv1D, quantized) and embeddings, by name."""
    kinds = (*LINEAR_TYPES, nn.Embedding)
    wrapped = [name for name, m in model.named_modules() if isinstance(m, RowLayer)]
    return {name: m for name, m in model.named_modules() if name and isinstance(m, kinds)
            and not any(name.startswith(w + ".") for w in wrapped)}


def wrap_model(model: nn.Module, ctx: RowContext) -> dict[str, nn.Module]:
    """Wrap every servable layer of ``model`` in a :class:`RowLayer`; returns the base layers by name."""
    layers = servable_layers(model)
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, RowLayer(name, layer, ctx))
    return layers
