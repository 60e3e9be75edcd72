"""Loading pretrained weights and tokenizers safely: safetensors only unless the user opts in to pickle, no remote
code unless the user turns it on, and errors that say what to do."""

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


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if remote := remote_code_error(path, e):
            raise remote from None
        raise
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise LeantuneError(f"{path}: the tokenizer has neither a pad nor an EOS token.")
        tok.pad_token = tok.eos_token
    return tok


def read_model_config(cfg: Any, model_path: str) -> Any:
    """The transformers config of the model at ``model_path`` (``cfg``: the RunConfig naming it), or an error
    naming the model."""
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    except ValueError as e:
        if remote := remote_code_error(cfg.model, e):
            raise remote from None
        raise LeantuneError(f"{cfg.model}: cannot read its config.json ({e}).") from None
    except OSError as e:
        raise LeantuneError(f"{cfg.model}: {e}") from None
