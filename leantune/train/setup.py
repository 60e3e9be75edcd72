"""Setting a run up: the run folder (created safely, or the checkpoint it resumes from), device and seeds, task and
data, model and method, the distributed wrapper, optimizer and schedule, logger. Everything the training steps
need, in a :class:`Run`."""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import leantune as lt
from leantune.config import RunConfig, TrainConfig, dump_config
from leantune.data.packing import pack_examples
from leantune.errors import LeantuneError
from leantune.kernels.gated_mlp import lean_gated_mlps
from leantune.kernels.rms_norm import patch_model_rms_norms
from leantune.kernels.rotary import patch_transformers_rotary
from leantune.methods.lora import compile_lora
from leantune.methods.registry import method_for_config
from leantune.models.loading import load_tokenizer
from leantune.models.quantize import quantize_model, resolve_backend
from leantune.models.registry import resolve_model
from leantune.run.layout import CONFIG_FILE, STATUS_FILE
from leantune.run.status import is_running, mark_running, read_status, update_running
from leantune.system.device import autocast_dtype, pick_device, resolve_precision, seed_everything
from leantune.tasks import make_task
from leantune.tasks.base import Task
from leantune.train.activation_checkpointing import enable_activation_checkpointing
from leantune.train.callbacks import Callbacks
from leantune.train.checkpoints import (
    Checkpoint,
    LoopState,
    load_optimizer_state,
    restore_trainable,
    set_rng_state,
)
from leantune.train.distributed import Dist, unwrap, wrap_model
from leantune.train.logger import RunLogger
from leantune.train.optim import build_optimizer, build_scheduler
from leantune.train.precision import autocast, cast_base, grad_scaler, upcast_trainable
from leantune.train.preflight import preflight
from leantune.train.resume import find_resume_point


@dataclass
class Run:
    """One fine-tune, set up: what the training steps and the finish work on."""

    cfg: RunConfig
    dist: Dist
    device: torch.device
    precision: str
    """``train.precision`` resolved for the device: fp32, bf16 or fp16."""
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    """fp16's loss scaler; a disabled one (a pass-through) for the other precisions."""
    run_dir: Path
    task: Task
    train_features: list[dict]
    eval_features: list[dict]
    model: nn.Module
    """The model as it trains: the DDP wrapper, the FSDP-sharded model, or the model itself on one process."""
    unwrapped: nn.Module
    """What evaluation and saving use: the model inside the DDP wrapper (under FSDP the sharded model itself)."""
    trainable: int
    total: int
    quantized: dict | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    metric: str
    """The metric that picks the best evaluation (``train.metric``, else the task's headline metric)."""
    higher_is_better: bool
    logger: RunLogger
    state: LoopState
    """Step, data position and best-metric bookkeeping: what a checkpoint saves besides weights and optimizer."""
    best_weights: dict[str, torch.Tensor] | None = None
    """The trainable tensors of the best evaluation of this process's run (None: read from checkpoint-best/)."""
    callbacks: Callbacks = field(default_factory=Callbacks)
    """The Python callbacks :func:`~leantune.train.loop.fine_tune` was given."""

    def evaluate(self) -> dict[str, Any]:
        """The task's metrics on the evaluation data, computed under the run's autocast as training computes."""
        with autocast(self.device, self.amp_dtype):
            return self.task.evaluate(self.unwrapped, self.eval_features, self.device)


