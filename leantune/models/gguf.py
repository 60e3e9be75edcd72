"""Convert a GGUF checkpoint once into a cached transformers folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """``$LEANTUNE_CACHE`` or ``~/.cache/leantune``."""
    return Path(os.environ.get("LEANTUNE_CACHE", Path.home() / ".cache" / "leantune"))


def converted_folder(gguf_file: Path) -> Path:
    """The transformers folder for ``gguf_file``, converting it on first use.

    The conversion writes to a temporary folder beside the cache entry and renames it into place, so a crash
    mid-conversion leaves no half folder and the next call starts over.
    """
    stat = gguf_file.stat()
    key = hashlib.sha1(f"{gguf_file.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    dest = cache_root() / "models" / f"{gguf_file.stem}-{key}"
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"leantune: converting {gguf_file.name} once to a transformers folder (SmolLM2-135M: about 25 s on 2 CPU "
          f"cores) -> {dest}", file=sys.stderr, flush=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, **_dequantized())
        # The weights are dequantised floats by now; drop the GGUF quantizer so transformers saves them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "config.json").is_file():  # not another process that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _dequantized() -> dict:
    """Ask for every weight unpacked into floats: transformers 5 otherwise keeps the GGUF blocks packed wherever the
    ``kernels`` package has a matmul kernel for them, and those modules cannot be saved as a plain folder (older
    versions always dequantise)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
