"""Activation checkpointing of the transformer blocks (non-reentrant), for every method.

Each block's ``forward`` is replaced, on the instance, by one that runs under ``torch.utils.checkpoint`` while
training: only the block inputs are kept, the block is recomputed in the backward pass. A KV cache the block would
write to is dropped (as transformers does; there is nothing to cache in training). Module hooks stay outside
the checkpoint (they do not run twice), frozen inputs need no ``requires_grad`` trick (non-reentrant), and the
prefix cache of prefix tuning is kept: it is read-only in training, so the recompute sees
exactly what the first pass saw. transformers' own ``gradient_checkpointing_enable`` drops any cache, which would
silently remove the prefixes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from leantune.errors import LeantuneError


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: children of ModuleLists whose entries are all one *Layer / *Block class."""
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(m) for m in module}
            name = next(iter(kinds)).__name__
            if len(kinds) == 1 and (name.endswith("Layer") or name.endswith("Block")):
                blocks += list(module)
    return blocks


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every transformer block of ``model``; returns how many blocks were wrapped."""
    blocks = transformer_blocks(model)
    if not blocks:
        raise LeantuneError(f"activation checkpointing: found no transformer blocks in {type(model).__name__}.")
    for block in blocks:
        if getattr(block, "_leantune_checkpointed", False):
            continue
        block.forward = _checkpointed(block, block.forward)
        block._leantune_checkpointed = True
    return len(blocks)


def _checkpointed(block: nn.Module, forward: Any) -> Any:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if block.training and torch.is_grad_enabled():
            # a cache the block writes to would be written twice (forward and recompute): drop it
            args = tuple(None if _writable_cache(a) else a for a in args)
            kwargs = {k: None if _writable_cache(v) else v for k, v in kwargs.items()}
            if kwargs.get("use_cache"):
                kwargs["use_cache"] = False
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def _writable_cache(value: Any) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(value, Cache) and not getattr(value, "read_only", False)
