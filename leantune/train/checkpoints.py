"""Step checkpoints that survive crashes, and exact resume.

A checkpoint is a folder ``checkpoints/step-0000120/`` holding everything the loop needs to continue as if it had
never stopped:

* ``trainable.safetensors`` — every trainable tensor (adapter and head) by its name in the model;
* ``adapter/`` — the same weights as a peft-format adapter, usable on its own (``lt.load_adapter``, HF peft);
* ``optimizer.pt`` — optimizer and learning-rate schedule state (tensors and numbers only: loaded with
  ``torch.load(weights_only=True)``, no pickled code);
* ``rng.pt`` — Python, NumPy, torch (and CUDA) random states;
* ``state.json`` — step, data position (micro-batches consumed), best-metric bookkeeping, the open log window;
* ``manifest.json`` — size and SHA-256 of every file above, written last.

It is written to a temporary folder, every file fsynced, renamed into place, and only then is
``checkpoints/latest`` (a one-line pointer, itself replaced atomically) moved to it: a crash at any moment leaves
the previous checkpoint intact and pointed to. On resume the manifest is checked; a corrupt or truncated
checkpoint is reported and the next older good one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from leantune.errors import LeantuneError

CHECKPOINTS = "checkpoints"
LATEST = "latest"


@dataclass
class LoopState:
    """What the training loop needs, beyond weights and optimizer, to continue exactly."""

    step: int = 0
    micro_batches: int = 0
    best_value: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    nonfinite_steps: int = 0
    window: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "steps": 0, "tokens": 0})
    before: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- writing
def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: LoopState, keep_last: int) -> Path:
    """Write a complete checkpoint for ``state.step`` atomically, point ``latest`` at it, prune old ones."""
    import leantune as lt

    root = run_dir / CHECKPOINTS
    root.mkdir(exist_ok=True)
    name = f"step-{state.step:07d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    lt.save_adapter(model, tmp / "adapter")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state)) + "\n")
    _write_manifest(tmp)
    _fsync_tree(tmp)
    final = root / name
    if final.exists():  # the same step saved again after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    _atomic_write(root / LATEST, name + "\n")
    _prune(root, keep_last, keep=name)
    return final


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached)
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    _atomic_write(folder / "manifest.json", json.dumps(manifest, indent=1) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _prune(root: Path, keep_last: int, keep: str) -> None:
    """Keep the newest ``keep_last`` checkpoints (and the one ``latest`` names); drop unfinished temporaries."""
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in steps[:-keep_last] if keep_last > 0 else steps:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".tmp-*"):
        if tmp.is_dir() and not tmp.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    path: Path
    state: LoopState
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]


def verify(folder: Path) -> str | None:
    """None when every file matches the manifest, else what is wrong."""
    manifest_file = folder / "manifest.json"
    if not manifest_file.is_file():
        return "no manifest.json (the checkpoint was not finished)"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "manifest.json is not valid JSON"
    for name, entry in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {entry['bytes']} expected (truncated?)"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoints to try, best first: the one ``latest`` names, then the others from the newest."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), reverse=True)
    latest_file = root / LATEST
    latest = latest_file.read_text().strip() if latest_file.is_file() else ""
    return sorted(steps, key=lambda p: p.name != latest)


def load_latest_checkpoint(run_dir: Path, warn: Any = print) -> Checkpoint | None:
    """The newest checkpoint that verifies; each one skipped is reported through ``warn``."""
    for folder in candidates(run_dir):
        problem = verify(folder)
        if problem is None:
            try:
                return Checkpoint(
                    path=folder,
                    state=LoopState(**json.loads((folder / "state.json").read_text())),
                    trainable=load_file(str(folder / "trainable.safetensors")),
                    optimizer=torch.load(folder / "optimizer.pt", weights_only=True),
                    rng=torch.load(folder / "rng.pt", weights_only=True),
                )
            except (OSError, SafetensorError, RuntimeError, ValueError, TypeError, KeyError) as e:
                problem = f"unreadable ({type(e).__name__}: {e})"
        warn(f"warning: checkpoint {folder} is corrupt: {problem}; trying an older one.")
    return None


def restore_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise LeantuneError(f"{source}: the checkpoint does not fit this run's model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}); was the config changed?")
    with torch.no_grad():
        for n, p in params.items():
            if p.shape != tensors[n].shape:
                raise LeantuneError(f"{source}: {n} has shape {tuple(tensors[n].shape)}, the model "
                                    f"{tuple(p.shape)}; was the config changed?")
            p.copy_(tensors[n])
