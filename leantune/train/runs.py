"""Run folders: creating them safely, and loading a finished run back for eval / predict."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file, save_file

from leantune.errors import LeantuneError
from leantune.models.loading import remote_code_error


def prepare_output_dir(path: Path, overwrite: bool) -> Path:
    """Create the run folder; refuse to mix two runs in one folder unless ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise LeantuneError(f"output_dir {path} exists and is a file.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise LeantuneError(f"output_dir {path} already holds a run; pass --overwrite or choose another output_dir.")
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LeantuneError(f"output_dir {path} is not writable ({e.strerror}).") from None
    return path


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


def load_run(run_dir: str | os.PathLike) -> tuple[Any, Any, Any]:
    """(config, task, model with the trained adapter) of a finished run folder."""
    import leantune as lt
    from leantune.config import validate_config
    from leantune.models.registry import resolve_model
    from leantune.tasks import make_task

    run = Path(run_dir)
    cfg_file = run / "config.yaml"
    if not cfg_file.is_file():
        raise LeantuneError(f"{run} is not a leantune run folder: it has no config.yaml.")
    cfg = validate_config(yaml.safe_load(cfg_file.read_text()), str(cfg_file))
    labels_file = run / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.is_file() else None
    model_path = resolve_model(cfg.model)
    task = make_task(cfg, load_tokenizer(model_path, cfg.trust_remote_code), labels, model_path)
    model = task.build_model(model_path)
    if cfg.quantize != "none":  # evaluate on the base the adapter was trained on
        from leantune.models.quantize import quantize_model, resolve_backend
        from leantune.train.loop import pick_device

        quantize_model(model, cfg.quantize, resolve_backend(cfg.quantize_backend, pick_device()))
    lt.load_adapter(model, run / "adapter")
    return cfg, task, model.eval()


# ------------------------------------------------------------------------------------------------- resume, safety
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "train.eval_every", "train.save_every", "train.keep_last",
                     "train.log_every", "train.eval_max_examples", "train.early_stopping_patience",
                     "train.num_threads", "train.max_nonfinite_steps", "train.spike_factor"}


def find_resume_point(run_dir: Path, cfg: Any, d: Any = None) -> Any:
    """The newest good checkpoint of the run in ``run_dir`` (corrupt ones are reported and skipped); refuses a
    folder with no checkpoint, or a config that changed what the checkpoint was trained with."""
    from leantune.config import validate_config
    from leantune.train.checkpoints import candidates, load_latest_checkpoint

    saved_cfg = run_dir / "config.yaml"
    if not saved_cfg.is_file() or not candidates(run_dir):
        raise LeantuneError(f"nothing to resume in {run_dir}: no checkpoints/ there (a run writes one every "
                            "train.save_every steps, on SIGINT/SIGTERM and at the end). Run without --resume.")
    saved = validate_config(yaml.safe_load(saved_cfg.read_text()), str(saved_cfg)).model_dump()
    changed = [k for k in _diff(saved, cfg.model_dump()) if k not in RESUMABLE_CHANGES]
    if changed:
        raise LeantuneError(f"cannot resume {run_dir}: the config differs from the run's in {changed}; "
                            f"resume with the same settings (only {sorted(RESUMABLE_CHANGES)} may change).")
    main = d is None or d.main
    checkpoint = load_latest_checkpoint(run_dir, warn=lambda m: print(m, file=sys.stderr, flush=True) if main else None,
                                        d=d)
    if checkpoint is None:
        raise LeantuneError(f"no usable checkpoint in {run_dir / 'checkpoints'}: every one is corrupt. "
                            "Start again with --overwrite.")
    return checkpoint


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k != "method_args":
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def warn_if_low_disk(run_dir: Path, need_mb: float = 1024) -> None:
    """Warn when the run folder's disk has less than ``need_mb`` free: checkpoints must not fail half-way."""
    probe = run_dir if run_dir.exists() else run_dir.parent
    while not probe.exists():
        probe = probe.parent
    free_mb = shutil.disk_usage(probe).free / 2**20
    if free_mb < need_mb:
        print(f"warning: only {free_mb:.0f} MB free on the disk of {run_dir}; checkpoints and the adapter may not "
              "fit.", file=sys.stderr, flush=True)


def save_best(run_dir: Path, model: Any, tensors: dict, d: Any = None) -> None:
    """The best evaluation's weights: a peft-format adapter plus ``tensors`` (the trainable tensors by name, for
    resume). Every rank calls it (sharded weights are gathered for the adapter); the first writes."""
    import leantune as lt

    main = d is None or d.main
    best = run_dir / "checkpoint-best"
    lt.save_adapter(model, best, write=main)
    if main:
        tmp = best / f".trainable.tmp-{os.getpid()}"
        save_file(tensors, str(tmp))
        os.replace(tmp, best / "trainable.safetensors")


def load_best(run_dir: Path) -> dict:
    return load_file(str(run_dir / "checkpoint-best" / "trainable.safetensors"))


def preflight(cfg: Any, model_path: str) -> None:
    """Attach the method to a weightless (meta-device) copy of the model: a method the architecture cannot take,
    or targets it does not have, fail here in a second, before data is read and weights load."""
    import torch
    import transformers

    import leantune as lt
    from leantune.methods.catalog import method_config

    try:
        config = transformers.AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    except ValueError as e:
        if remote := remote_code_error(cfg.model, e):
            raise remote from None
        raise LeantuneError(f"{cfg.model}: cannot read its config.json ({e}).") from None
    except OSError as e:
        raise LeantuneError(f"{cfg.model}: {e}") from None
    if cfg.task == "classification":
        cls, kwargs = transformers.AutoModelForSequenceClassification, {"num_labels": 2}
    elif cfg.task == "extractive_qa":
        cls, kwargs = transformers.AutoModelForQuestionAnswering, {}
    elif getattr(config, "is_encoder_decoder", False):
        cls, kwargs = transformers.AutoModelForSeq2SeqLM, {}
    else:
        cls, kwargs = transformers.AutoModelForCausalLM, {}
    for key, value in kwargs.items():
        setattr(config, key, value)
    try:
        with torch.device("meta"):
            skeleton = cls.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except (ValueError, KeyError):
        return  # an architecture without this head class: the real build reports it
    try:
        lt.attach(skeleton, method_config(cfg.method, cfg.method_args))
    except LeantuneError as e:
        raise LeantuneError(f"method {cfg.method} on {cfg.model}: {e}") from None
    except (NotImplementedError, RuntimeError):
        pass  # initialisations that need real weights (e.g. PiSSA's SVD): checked when the model loads
