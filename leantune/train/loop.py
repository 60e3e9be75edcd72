"""The fine-tuning loop, in three parts as torchtune's recipes and litgpt's ``fit``: :func:`setup_run` (run folder,
data, model + method, optimizer, resume), :func:`fit` (the optimizer steps: log, evaluate, keep the best,
checkpoint, stop cleanly) and :func:`finish` (end checkpoint, best weights back, final metrics, adapter, plot)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import leantune as lt
from leantune.config import RunConfig
from leantune.data.batching import iterate_batches, length_grouped_batches
from leantune.data.packing import pack_examples
from leantune.errors import LeantuneError
from leantune.run.files import write_metrics
from leantune.run.layout import ADAPTER_DIR, BEST, LOG_FILE, LOSS_PLOT, candidates
from leantune.run.loader import load_run
from leantune.run.status import mark_ended
from leantune.system.memory import heap_trimmer, peak_memory
from leantune.system.signals import TrainingInterrupted
from leantune.tasks.base import Task
from leantune.train.callbacks import Callback, Callbacks
from leantune.train.checkpoints import (
    load_best,
    restore_trainable,
    save_best,
    save_checkpoint,
    trainable_state,
)
from leantune.train.distributed import Dist, global_batches, init_distributed, no_gradient_sync, shutdown
from leantune.train.guards import SpikeDetector, StopRequest, stop_requests
from leantune.train.logger import plot_run
from leantune.train.precision import autocast
from leantune.train.setup import Run, setup_run


@dataclass
class RunResult:
    run_dir: Path
    before: dict[str, Any]
    after: dict[str, Any]
    trainable: int
    total: int
    steps: int
    train_seconds: float
    data_report: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    """Peak memory of the process up to the end of training (peak_rss_mb; peak_cuda_mb on a GPU)."""
    config: RunConfig | None = None
    """The run's resolved config (what its ``config.yaml`` holds: e.g. the max_length the task chose)."""

    @property
    def metrics(self) -> dict[str, Any]:
        """The final evaluation (the run folder's ``metrics.json``)."""
        return self.after

    def load(self) -> tuple[RunConfig, Task, torch.nn.Module]:
        """(config, task, model with the trained adapter, in evaluation mode) of the run folder."""
        return load_run(self.run_dir)


def fine_tune(cfg: RunConfig, overwrite: bool = False, quiet: bool = False, resume: bool = False,
              callbacks: Iterable[Callback] = ()) -> RunResult:
    """Run one fine-tune as ``cfg`` describes and write its run folder; ``resume`` continues it from its newest
    good checkpoint, exactly where it stopped. ``callbacks`` see its log rows, evaluations and end."""
    dist = init_distributed(cfg.distributed.strategy, cfg.distributed.backend)
    run_dir = Path(cfg.output_dir)
    try:
        run = setup_run(cfg, dist, overwrite=overwrite, quiet=quiet, resume=resume)
        run.callbacks = Callbacks(callbacks, enabled=dist.main)
        train_seconds = fit(run)
        result = finish(run, train_seconds)
    except TrainingInterrupted as e:
        if dist.main:
            mark_ended(run_dir, "interrupted", e)
        raise
    except BaseException as e:
        if dist.main:
            mark_ended(run_dir, "failed", e)
        raise
    finally:
        shutdown(dist)
    if dist.main:
        mark_ended(run_dir, "finished")
        run.callbacks.on_end(result)
    return result


