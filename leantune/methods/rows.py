"""What one adapter does to one layer for a slice of a batch's rows: how a server runs many adapters in one batch.

The batch is ordered so that each adapter's rows are contiguous (a *segment*); the base layer runs once over every
row and each segment's :class:`RowOp` updates its own rows. A layer's input and output are seen as 2-D (rows ×
features). Each method builds its op beside its layer (``AdapterLayer.row_op``) from the same weights and functions
its ``forward`` uses, with the adapter's weights fixed (evaluation: no dropout, nothing trains).
"""

from __future__ import annotations

import torch
from torch import nn


class RowOp:
    """One adapter's change to one layer for rows ``[s:e]``.

    ``scales_input`` ops change those rows' input before the base layer runs (:meth:`scale_input`); ``replaces``
    ops compute those rows' whole output themselves (:meth:`compute`), possibly ``out_features`` wide; the others
    update the base layer's output in place (:meth:`apply`)."""

    scales_input = False
    replaces = False
    out_features: int | None = None

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, out: torch.Tensor, x: torch.Tensor, s: int, e: int, base: nn.Module) -> None:
        """Update ``out[s:e]`` (the base layer's output for those rows, input ``x[s:e]``) in place."""

    def compute(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        raise NotImplementedError

