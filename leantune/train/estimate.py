"""``leantune estimate``: parameters, trainable parameters and the predicted peak memory of a run, before it runs.

The prediction adds up what a training step holds at its peak:

* the process before the model (Python, torch, transformers, tokenizer, tokenised data), measured here;
* weights (quantized layers at their packed size), gradients of the trainable parameters, AdamW's two moments;
* activations: the tensors autograd saves for the backward pass of the *largest* micro-batch of the data (the
  longest ``batch_size`` examples, or full packed rows), counted by running that forward pass once with
  saved-tensor hooks (views and shared storages once, parameters not at all). With activation checkpointing, the
  block inputs plus one block's saved tensors, which the recompute re-creates;
* the backward pass's transient: the gradient of the largest saved tensor (full logits when the head is not fused),
  or the fused head's logit chunk.

The forward pass runs the real model on the real batch, so every method, architecture and task is covered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

import leantune as lt
from leantune.config import RunConfig
from leantune.data.batching import pad_batch
from leantune.data.packing import pack_examples
from leantune.models.quantize import is_quantized_layer
from leantune.system.device import autocast_dtype
from leantune.system.memory import current_rss_mb
from leantune.tasks.base import Task
from leantune.train.activation_checkpointing import transformer_blocks
from leantune.train.setup import load_task, prepare_model, setup_process

MB = 2**20
# Resident memory exceeds the live tensors of a step: glibc's heap keeps freed activation memory and fragments
# (a CPU process's RSS grows over the first steps), CUDA's caching allocator rounds and caches blocks. Factors
# calibrated on benchmarks/estimate.py's runs, applied to what a step allocates (activations and transients).
ALLOCATOR_OVERHEAD = {"cpu": 1.45, "cuda": 1.1}
CHECKPOINT_HEAP_SHARE = 0.55


@dataclass
class Estimate:
    total_params: int
    trainable_params: int
    batch_shape: tuple[int, int]
    parts_mb: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def peak_mb(self) -> float:
        return sum(self.parts_mb.values())


def estimate_run(cfg: RunConfig) -> Estimate:
    """Predict the peak memory of ``fine_tune(cfg)`` on this machine's device (see the module docstring). The run's
    own setup builds the task, data and model."""
    tc = cfg.train
    device = setup_process(tc)
    model_path, task = load_task(cfg)
    train_features, _ = task.prepare()
    runtime_mb = (current_rss_mb() or 0.0) if device.type == "cpu" else 0.0
    model, _ = prepare_model(cfg, task, model_path, device, checkpointing=False)
    trainable, total = lt.trainable_parameters(model)
    batch = _largest_batch(train_features, tc.batch_size, task.pad_id, tc.max_length if tc.packing else None)
    shape = tuple(batch["input_ids"].shape)
    saved, blocks, largest = _saved_bytes(model, task, {k: v.to(device) for k, v in batch.items()},
                                          autocast_dtype(tc.precision, device), device)
    notes = []
    overhead = ALLOCATOR_OVERHEAD.get(device.type, 1.1)
    if tc.activation_checkpointing:
        hidden = model.config.get_text_config().hidden_size
        inputs = len(transformer_blocks(model)) * shape[0] * shape[1] * hidden * 4
        activations = (saved - sum(blocks) + inputs + max(blocks, default=0)) * overhead
        # the recompute allocates and frees a whole forward's activations again, block by block; a CPU heap keeps
        # about half of that resident (measured); a GPU's caching allocator reuses it
        activations += saved * (CHECKPOINT_HEAP_SHARE if device.type == "cpu" else 0.0)
        notes.append("activation checkpointing: block inputs + one block's saved tensors + the recompute's heap")
    else:
        activations = saved * overhead
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    grads = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    head = task.fused_head_bytes(model, shape[0] * shape[1])
    transient = max(largest, head)
    if any(is_quantized_layer(m) for m in model.modules()):
        biggest = max(m.in_features * m.out_features * 4 for m in model.modules() if is_quantized_layer(m))
        transient += biggest
        notes.append("quantized base: one layer's weight is dequantised at a time")
    notes.append(f"activations and transients include x{overhead} for the {device.type} allocator's caching")
    parts = {
        "runtime (python, libraries, data)": runtime_mb,
        "weights": weights / MB,
        "gradients": grads / MB,
        "optimizer state (AdamW)": 2 * grads / MB,
        "activations saved for backward": activations / MB,
        "backward transient": transient * overhead / MB,
    }
    return Estimate(total, trainable, shape, parts, notes)


def _largest_batch(features: list[dict], batch_size: int, pad_id: int, pack_length: int | None) -> dict:
    rows = pack_examples(features, pack_length, seed=0) if pack_length else features
    longest = sorted(rows, key=lambda f: -len(f["input_ids"]))[:batch_size]
    return pad_batch(longest, pad_id)


def _saved_bytes(model: nn.Module, task: Task, batch: dict[str, torch.Tensor], amp_dtype: torch.dtype | None,
                 device: torch.device) -> tuple[int, list[int], int]:
    """(bytes saved for backward, bytes saved inside each transformer block, the largest saved tensor)."""
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    skip |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    seen: dict[int, int] = {}
    blocks = transformer_blocks(model)
    per_block = [0] * len(blocks)
    current: list[int | None] = [None]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in skip and ptr not in seen:
            seen[ptr] = storage.nbytes()
            if current[0] is not None:
                per_block[current[0]] += storage.nbytes()
        return t

    def enter(i: int):
        return lambda *_: current.__setitem__(0, i)

    handles = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(lambda *_: current.__setitem__(0, None)) for b in blocks]
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = task.batch_loss(model, batch)
        del loss
    finally:
        for h in handles:
            h.remove()
    return sum(seen.values()), per_block, max(seen.values(), default=0)


def format_estimate(cfg: RunConfig, est: Estimate) -> str:
    """The estimate as the CLI prints it."""
    lines = [
        f"model {cfg.model}, {cfg.method} ({cfg.task}): {est.total_params:,} parameters, "
        f"{est.trainable_params:,} trainable ({100 * est.trainable_params / max(est.total_params, 1):.3f}%)",
        f"largest micro-batch: {est.batch_shape[0]} x {est.batch_shape[1]} tokens",
    ]
    width = max(len(k) for k in est.parts_mb)
    lines += [f"  {k:<{width}}  {v:>9,.0f} MB" for k, v in est.parts_mb.items()]
    lines.append(f"  {'predicted peak memory':<{width}}  {est.peak_mb:>9,.0f} MB")
    lines += [f"  note: {n}" for n in est.notes]
    return "\n".join(lines)