def setup_run(cfg: RunConfig, dist: Dist | None = None, overwrite: bool = False, quiet: bool = False,
              resume: bool = False) -> Run:
    """Everything :func:`~leantune.train.loop.fit` needs; ``resume`` continues the run in ``cfg.output_dir`` from
    its newest good checkpoint (weights, optimizer, schedule, data position, random state), exactly."""
    dist = dist or Dist()
    cfg = cfg.model_copy(deep=True)  # resolved here (max_length the task chooses), the caller's config untouched
    tc = cfg.train
    run_dir = Path(cfg.output_dir)
    checkpoint = open_run_dir(run_dir, cfg, dist, overwrite, resume)
    device = setup_process(tc, dist)
    precision = resolve_precision(tc.precision, device)  # a precision the device lacks fails before any loading
    model_path, task = load_task(cfg)
    train_features, eval_features = task.prepare()
    if dist.main:
        dump_config(cfg, run_dir / CONFIG_FILE)
        if checkpoint is None:
            task.save_artifacts(run_dir)

    model, quantized = prepare_model(cfg, task, model_path, device)
    trainable, total = lt.trainable_parameters(model)
    if checkpoint is not None:
        restore_trainable(model, checkpoint.trainable, checkpoint.path)
    model = wrap_model(model, dist, device)
    torch.manual_seed(tc.seed + dist.rank)  # each process its own dropout masks (DDP broadcast rank 0's weights)

    total_steps, warmup = schedule_length(cfg, task, train_features, dist.world)
    rates = method_for_config(cfg.method_args).learning_rates(model, cfg.method_args, tc.lr)  # LoRA+
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay, rates)
    metric = tc.metric or task.default_metric
    run = Run(cfg=cfg, dist=dist, device=device, precision=precision, amp_dtype=autocast_dtype(precision, device),
              scaler=grad_scaler(precision, device, dist.strategy if dist.active else "none"), run_dir=run_dir,
              task=task, train_features=train_features, eval_features=eval_features, model=model,
              unwrapped=unwrap(model) if dist.strategy != "fsdp" else model, trainable=trainable, total=total,
              quantized=quantized, optimizer=optimizer,
              scheduler=build_scheduler(optimizer, total_steps, warmup, tc.schedule), total_steps=total_steps,
              metric=metric, higher_is_better=task.higher_is_better(metric),
              logger=RunLogger(run_dir, total_steps, quiet or not dist.main, enabled=dist.main), state=LoopState())
    if dist.main:
        update_running(run_dir, total_steps=total_steps, start_step=checkpoint.state.step if checkpoint else 0)
    if checkpoint is None:
        start_fresh(run)
    else:
        continue_from(run, checkpoint)
    return run


def open_run_dir(run_dir: Path, cfg: RunConfig, dist: Dist, overwrite: bool, resume: bool) -> Checkpoint | None:
    """Create the run folder (every rank waits for it), or find the checkpoint to resume from; warn on low disk."""
    checkpoint = find_resume_point(run_dir, cfg, dist) if resume else None
    if checkpoint is None and dist.main:
        prepare_output_dir(run_dir, overwrite)
    dist.barrier()
    if dist.main:
        mark_running(run_dir, world=dist.world)
        warn_if_low_disk(run_dir)
    return checkpoint


def only_a_status_left(path: Path) -> bool:
    """Whether ``path`` holds nothing but the ``status.json`` of a run that ended (failed) before writing anything."""
    return [entry.name for entry in path.iterdir()] == [STATUS_FILE] and not is_running(read_status(path))


def prepare_output_dir(path: Path, overwrite: bool) -> Path:
    """Create the run folder; refuse to mix two runs in one folder unless ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise LeantuneError(f"output_dir {path} exists and is a file.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite and not only_a_status_left(path):  # a run that failed before writing: nothing to keep
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


def warn_if_low_disk(run_dir: Path, need_mb: float = 1024) -> None:
    """Warn when the run folder's disk has less than ``need_mb`` free: checkpoints must not fail half-way."""
    probe = run_dir if run_dir.exists() else run_dir.parent
    while not probe.exists():
        probe = probe.parent
    free_mb = shutil.disk_usage(probe).free / 2**20
    if free_mb < need_mb:
        print(f"warning: only {free_mb:.0f} MB free on the disk of {run_dir}; checkpoints and the adapter may not "
              "fit.", file=sys.stderr, flush=True)


def setup_process(tc: TrainConfig, dist: Dist | None = None) -> torch.device:
    """Threads and seeds as the config says; return this process's device."""
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    seed_everything(tc.seed)
    return pick_device(dist.local_rank if dist is not None and dist.active else None)


def load_task(cfg: RunConfig) -> tuple[str, Task]:
    """(the model's local path, the task with its tokenizer); a method the model cannot take fails first, before
    data is read and weights load."""
    model_path = resolve_model(cfg.model)
    task = make_task(cfg, load_tokenizer(model_path, cfg.trust_remote_code), model_path)
    preflight(cfg, task, model_path)
    return model_path, task


