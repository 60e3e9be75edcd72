"""Loading pretrained weights safely: safetensors only unless the user opts in to pickle, no remote code unless
the user turns it on, and errors that say what to do."""

from __future__ import annotations

from typing import Any

from leantune.errors import LeantuneError


def remote_code_error(path: str, error: Exception) -> LeantuneError | None:
    """The one-line answer when transformers refused ``path`` because it needs its own code, else None."""
    if "trust_remote_code" not in str(error):
        return None
    return LeantuneError(f"{path} needs its own code to load; if you trust it, set trust_remote_code: true in the "
                         "config.")


def pretrained(cls: Any, path: str, cfg: Any = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, **kwargs)`` under the run's safety settings (``cfg``: a RunConfig or None)."""
    allow_pickle = bool(getattr(cfg, "allow_pickle_weights", False))
    trust = bool(getattr(cfg, "trust_remote_code", False))
    try:
        return cls.from_pretrained(path, use_safetensors=None if allow_pickle else True, trust_remote_code=trust,
                                   **kwargs)
    except (OSError, ValueError) as e:
        text = str(e)
        if "safetensors" in text and not allow_pickle:
            raise LeantuneError(
                f"{path}: no safetensors weights found. Pickle (.bin) weights can run code when loaded: convert "
                "them to safetensors, or set allow_pickle_weights: true in the config if you trust the file."
            ) from None
        if remote := remote_code_error(path, e):
            raise remote from None
        raise LeantuneError(f"{path}: cannot load the model ({text.splitlines()[0] if text else type(e).__name__})."
                            ) from None
