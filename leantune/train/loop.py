"""The fine-tuning loop, readable top to bottom: data -> model -> adapter -> optimise -> evaluate -> save."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import leantune as lt
from leantune.config import RunConfig, dump_config
from leantune.data.batching import iterate_batches, length_grouped_batches
from leantune.data.packing import pack_examples
from leantune.errors import LeantuneError
from leantune.files import atomic_write_text
from leantune.methods.catalog import method_config
from leantune.methods.lora import compile_lora
from leantune.models.quantize import quantize_model, resolve_backend
from leantune.models.registry import resolve_model
from leantune.tasks import make_task
from leantune.train.checkpointing import enable_activation_checkpointing
from leantune.train.checkpoints import (
    LoopState,
    candidates,
    load_optimizer_state,
    restore_trainable,
    save_checkpoint,
    set_rng_state,
    trainable_state,
)
from leantune.train.distributed import (
    Dist,
    device_for,
    global_batches,
    init_distributed,
    load_full_into,
    no_gradient_sync,
    shutdown,
    unwrap,
    wrap_model,
)
from leantune.train.guards import SpikeDetector, TrainingInterrupted, stop_requests
from leantune.train.logger import RunLogger, plot_run
from leantune.train.memory import heap_trimmer, peak_memory
from leantune.train.optim import build_optimizer, build_scheduler
from leantune.train.runs import (
    find_resume_point,
    load_best,
    load_tokenizer,
    preflight,
    prepare_output_dir,
    save_best,
    warn_if_low_disk,
)


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


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware has it; fp32 on CPU (bf16 is 2-4x slower there)."""
    if precision == "fp32":
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if precision == "bf16":
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def epoch_batches(features: list[dict], batch_size: int, seed: int, pad_id: int,
                  pack_length: int | None = None, start: int = 0, d: Dist | None = None) -> Iterator[dict]:
    """Length-grouped, freshly shuffled batches, epoch after epoch; with ``pack_length``, batches of packed rows
    (re-packed each epoch). ``start`` skips that many batches (a resumed run continues with the next one). With
    several processes, the global batches of ``batch_size x world`` are cut into one slice per rank."""
    d = d or Dist()
    epoch = 0
    while True:
        rows = pack_examples(features, pack_length, seed=seed + epoch) if pack_length else features
        lengths = [len(f["input_ids"]) for f in rows]
        batches = global_batches(length_grouped_batches(lengths, batch_size * d.world, seed=seed + epoch), d)
        if start >= len(batches):
            start -= len(batches)
        else:
            yield from iterate_batches(rows, batches[start:], pad_id)
            start = 0
        epoch += 1


def prepare_model(cfg: RunConfig, task: Any, model_path: str, device: torch.device,
                  checkpointing: bool | None = None) -> tuple[torch.nn.Module, dict | None]:
    """The task's model from the pretrained weights, quantized if asked, with the method attached, on ``device``;
    activation checkpointing and compilation as the config says. Returns (model, quantization report)."""
    tc = cfg.train
    model = task.build_model(model_path)
    quantized = None
    if cfg.quantize != "none":
        quantized = quantize_model(model, cfg.quantize, resolve_backend(cfg.quantize_backend, device))
    lt.attach(model, method_config(cfg.method, cfg.method_args))
    model.to(device)
    if tc.activation_checkpointing if checkpointing is None else checkpointing:
        enable_activation_checkpointing(model)
    if tc.compile and not compile_lora(model):
        raise LeantuneError(f"train.compile compiles the LoRA adapter path; method {cfg.method} has none.")
    return model, quantized


