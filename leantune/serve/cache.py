"""The running batch's key/value cache: one row per sequence, left-padded to a common length, in preallocated
buffers.

A sequence is prefilled on its own, then its row is inserted into the batch (whichever side is shorter is padded
on the left and masked out). A finished sequence's row is dropped at once, and columns that only padding still uses
are trimmed. Each row keeps its own position ids, so padding never shifts a sequence's positions.

Decode steps write each new key/value into spare room at the end of the buffers instead of concatenating (which
copies the whole cache at every step and, on CPU, leaves the heap fragmented by ever-growing blocks).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

HEADROOM = 64  # decode steps that fit before the buffers are enlarged


def kv_of(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a transformers cache, each (batch, heads, length, head_dim)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def make_cache(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    return DynamicCache(kv)


class _BufferLayer(DynamicLayer):
    """A cache layer over a preallocated (batch, heads, capacity, head_dim) buffer: ``update`` writes in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self.key_buffer, self.value_buffer, self.length = keys, values, length
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


def _placed(block: torch.Tensor, length: int, row_capacity: int, capacity: int) -> torch.Tensor:
    """A new zeroed buffer with room for ``row_capacity`` rows and ``capacity`` columns holding ``block``
    (rows, heads, used columns, head_dim) right-aligned at column ``length`` (left padding)."""
    out = block.new_zeros(row_capacity, block.shape[1], capacity, block.shape[3])
    out[:block.shape[0], :, length - block.shape[2]:length] = block
    return out


def _columns(needed: int) -> int:
    """Column capacity for ``needed`` columns plus headroom, rounded so that few distinct sizes are allocated."""
    return -(-(needed + HEADROOM) // HEADROOM) * HEADROOM


class BatchKV:
    """Per-layer key/value buffers (room for ``max_rows`` rows) and the attention mask of the running batch.

    Rows are added and removed in place; the buffers are only reallocated when a prompt is longer than the
    batch's columns, when the columns run out, or when a third of them is left-padding nobody needs: on CPU, a
    fresh multi-megabyte buffer at every admission fragments the heap (resident memory grows without bound).
    """

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0  # columns in use (the same for every row: shorter rows are left-padded)
        self.mask: torch.Tensor | None = None  # (rows, length), 1 where a real (or virtual) token is cached

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def _reallocate(self, length: int) -> None:
        """Fresh buffers with the current rows right-aligned at ``length`` columns."""
        n, capacity = self.rows, _columns(length)
        self.buffers = [(_placed(k[:n, :, :self.length], length, self.max_rows, capacity),
                         _placed(v[:n, :, :self.length], length, self.max_rows, capacity))
                        for k, v in self.buffers]
        if self.mask is not None:
            self.mask = F.pad(self.mask, (length - self.length, 0))
        self.length = length

    def insert(self, index: int, kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """Put one prefilled sequence (its cache with batch 1, and its mask (1, length)) at row ``index``."""
        new = mask.shape[1]
        if self.mask is None:
            self.buffers = [(_placed(k, new, self.max_rows, _columns(new)),
                             _placed(v, new, self.max_rows, _columns(new))) for k, v in kv]
            self.mask, self.length = mask, new
            return
        if new > self.length or self.length >= self.buffers[0][0].shape[2]:
            self._reallocate(max(new, self.length))
        n, length = self.rows, self.length
        for (bk, bv), (k, v) in zip(self.buffers, kv, strict=True):
            for buf, row in ((bk, k), (bv, v)):
                for i in range(n - 1, index - 1, -1):  # make room: rows index.. move down by one
                    buf[i + 1].copy_(buf[i])
                buf[index].zero_()
                buf[index, :, length - new:length] = row[0]
        row_mask = F.pad(mask, (length - new, 0))
        self.mask = torch.cat([self.mask[:index], row_mask, self.mask[index:]], dim=0)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (increasing), moved up in place; trim leading columns that no kept row uses once
        they are a third of the buffer."""
        if not rows:
            self.buffers, self.mask, self.length = [], None, 0
            return
        assert self.mask is not None
        for bk, bv in self.buffers:
            for buf in (bk, bv):
                for j, i in enumerate(rows):
                    if i != j:
                        buf[j].copy_(buf[i])
        self.mask = self.mask[rows]
        first = int(self.mask.any(0).int().argmax())
        if first and first * 3 >= self.buffers[0][0].shape[2]:
            n, length = len(rows), self.length - first
            self.buffers = [(_placed(k[:n, :, first:self.length], length, self.max_rows, _columns(length)),
                             _placed(v[:n, :, first:self.length], length, self.max_rows, _columns(length)))
                            for k, v in self.buffers]
            self.mask, self.length = self.mask[:, first:], length

    def step_inputs(self) -> tuple[Any, torch.Tensor]:
        """The cache (room for one more token) and the attention mask of a decode step."""
        assert self.mask is not None
        if self.length >= self.buffers[0][0].shape[2]:  # the columns ran out: enlarge
            self._reallocate(self.length)
        n = self.rows
        cache = DynamicCache()
        cache.layers = [_BufferLayer(k[:n], v[:n], self.length) for k, v in self.buffers]
        mask = torch.cat([self.mask, self.mask.new_ones(n, 1)], dim=1)
        return cache, mask

    def after_step(self, mask: torch.Tensor) -> None:
        """The step wrote its keys/values into the buffers; record the new length and mask."""
        self.length += 1
        self.mask = mask


def uses_full_attention_cache(model: nn.Module) -> bool:
    """Whether every layer of the model's KV cache is plain full attention (what the batch cache handles)."""
    cache = DynamicCache(config=model.config)
    return all(type(layer) is DynamicLayer for layer in cache.layers)
