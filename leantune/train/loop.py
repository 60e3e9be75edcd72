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
from leantune.methods.catalog import method_config
from leantune.methods.lora import compile_lora
from leantune.models.quantize import quantize_model, resolve_backend
from leantune.models.registry import resolve_model
from leantune.tasks import make_task
from leantune.train.checkpointing import enable_activation_checkpointing
from leantune.train.logger import RunLogger, plot_run
from leantune.train.memory import heap_trimmer, peak_memory
from leantune.train.optim import build_optimizer, build_scheduler
from leantune.train.runs import load_tokenizer, prepare_output_dir


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
                  pack_length: int | None = None) -> Iterator[dict]:
    """Length-grouped, freshly shuffled batches, epoch after epoch; with ``pack_length``, batches of packed rows
    (re-packed each epoch)."""
    epoch = 0
    while True:
        rows = pack_examples(features, pack_length, seed=seed + epoch) if pack_length else features
        lengths = [len(f["input_ids"]) for f in rows]
        batches = length_grouped_batches(lengths, batch_size, seed=seed + epoch)
        yield from iterate_batches(rows, batches, pad_id)
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
                         amp_dtype: torch.dtype | None) -> tuple[float, int]:
    """Backward over the micro-batches of one optimizer step; return (step loss, real tokens).

    Each micro-batch's summed loss is divided by the number of examples (or target tokens) of the *whole step*,
    so 4 micro-batches of 8 give the same loss and gradients as one batch of 32, whatever their padding.
    """
    count = sum(task.batch_count(b) for b in micro)
    step_loss, tokens = 0.0, 0
    for b in micro:
        b = {k: v.to(device) for k, v in b.items()}
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            summed, _ = task.batch_loss(model, b)
        loss = summed / count
        loss.backward()
        step_loss += loss.item()
        tokens += int(b["attention_mask"].sum())
    return step_loss, tokens


def fine_tune(cfg: RunConfig, overwrite: bool = False, quiet: bool = False) -> RunResult:
    """Run one fine-tune as ``cfg`` describes and write its run folder."""
    tc = cfg.train
    run_dir = prepare_output_dir(Path(cfg.output_dir), overwrite)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    seed_everything(tc.seed)
    device = pick_device()
    amp_dtype = autocast_dtype(tc.precision, device)

    # 1. data
    model_path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path)
    task = make_task(cfg, tokenizer, model_path=model_path)
    train_features, eval_features = task.prepare()
    dump_config(cfg, run_dir / "config.yaml")
    task.save_artifacts(run_dir)

    # 2. model + adapter
    model, quantized = prepare_model(cfg, task, model_path, device)
    trainable, total = lt.trainable_parameters(model)

    # 3. schedule
    if tc.packing and getattr(task, "seq2seq", False):
        raise LeantuneError(f"train.packing needs a decoder-only model; {cfg.model} is an encoder-decoder.")
    rows = len(pack_examples(train_features, tc.max_length)) if tc.packing else len(train_features)
    micro_per_epoch = math.ceil(rows / tc.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // tc.grad_accum)
    total_steps = tc.max_steps if tc.max_steps is not None else math.ceil(tc.epochs * steps_per_epoch)
    warmup = tc.warmup_steps if tc.warmup_steps is not None else int(tc.warmup_ratio * total_steps)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay)
    scheduler = build_scheduler(optimizer, total_steps, warmup, tc.schedule)
    metric = tc.metric or task.default_metric

    logger = RunLogger(run_dir, total_steps, quiet)
    logger.message(
        f"leantune: {cfg.method} on {cfg.model} ({cfg.task}): {trainable:,} of {total:,} parameters trained "
        f"({100 * trainable / total:.3f}%); {len(train_features)} train / {len(eval_features)} eval examples; "
        f"{total_steps} steps on {device.type}"
    )
    if quantized:
        logger.message(f"quantized {quantized['layers']} linear layers to {quantized['kind']} "
                       f"({quantized['backend']}): "
                       f"{quantized['bytes_before'] / 2**20:.0f} MB -> {quantized['bytes_after'] / 2**20:.0f} MB")
    logger.log({"step": 0, "data": task.report, "trainable": trainable, "total": total, "quantized": quantized})

    # 4. evaluate the starting point (untrained head / zero-shot)
    before = task.evaluate(model, eval_features, device) if tc.eval_before or total_steps == 0 else {}
    if before:
        logger.log({"step": 0, "eval": task.headline(before)})
    best_value, best_step, best_state, bad_evals = before.get(metric), 0, None, 0

    # 5. optimise
    model.train()
    trim_heap = heap_trimmer(device)
    batches = epoch_batches(train_features, tc.batch_size, tc.seed, task.pad_id, tc.max_length if tc.packing else None)
    t0 = time.perf_counter()
    tokens_since, time_since, loss_since, n_since = 0, time.perf_counter(), 0.0, 0
    step = 0
    while step < total_steps:
        micro = [next(batches) for _ in range(tc.grad_accum)]
        step_loss, tokens = accumulate_gradients(model, task, micro, device, amp_dtype)
        tokens_since += tokens
        if tc.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        trim_heap()
        step += 1
        loss_since += step_loss
        n_since += 1

        if step % tc.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - time_since
            tok_s = tokens_since / max(elapsed, 1e-9)
            lr = scheduler.get_last_lr()[0]
            logger.log({"step": step, "loss": loss_since / n_since, "lr": lr, "tokens": tokens_since,
                        "tokens_per_s": round(tok_s, 1), **peak_memory(device)})
            logger.step(step, loss_since / n_since, lr, tok_s)
            tokens_since, time_since, loss_since, n_since = 0, time.perf_counter(), 0.0, 0

        if tc.eval_every and step % tc.eval_every == 0 and step < total_steps:
            metrics = task.evaluate(model, eval_features, device)
            logger.log({"step": step, "eval": task.headline(metrics)})
            logger.message(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in task.headline(metrics).items()))
            if _improved(metrics.get(metric), best_value, metric):
                best_value, best_step, bad_evals = metrics[metric], step, 0
                best_state = _snapshot(model)
                lt.save_adapter(model, run_dir / "checkpoint-best")
            else:
                bad_evals += 1
                if tc.early_stopping_patience and bad_evals >= tc.early_stopping_patience:
                    logger.message(f"early stopping at step {step}: no {metric} gain for {bad_evals} evaluations")
                    break
    train_seconds = time.perf_counter() - t0
    memory = peak_memory(device)

    # 6. final evaluation; keep the best weights if an earlier evaluation beat the end
    after = task.evaluate(model, eval_features, device) if step > 0 else before
    if best_state is not None and not _improved(after.get(metric), best_value, metric, strict=False):
        _restore(model, best_state)
        after = task.evaluate(model, eval_features, device)
        logger.message(f"kept the best checkpoint (step {best_step}, {metric} {best_value:.4f})")
    logger.log({"step": step, "eval": task.headline(after), "final": True, "train_seconds": round(train_seconds, 1),
                **memory})
    logger.close()

    # 7. save
    lt.save_adapter(model, run_dir / "adapter")
    task.finish(run_dir)
    (run_dir / "metrics.json").write_text(json.dumps(after, indent=2) + "\n")
    plot_run(run_dir / "train_log.jsonl", run_dir / "loss.png", metric)
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


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, value in state.items():
            params[n].copy_(value)