def accumulate_gradients(model: torch.nn.Module, task: Any, micro: list[dict], device: torch.device,
                         amp_dtype: torch.dtype | None, d: Dist | None = None) -> tuple[float, int]:
    """Backward over the micro-batches of one optimizer step; return (step loss, real tokens), over all ranks.

    Each micro-batch's summed loss is divided by the number of examples (or target tokens) of the *whole step* on
    *all* ranks, so 4 micro-batches of 8 give the same loss and gradients as one batch of 32, whatever their
    padding, and 2 processes x batch 4 the same as 1 x batch 8 (DDP / FSDP average gradients over the ranks, so
    each rank's loss is scaled by the world size). Only the last micro-batch synchronises gradients.
    """
    d = d or Dist()
    count = d.sum(sum(task.batch_count(b) for b in micro))[0]
    step_loss, tokens = 0.0, 0
    for i, b in enumerate(micro):
        b = {k: v.to(device) for k, v in b.items()}
        with no_gradient_sync(model, skip=i < len(micro) - 1), \
                torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            summed, _ = task.batch_loss(model, b)
            loss = summed / max(count, 1)
            (loss * d.world).backward()
        step_loss += loss.item()
        tokens += int(b["attention_mask"].sum())
    step_loss, tokens = d.sum(step_loss, tokens)
    return step_loss, int(tokens)


def fine_tune(cfg: RunConfig, overwrite: bool = False, quiet: bool = False, resume: bool = False) -> RunResult:
    """Run one fine-tune as ``cfg`` describes and write its run folder; ``resume`` continues it from its newest
    good checkpoint, exactly where it stopped."""
    d = init_distributed(cfg.distributed.strategy, cfg.distributed.backend)
    try:
        return _fine_tune(cfg, overwrite, quiet, resume, d)
    finally:
        shutdown(d)


