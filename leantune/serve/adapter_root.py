"""Where the admin endpoint may load adapters from: folders inside ``--adapter-root``, every file in them
included, checked after symlinks are followed and before anything is read."""

from __future__ import annotations

from pathlib import Path

from leantune.serve.gate import ApiError


def resolve_adapter_path(root: str | None, path: str) -> Path:
    """``path`` (relative to ``root``, or absolute) as a real folder inside ``root``, every file and folder in it
    too (config, labels, the adapter's files ...): symlinks are followed before the check, so none can lead
    outside. Nothing is read before the check."""
    if root is None:
        raise ApiError(403, "adapter admin is off: start the server with --adapter-root.")
    if ".." in Path(path).parts:
        raise ApiError(400, "path: '..' is not allowed; give a folder inside --adapter-root.", param="path")
    try:
        base = Path(root).resolve()
        target = (base / path).resolve()
        if not target.is_relative_to(base):
            raise ApiError(400, f"path: {path!r} resolves outside --adapter-root.", param="path")
        if not target.is_dir():
            raise ApiError(400, f"path: {path!r} is not a folder under --adapter-root.", param="path")
        escape = _first_outside(base, target)
    except (OSError, ValueError) as e:  # a name the OS refuses (too long, a NUL byte), a folder it cannot list
        raise ApiError(400, f"path: {path!r} cannot be read under --adapter-root ({type(e).__name__}).",
                       param="path") from None
    if escape is not None:
        raise ApiError(400, f"path: {path!r} holds {escape.as_posix()!r}, which resolves outside --adapter-root.",
                       param="path")
    return target


def _first_outside(root: Path, folder: Path) -> Path | None:
    """The first entry under ``folder`` (a resolved folder inside ``root``; links followed, each folder once)
    that resolves outside ``root``, relative to ``folder``; None when everything stays inside."""
    seen: set[Path] = set()
    todo = [folder]
    while todo:
        entry = todo.pop()
        real = entry.resolve()
        if not real.is_relative_to(root):
            return entry.relative_to(folder)
        if real in seen or not real.is_dir():
            continue
        seen.add(real)
        todo.extend(entry.iterdir())
    return None