# ------------------------------------------------------------------------------------------------- train
def fit(run: Run) -> float:
    """Optimise until ``run.total_steps`` (or early stopping, or a stop signal); return the seconds it took."""
    tc, state = run.cfg.train, run.state
    run.model.train()
    trim_heap = heap_trimmer(run.device)
    batches = epoch_batches(run.train_features, tc.batch_size, tc.seed, run.task.pad_id,
                            tc.max_length if tc.packing else None, start=state.micro_batches, dist=run.dist)
    params = [p for p in run.model.parameters() if p.requires_grad]
    spikes = SpikeDetector(tc.spike_factor)
    start = window_start = time.perf_counter()
    with stop_requests() as stop:
        while state.step < run.total_steps:
            micro = [next(batches) for _ in range(tc.grad_accum)]
            state.micro_batches += tc.grad_accum
            step_loss, tokens = accumulate_gradients(run.model, run.task, micro, run.device, run.amp_dtype, run.dist,
                                                     run.scaler)
            outcome, grad_norm = apply_gradients(run.optimizer, run.scaler, params, tc.max_grad_norm, step_loss)
            if outcome == "overflow":
                run.logger.log({"step": state.step, "skipped": "fp16 gradients overflowed",
                                "loss_scale": run.scaler.get_scale()})
                continue
            if outcome == "nonfinite":
                skip_step(run, step_loss, grad_norm)
                continue
            take_step(run, step_loss, tokens, spikes, trim_heap)
            step = state.step
            if step % tc.log_every == 0 or step == run.total_steps:
                log_window(run, time.perf_counter() - window_start)
                window_start = time.perf_counter()
            if tc.eval_every and step % tc.eval_every == 0 and step < run.total_steps and not evaluate_step(run):
                break
            checkpoint_or_stop(run, stop)
    return time.perf_counter() - start


def take_step(run: Run, step_loss: float, tokens: int, spikes: SpikeDetector, trim_heap: Callable[[], object]) -> None:
    """After the optimizer stepped: advance the schedule, and count the step into the log window."""
    run.scheduler.step()
    trim_heap()
    state = run.state
    state.step += 1
    state.window["loss"] += step_loss
    state.window["steps"] += 1
    state.window["tokens"] += tokens
    if spikes.is_spike(step_loss):
        run.logger.log({"step": state.step, "loss_spike": round(step_loss / spikes.median, 2)})
        run.logger.message(f"warning: step {state.step}: loss {step_loss:.4f} is {step_loss / spikes.median:.1f}x "
                           "the recent median")


def skip_step(run: Run, step_loss: float, grad_norm: float) -> None:
    """Numerical guard: drop a step whose loss or gradients are not finite (the weights stay as they were); stop
    the run when it keeps happening."""
    state, tc = run.state, run.cfg.train
    state.nonfinite_steps += 1
    run.logger.log({"step": state.step, "skipped": "non-finite loss or gradients", "loss": step_loss})
    run.logger.message(f"warning: step {state.step + 1}: loss {step_loss} / gradient norm {grad_norm} is not "
                       f"finite; update skipped ({state.nonfinite_steps} of at most {tc.max_nonfinite_steps})")
    if state.nonfinite_steps >= tc.max_nonfinite_steps:
        latest = candidates(run.run_dir)
        raise LeantuneError(
            f"training diverged: {state.nonfinite_steps} steps with NaN/Inf loss or gradients. Lower "
            f"train.lr, check the data, or use precision fp32. "
            + (f"The last good checkpoint is {latest[0]}." if latest else "No checkpoint was written."))


def log_window(run: Run, seconds: float) -> None:
    """Log the mean loss, learning rate and throughput of the steps since the last log row; open a new window."""
    state = run.state
    window = state.window
    tokens_per_s = window["tokens"] / max(seconds, 1e-9)
    lr = run.scheduler.get_last_lr()[0]
    mean_loss = window["loss"] / window["steps"]
    row = {"step": state.step, "loss": mean_loss, "lr": lr, "tokens": window["tokens"],
           "tokens_per_s": round(tokens_per_s, 1), **peak_memory(run.device)}
    run.logger.log(row)
    run.logger.step(state.step, mean_loss, lr, tokens_per_s)
    run.callbacks.on_step(row)
    state.window = {"loss": 0.0, "steps": 0, "tokens": 0}


