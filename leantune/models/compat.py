"""Small bridges over transformers versions (4.56 ... 5.x)."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from torch import nn


@lru_cache(maxsize=64)
def _cache_kwarg_for(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model: nn.Module) -> str:
    """The forward keyword for the KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    return _cache_kwarg_for(type(model))


def output_cache(output: Any) -> Any:
    """The KV cache a forward pass returned."""
    value = getattr(output, "cache", None)
    return value if value is not None else getattr(output, "past_key_values", None)


@lru_cache(maxsize=64)
def _has_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def last_logits_only(model: nn.Module) -> dict[str, Any]:
    """Forward kwargs that compute the LM head for the last position only, where the model supports it."""
    return {"logits_to_keep": 1} if _has_logits_to_keep(type(model)) else {}