def prepare_model(cfg: RunConfig, task: Task, model_path: str, device: torch.device,
                  checkpointing: bool | None = None) -> tuple[nn.Module, dict | None]:
    """The task's model from the pretrained weights (the base in the run's compute dtype), quantized if asked,
    with the method attached (its trainable weights in fp32) and leantune's kernels in its layers
    (:mod:`leantune.kernels`: gated MLPs, RMSNorm, rotary embedding), on ``device``; activation checkpointing
    (``checkpointing`` overrides the config) and compilation as the config says. Returns (model, quantization
    report)."""
    tc = cfg.train
    model = task.build_model(model_path)
    cast_base(model, tc.precision, device)
    quantized = None
    if cfg.quantize != "none":
        quantized = quantize_model(model, cfg.quantize, resolve_backend(cfg.quantize_backend, device))
    lt.attach(model, cfg.method_args)
    upcast_trainable(model)
    lean_gated_mlps(model)
    patch_model_rms_norms(model)
    patch_transformers_rotary(model)
    model.to(device)
    if tc.activation_checkpointing if checkpointing is None else checkpointing:
        enable_activation_checkpointing(model)
    if tc.compile and not compile_lora(model):
        raise LeantuneError(f"train.compile compiles the LoRA adapter path; method {cfg.method} has none.")
    return model, quantized


def schedule_length(cfg: RunConfig, task: Task, train_features: list[dict], world: int) -> tuple[int, int]:
    """(optimizer steps, warmup steps) of the run: ``max_steps``, else the epochs over the data (packed rows with
    ``train.packing``) in global batches of ``batch_size x world x grad_accum``."""
    tc = cfg.train
    if tc.packing and task.seq2seq:
        raise LeantuneError(f"train.packing needs a decoder-only model; {cfg.model} is an encoder-decoder.")
    rows = len(pack_examples(train_features, tc.max_length)) if tc.packing else len(train_features)
    micro_per_epoch = math.ceil(rows / (tc.batch_size * world))
    steps_per_epoch = max(1, micro_per_epoch // tc.grad_accum)
    total_steps = tc.max_steps if tc.max_steps is not None else math.ceil(tc.epochs * steps_per_epoch)
    warmup = tc.warmup_steps if tc.warmup_steps is not None else int(tc.warmup_ratio * total_steps)
    return total_steps, warmup


def start_fresh(run: Run) -> None:
    """Say what will train, log the data report, and evaluate the starting point (untrained head / zero-shot)."""
    cfg, dist, logger = run.cfg, run.dist, run.logger
    logger.message(
        f"leantune: {cfg.method} on {cfg.model} ({cfg.task}): {run.trainable:,} of {run.total:,} parameters trained "
        f"({100 * run.trainable / run.total:.3f}%); {len(run.train_features)} train / {len(run.eval_features)} eval "
        f"examples; {run.total_steps} steps on {run.device.type} ({run.precision})"
        + (f" x {dist.world} processes ({dist.strategy})" if dist.active else ""))
    quantized = run.quantized
    if quantized:
        logger.message(f"quantized {quantized['layers']} linear layers to {quantized['kind']} "
                       f"({quantized['backend']}): {quantized['bytes_before'] / 2**20:.0f} MB -> "
                       f"{quantized['bytes_after'] / 2**20:.0f} MB")
    logger.log({"step": 0, "data": run.task.report, "trainable": run.trainable, "total": run.total,
                "quantized": quantized})
    state = run.state
    if cfg.train.eval_before or run.total_steps == 0:
        state.before = run.evaluate()
    if state.before:
        logger.log({"step": 0, "eval": run.task.headline(state.before)})
    state.best_value = state.before.get(run.metric)


def continue_from(run: Run, checkpoint: Checkpoint) -> None:
    """Continue exactly where ``checkpoint`` stopped: optimizer, schedule, loss scale, bookkeeping, log, random
    state."""
    load_optimizer_state(run.optimizer, checkpoint.optimizer["optimizer"])
    run.scheduler.load_state_dict(checkpoint.optimizer["scheduler"])
    if checkpoint.optimizer.get("scaler") and run.scaler.is_enabled():  # fp16: the loss scale it had reached
        run.scaler.load_state_dict(checkpoint.optimizer["scaler"])
    run.state = checkpoint.state
    step = run.state.step
    run.logger.truncate_after(step)
    run.logger.message(f"leantune: resuming {run.run_dir} from {checkpoint.path.name} "
                       f"(step {step} of {run.total_steps})")
    run.logger.log({"step": step, "resumed_from": checkpoint.path.name})
    set_rng_state(checkpoint.rng)  # last: after everything that draws random numbers while setting up
