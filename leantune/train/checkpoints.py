"""Step checkpoints that survive crashes, and exact resume.

A checkpoint is a folder ``checkpoints/step-0000120/`` holding everything the loop needs to continue as if it had
never stopped:

* ``trainable.safetensors`` — every trainable tensor (adapter and head) by its name in the model;
* ``adapter/`` — the same weights as a peft-format adapter, usable on its own (``lt.load_adapter``, HF peft);
* ``optimizer-rank{r}.pt`` — optimizer (this process's shard under FSDP), learning-rate schedule and fp16 loss
  scaler state (tensors and numbers only: loaded with ``torch.load(weights_only=True)``, no pickled code);
* ``rng-rank{r}.pt`` — Python, NumPy, torch (and CUDA) random states of each process;
* ``state.json`` — step, data position (micro-batches consumed), best-metric bookkeeping, the open log window;
* ``manifest.json`` — size and SHA-256 of every file above, written last.

The best evaluation's weights go to ``checkpoint-best/`` (a peft-format adapter plus ``trainable.safetensors``),
each file written atomically.

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
from leantune.files import atomic_write, atomic_write_text, fsync_dir
from leantune.run.layout import (
    ADAPTER_DIR,
    BEST,
    CHECKPOINTS,
    LATEST,
    STEP_PREFIX,
    TRAINABLE,
    candidates,
    checkpoint_name,
)
from leantune.tensors import full_tensor, is_sharded, load_full_into
from leantune.train.distributed import Dist


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
                    state: LoopState, keep_last: int, dist: Dist | None = None, scaler: Any = None) -> Path:
    """Write a complete checkpoint for ``state.step`` atomically, point ``latest`` at it, prune old ones
    (``scaler``: fp16's loss scaler, whose scale a resumed run continues with).

    With several processes every rank calls it: sharded weights are gathered whole, each rank adds its own
    optimizer shard and random state, rank 0 writes the rest and moves the checkpoint into place."""
    import leantune as lt

    dist = dist or Dist()
    root = run_dir / CHECKPOINTS
    name = checkpoint_name(state.step)
    tmp = root / f".tmp-{name}"
    tensors = trainable_state(model)  # collective when sharded
    if dist.main:
        root.mkdir(exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(tensors, str(tmp / TRAINABLE))
    lt.save_adapter(model, tmp / ADAPTER_DIR, write=dist.main)
    dist.barrier()
    tmp.mkdir(parents=True, exist_ok=True)  # (another node's view of the folder, without a shared filesystem)
    torch.save({"optimizer": _local_optimizer_state(optimizer), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}}, tmp / f"optimizer-rank{dist.rank}.pt")
    torch.save(rng_state(), tmp / f"rng-rank{dist.rank}.pt")
    dist.barrier()
    final = root / name
    if dist.main:
        (tmp / "state.json").write_text(json.dumps({**asdict(state), "world_size": dist.world}) + "\n")
        _write_manifest(tmp)
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / LATEST, name + "\n")
        _prune(root, keep_last, keep=name)
    dist.barrier()
    return final


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor by name, whole (gathered from the ranks when sharded), on the CPU."""
    return {n: full_tensor(p.detach()).to("cpu").contiguous()
            for n, p in model.named_parameters() if p.requires_grad}


def _local_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state with sharded tensors as this rank's local shards (plain tensors load safely)."""
    sd = optimizer.state_dict()
    state = {k: {n: v.to_local() if is_sharded(v) else v for n, v in s.items()} for k, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a state saved by :func:`save_checkpoint` (local shards are put back on the parameters' meshes)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for k, s in saved["state"].items():
        p = params[int(k)]
        state[k] = {}
        for n, v in s.items():
            if is_sharded(p) and isinstance(v, torch.Tensor) and v.dim() > 0:
                from torch.distributed.tensor import DTensor

                v = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements)
            state[k][n] = v
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


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
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(sub)


def _prune(root: Path, keep_last: int, keep: str) -> None:
    """Keep the newest ``keep_last`` checkpoints (and the one ``latest`` names); drop unfinished temporaries (the
    one being written is already in place when this runs, so every ``.tmp-*`` left is from a crash)."""
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX))
    for old in steps[:-keep_last] if keep_last > 0 else steps:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".tmp-*"):
        if tmp.is_dir():
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


def load_latest_checkpoint(run_dir: Path, warn: Any = print, dist: Dist | None = None) -> Checkpoint | None:
    """The newest checkpoint that verifies; each one skipped is reported through ``warn``. A checkpoint written
    by a different number of processes is refused (its optimizer shards and random states are per rank)."""
    dist = dist or Dist()
    for folder in candidates(run_dir):
        problem = verify(folder)
        if problem is None:
            try:
                raw = json.loads((folder / "state.json").read_text())
                saved_world = raw.pop("world_size", 1)
                if saved_world != dist.world:
                    raise LeantuneError(
                        f"{folder} was written by {saved_world} process(es); resume it with the same number "
                        f"(this run has {dist.world}): optimizer shards and random states are per process.")
                return Checkpoint(
                    path=folder,
                    state=LoopState(**raw),
                    trainable=load_file(str(folder / TRAINABLE)),
                    optimizer=torch.load(folder / f"optimizer-rank{dist.rank}.pt", weights_only=True),
                    rng=torch.load(folder / f"rng-rank{dist.rank}.pt", weights_only=True),
                )
            except (OSError, SafetensorError, RuntimeError, ValueError, TypeError, KeyError) as e:
                problem = f"unreadable ({type(e).__name__}: {e})"
        warn(f"warning: checkpoint {folder} is corrupt: {problem}; trying an older one.")
    return None


# ------------------------------------------------------------------------------------------------- best weights
def save_best(run_dir: Path, model: nn.Module, tensors: dict[str, torch.Tensor], dist: Dist | None = None) -> None:
    """The best evaluation's weights in ``checkpoint-best/``: a peft-format adapter plus ``tensors`` (the trainable
    tensors by name, as :func:`trainable_state` gives them). Every rank calls it (sharded weights are gathered for
    the adapter); the first writes, each file atomically."""
    import leantune as lt

    dist = dist or Dist()
    best = run_dir / BEST
    lt.save_adapter(model, best, write=dist.main)
    if dist.main:
        atomic_write(best / TRAINABLE, lambda tmp: save_file(tensors, tmp))


def load_best(run_dir: Path) -> dict[str, torch.Tensor]:
    """The trainable tensors :func:`save_best` wrote."""
    return load_file(str(run_dir / BEST / TRAINABLE))


def restore_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path | str) -> None:
    """Copy saved trainable tensors into ``model``; refuses tensors that do not fit its trainable parameters
    (naming ``source``). Sharded parameters keep only this rank's shard."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise LeantuneError(f"{source}: the checkpoint does not fit this run's model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}); was the config changed?")
    for n, p in params.items():
        if p.shape != tensors[n].shape:
            raise LeantuneError(f"{source}: {n} has shape {tuple(tensors[n].shape)}, the model "
                                f"{tuple(p.shape)}; was the config changed?")
        load_full_into(p, tensors[n])