def _fine_tune(cfg: RunConfig, overwrite: bool, quiet: bool, resume: bool, d: Dist) -> RunResult:
    tc = cfg.train
    run_dir = Path(cfg.output_dir)
    checkpoint = find_resume_point(run_dir, cfg, d) if resume else None
    if checkpoint is None and d.main:
        prepare_output_dir(run_dir, overwrite)
    d.barrier()
    if d.main:
        warn_if_low_disk(run_dir)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    seed_everything(tc.seed)
    device = device_for(d) if d.active else pick_device()
    amp_dtype = autocast_dtype(tc.precision, device)

    # 1. data
    model_path = resolve_model(cfg.model)
    preflight(cfg, model_path)  # a method the model cannot take fails here, before any weights load
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    task = make_task(cfg, tokenizer, model_path=model_path)
    train_features, eval_features = task.prepare()
    if d.main:
        dump_config(cfg, run_dir / "config.yaml")
        if checkpoint is None:
            task.save_artifacts(run_dir)

    # 2. model + adapter (+ the distributed wrapper: DDP, or FSDP2 shards)
    model, quantized = prepare_model(cfg, task, model_path, device)
    trainable, total = lt.trainable_parameters(model)
    if checkpoint is not None:
        restore_trainable(model, checkpoint.trainable, checkpoint.path)
    model = wrap_model(model, d, device)
    torch.manual_seed(tc.seed + d.rank)  # each process its own dropout masks (DDP broadcast rank 0's weights)
    plain = unwrap(model) if d.strategy != "fsdp" else model  # what evaluation and saving use

    # 3. schedule
    if tc.packing and getattr(task, "seq2seq", False):
        raise LeantuneError(f"train.packing needs a decoder-only model; {cfg.model} is an encoder-decoder.")
    rows = len(pack_examples(train_features, tc.max_length)) if tc.packing else len(train_features)
    micro_per_epoch = math.ceil(rows / (tc.batch_size * d.world))
    steps_per_epoch = max(1, micro_per_epoch // tc.grad_accum)
    total_steps = tc.max_steps if tc.max_steps is not None else math.ceil(tc.epochs * steps_per_epoch)
    warmup = tc.warmup_steps if tc.warmup_steps is not None else int(tc.warmup_ratio * total_steps)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay)
    scheduler = build_scheduler(optimizer, total_steps, warmup, tc.schedule)
    metric = tc.metric or task.default_metric

    logger = RunLogger(run_dir, total_steps, quiet or not d.main, enabled=d.main)
    state = LoopState()
    if checkpoint is not None:  # continue exactly: weights, optimizer, schedule, RNG, data position, bookkeeping
        load_optimizer_state(optimizer, checkpoint.optimizer["optimizer"])
        scheduler.load_state_dict(checkpoint.optimizer["scheduler"])
        state = checkpoint.state
        logger.truncate_after(state.step)
        logger.message(f"leantune: resuming {run_dir} from {checkpoint.path.name} (step {state.step} of {total_steps})")
        logger.log({"step": state.step, "resumed_from": checkpoint.path.name})
    else:
        logger.message(
            f"leantune: {cfg.method} on {cfg.model} ({cfg.task}): {trainable:,} of {total:,} parameters trained "
            f"({100 * trainable / total:.3f}%); {len(train_features)} train / {len(eval_features)} eval examples; "
            f"{total_steps} steps on {device.type}" + (f" x {d.world} processes ({d.strategy})" if d.active else "")
        )
        if quantized:
            logger.message(f"quantized {quantized['layers']} linear layers to {quantized['kind']} "
                           f"({quantized['backend']}): {quantized['bytes_before'] / 2**20:.0f} MB -> "
                           f"{quantized['bytes_after'] / 2**20:.0f} MB")
        logger.log({"step": 0, "data": task.report, "trainable": trainable, "total": total, "quantized": quantized})

        # 4. evaluate the starting point (untrained head / zero-shot)
        state.before = task.evaluate(plain, eval_features, device) if tc.eval_before or total_steps == 0 else {}
        if state.before:
            logger.log({"step": 0, "eval": task.headline(state.before)})
        state.best_value = state.before.get(metric)
    best_state = None

    # 5. optimise
    model.train()
    trim_heap = heap_trimmer(device)
    batches = epoch_batches(train_features, tc.batch_size, tc.seed, task.pad_id,
                            tc.max_length if tc.packing else None, start=state.micro_batches, d=d)
    if checkpoint is not None:
        set_rng_state(checkpoint.rng)  # after everything that draws random numbers while setting up
    params = [p for p in model.parameters() if p.requires_grad]
    spikes = SpikeDetector(tc.spike_factor)
    t0 = time.perf_counter()
    time_since = time.perf_counter()
    with stop_requests() as stop:
        while state.step < total_steps:
            micro = [next(batches) for _ in range(tc.grad_accum)]
            state.micro_batches += tc.grad_accum
            step_loss, tokens = accumulate_gradients(model, task, micro, device, amp_dtype, d)
            grad_norm = clip_gradients(params, tc.max_grad_norm)
            if not (math.isfinite(step_loss) and math.isfinite(float(grad_norm))):
                # 6a. numerical guard: skip the update, keep the weights, stop if it keeps happening
                optimizer.zero_grad(set_to_none=True)
                state.nonfinite_steps += 1
                logger.log({"step": state.step, "skipped": "non-finite loss or gradients", "loss": step_loss})
                logger.message(f"warning: step {state.step + 1}: loss {step_loss} / gradient norm {float(grad_norm)} "
                               f"is not finite; update skipped ({state.nonfinite_steps} of at most "
                               f"{tc.max_nonfinite_steps})")
                if state.nonfinite_steps >= tc.max_nonfinite_steps:
                    latest = candidates(run_dir)
                    raise LeantuneError(
                        f"training diverged: {state.nonfinite_steps} steps with NaN/Inf loss or gradients. Lower "
                        f"train.lr, check the data, or use precision fp32. "
                        + (f"The last good checkpoint is {latest[0]}." if latest else "No checkpoint was written."))
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            trim_heap()
            state.step += 1
            step = state.step
            window = state.window
            window["loss"] += step_loss
            window["steps"] += 1
            window["tokens"] += tokens
            if spikes.is_spike(step_loss):
                logger.log({"step": step, "loss_spike": round(step_loss / spikes.median, 2)})
                logger.message(f"warning: step {step}: loss {step_loss:.4f} is {step_loss / spikes.median:.1f}x "
                               "the recent median")

            if step % tc.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - time_since
                tok_s = window["tokens"] / max(elapsed, 1e-9)
                lr = scheduler.get_last_lr()[0]
                mean_loss = window["loss"] / window["steps"]
                logger.log({"step": step, "loss": mean_loss, "lr": lr, "tokens": window["tokens"],
                            "tokens_per_s": round(tok_s, 1), **peak_memory(device)})
                logger.step(step, mean_loss, lr, tok_s)
                state.window = {"loss": 0.0, "steps": 0, "tokens": 0}
                time_since = time.perf_counter()

            if tc.eval_every and step % tc.eval_every == 0 and step < total_steps:
                metrics = task.evaluate(plain, eval_features, device)
                logger.log({"step": step, "eval": task.headline(metrics)})
                logger.message(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in task.headline(metrics).items()))
                if _improved(metrics.get(metric), state.best_value, metric):
                    state.best_value, state.best_step, state.bad_evals = metrics[metric], step, 0
                    best_state = trainable_state(plain)
                    save_best(run_dir, plain, best_state, d)
                else:
                    state.bad_evals += 1
                    if tc.early_stopping_patience and state.bad_evals >= tc.early_stopping_patience:
                        logger.message(f"early stopping at step {step}: no {metric} gain for {state.bad_evals} "
                                       "evaluations")
                        break

            stopping = d.any(stop.requested is not None)  # every rank stops at the same step
            if stopping or (tc.save_every and step % tc.save_every == 0 and step < total_steps):
                path = save_checkpoint(run_dir, plain, optimizer, scheduler, state, tc.keep_last, d)
                if stopping:
                    logger.close()
                    raise TrainingInterrupted(
                        f"stopped by {stop.requested or 'another process'} after step {step} of {total_steps}; "
                        f"checkpoint {path}. "
                        f"Continue with: leantune train CONFIG --resume   (output_dir {run_dir})")
    train_seconds = time.perf_counter() - t0
    memory = peak_memory(device)
    step = state.step
    if step > 0:  # the end state, so a longer run can resume from it
        save_checkpoint(run_dir, plain, optimizer, scheduler, state, tc.keep_last, d)

    # 6. final evaluation; keep the best weights if an earlier evaluation beat the end
    before = state.before
    after = task.evaluate(plain, eval_features, device) if step > 0 else before
    if state.best_step and not _improved(after.get(metric), state.best_value, metric, strict=False):
        _restore(plain, best_state if best_state is not None else load_best(run_dir))
        after = task.evaluate(plain, eval_features, device)
        logger.message(f"kept the best checkpoint (step {state.best_step}, {metric} {state.best_value:.4f})")
    logger.log({"step": step, "eval": task.headline(after), "final": True, "train_seconds": round(train_seconds, 1),
                **memory})
    logger.close()

    # 7. save the adapter (whole, gathered from the shards), metrics, plot
    lt.save_adapter(plain, run_dir / "adapter", write=d.main)
    if d.main:
        task.finish(run_dir)
        atomic_write_text(run_dir / "metrics.json", json.dumps(after, indent=2) + "\n")
        plot_run(run_dir / "train_log.jsonl", run_dir / "loss.png", metric)
    d.barrier()
    return RunResult(run_dir, before, after, trainable, total, step, train_seconds, task.report, memory)


def _improved(value: float | None, best: float | None, metric: str, strict: bool = True) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    lower_is_better = metric.endswith("loss")
    if lower_is_better:
        return value < best if strict else value <= best
    return value > best if strict else value >= best


def clip_gradients(params: list[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Clip to ``max_norm`` (None: only measure); returns the total norm (over every shard under FSDP)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm or math.inf)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for n, value in state.items():
        load_full_into(params[n], value)