def evaluate_step(run: Run) -> bool:
    """Evaluate now; keep the weights (and write ``checkpoint-best/``) when the metric improved. Returns False
    when early stopping ends the run."""
    state, task, logger = run.state, run.task, run.logger
    metrics = run.evaluate()
    logger.log({"step": state.step, "eval": task.headline(metrics)})
    logger.message(f"step {state.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in task.headline(metrics).items()))
    run.callbacks.on_evaluate(state.step, metrics)
    if _improved(metrics.get(run.metric), state.best_value, run.higher_is_better):
        state.best_value, state.best_step, state.bad_evals = metrics[run.metric], state.step, 0
        run.best_weights = trainable_state(run.unwrapped)
        save_best(run.run_dir, run.unwrapped, run.best_weights, run.dist)
        return True
    state.bad_evals += 1
    patience = run.cfg.train.early_stopping_patience
    if patience and state.bad_evals >= patience:
        logger.message(f"early stopping at step {state.step}: no {run.metric} gain for {state.bad_evals} evaluations")
        return False
    return True


def checkpoint_or_stop(run: Run, stop: StopRequest) -> None:
    """Write a checkpoint every ``save_every`` steps; on a stop signal (on any rank) write one and stop, saying
    how to resume."""
    tc, step = run.cfg.train, run.state.step
    stopping = run.dist.any(stop.requested is not None)  # every rank stops at the same step
    if stopping or (tc.save_every and step % tc.save_every == 0 and step < run.total_steps):
        path = save_checkpoint(run.run_dir, run.unwrapped, run.optimizer, run.scheduler, run.state, tc.keep_last,
                               run.dist, run.scaler)
        if stopping:
            run.logger.close()
            raise TrainingInterrupted(
                f"stopped by {stop.requested or 'another process'} after step {step} of {run.total_steps}; "
                f"checkpoint {path}. Continue with: leantune train CONFIG --resume   (output_dir {run.run_dir})")


# ------------------------------------------------------------------------------------------------- finish
def finish(run: Run, train_seconds: float) -> RunResult:
    """The end checkpoint, the best weights back if an earlier evaluation beat the end, the final evaluation, and
    the run folder's adapter, metrics and plot."""
    memory = peak_memory(run.device)
    state, dist = run.state, run.dist
    if state.step > 0:  # the end state, so a longer run can resume from it
        save_checkpoint(run.run_dir, run.unwrapped, run.optimizer, run.scheduler, state, run.cfg.train.keep_last,
                        dist, run.scaler)
    after = final_evaluation(run)
    run.logger.log({"step": state.step, "eval": run.task.headline(after), "final": True,
                    "train_seconds": round(train_seconds, 1), **memory})
    run.logger.close()
    run.callbacks.on_evaluate(state.step, after)

    lt.save_adapter(run.unwrapped, run.run_dir / ADAPTER_DIR, write=dist.main)  # whole, gathered from the shards
    if dist.main:
        run.task.finish(run.run_dir)
        write_metrics(run.run_dir, after)
        plot_run(run.run_dir / LOG_FILE, run.run_dir / LOSS_PLOT, run.metric)
    dist.barrier()
    return RunResult(run.run_dir, state.before, after, run.trainable, run.total, state.step, train_seconds,
                     run.task.report, memory, config=run.cfg)


def final_evaluation(run: Run) -> dict[str, Any]:
    """The metrics of the end weights, or of the best evaluation's weights (restored) when those were better."""
    state = run.state
    if state.step == 0:
        return state.before
    after = run.evaluate()
    if state.best_step and not _improved(after.get(run.metric), state.best_value, run.higher_is_better,
                                         strict=False):
        best = run.best_weights if run.best_weights is not None else load_best(run.run_dir)
        restore_trainable(run.unwrapped, best, run.run_dir / BEST)
        after = run.evaluate()
        run.logger.message(f"kept the best checkpoint (step {state.best_step}, {run.metric} {state.best_value:.4f})")
    return after


def _improved(value: float | None, best: float | None, higher_is_better: bool, strict: bool = True) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    if higher_is_better:
        return value > best if strict else value >= best
    return value < best if strict else value <= best


# ------------------------------------------------------------------------------------------------- one step
def epoch_batches(features: list[dict], batch_size: int, seed: int, pad_id: int,
                  pack_length: int | None = None, start: int = 0, dist: Dist | None = None) -> Iterator[dict]:
    """Length-grouped, freshly shuffled batches, epoch after epoch; with ``pack_length``, batches of packed rows
    (re-packed each epoch). ``start`` skips that many batches (a resumed run continues with the next one). With
    several processes, the global batches of ``batch_size x world`` are cut into one slice per rank."""
    dist = dist or Dist()
    epoch = 0
    while True:
        rows = pack_examples(features, pack_length, seed=seed + epoch) if pack_length else features
        lengths = [len(f["input_ids"]) for f in rows]
        batches = global_batches(length_grouped_batches(lengths, batch_size * dist.world, seed=seed + epoch), dist)
        if start >= len(batches):
            start -= len(batches)
        else:
            yield from iterate_batches(rows, batches[start:], pad_id)
            start = 0
        epoch += 1


def accumulate_gradients(model: torch.nn.Module, task: Task, micro: list[dict], device: torch.device,
                         amp_dtype: torch.dtype | None, dist: Dist | None = None,
                         scaler: torch.amp.GradScaler | None = None) -> tuple[float, int]:
    """Backward over the micro-batches of one optimizer step; return (step loss, real tokens), over all ranks.

    Each micro-batch's summed loss is divided by the number of examples (or target tokens) of the *whole step* on
    *all* ranks, so 4 micro-batches of 8 give the same loss and gradients as one batch of 32, whatever their
    padding, and 2 processes x batch 4 the same as 1 x batch 8 (DDP / FSDP average gradients over the ranks, so
    each rank's loss is scaled by the world size). Only the last micro-batch synchronises gradients. With fp16's
    ``scaler`` the backward pass runs on the scaled loss (the step loss returned is not scaled).
    """
    dist = dist or Dist()
    count = dist.sum(sum(task.batch_count(b) for b in micro))[0]
    step_loss, tokens = 0.0, 0
    for i, b in enumerate(micro):
        b = {k: v.to(device) for k, v in b.items()}
        with no_gradient_sync(model, skip=i < len(micro) - 1), autocast(device, amp_dtype):
            loss = task.batch_loss(model, b) / max(count, 1)
            scaled = loss * dist.world
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        step_loss += loss.item()
        tokens += int(b["attention_mask"].sum())
    step_loss, tokens = dist.sum(step_loss, tokens)
    return step_loss, int(tokens)


def apply_gradients(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[torch.Tensor],
                    max_norm: float | None, step_loss: float) -> tuple[str, float]:
    """Unscale the gradients (fp16's loss scaler; a no-op otherwise), clip them, and step the optimizer through the
    scaler; the gradients are cleared after. Returns (outcome, gradient norm), the outcome one of "step" (the
    weights were updated), "overflow" (fp16 gradients overflowed: nothing updated, the scaler lowers its scale;
    not a failure) and "nonfinite" (the loss or the gradients are not finite: nothing updated)."""
    scaler.unscale_(optimizer)
    grad_norm = float(clip_gradients(params, max_norm))
    if not math.isfinite(step_loss):
        outcome = "nonfinite"
    elif not math.isfinite(grad_norm):
        outcome = "overflow" if scaler.is_enabled() else "nonfinite"
    else:
        scaler.step(optimizer) if scaler.is_enabled() else optimizer.step()  # fp32 / bf16: the plain step
        outcome = "step"
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return outcome, grad_norm


def clip_gradients(params: list[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Clip to ``max_norm`` (None: only measure); returns the total norm (over every shard under FSDP)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm or math.inf)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
