"""Where a leantune LoRA step's time goes: SmolLM2-135M, LoRA r16 on all linear layers, the speed benchmark's
data and settings (batch 8, max_length 320), torch.profiler over ``--steps`` steps after one warm-up step.

    python benchmarks/profile_step.py     # about 2 minutes on 2 cores

ATen ops (self time) are put in parts by name and shape: the fused LM head (a GEMM with the vocabulary as one
dimension), LoRA's small GEMMs (one dimension = r), the base model's GEMMs (MLP: a dimension = the intermediate
size; the rest: attention projections), attention itself (scaled dot-product attention, forward and backward),
the optimizer (AdamW, clipping, zero_grad: everything inside the ``optimizer`` range) and data (batching, inside
``data``); what is left (norms, RoPE, SiLU, residual adds, copies, autograd bookkeeping) is ``other``. Achieved
GFLOP/s use ``gpu_check.lora_flops_per_token`` (model FLOPs of a LoRA step per real token).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import lora_flops_per_token  # noqa: E402
from speed import instruction_file, lm_config  # noqa: E402

PEAK_GFLOPS = 320.0  # fp32, 2 cores of this machine (orientation figure of issue 16)
GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def part_of(name: str, shapes: list, vocab: int, inter: int, r: int) -> str:
    """The part of the step an ATen op (with its input shapes) belongs to."""
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention (sdpa)"
    if name not in GEMMS:
        return "other (norms, RoPE, SiLU, adds, copies)"
    dims = {d for s in shapes if isinstance(s, list) for d in s}
    if vocab in dims:
        return "fused LM head GEMMs"
    if r in dims:
        return "LoRA GEMMs (r=16)"
    return "base GEMMs: MLP" if inter in dims else "base GEMMs: attention projections"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from torch.profiler import ProfilerActivity, profile, record_function

    from leantune.config import validate_config
    from leantune.system.memory import heap_trimmer
    from leantune.train.loop import accumulate_gradients, clip_gradients, epoch_batches
    from leantune.train.setup import setup_run

    cfg = validate_config(lm_config(instruction_file(Path(tempfile.mkdtemp())), args.steps + 1, args.threads))
    run = setup_run(cfg, overwrite=True, quiet=True)
    model, tc = run.model, cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    batches = epoch_batches(run.train_features, tc.batch_size, tc.seed, run.task.pad_id)
    trim = heap_trimmer(run.device)

    def step() -> tuple[int, int]:
        with record_function("data"):
            micro = [next(batches)]
        loss, tokens = accumulate_gradients(model, run.task, micro, run.device, None)
        with record_function("optimizer"):
            clip_gradients(params, 1.0)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            trim()
        return tokens, micro[0]["input_ids"].numel()

    model.train()
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        counts = [step() for _ in range(args.steps)]
        seconds = time.perf_counter() - start
    config = model.config
    parts: dict[str, float] = defaultdict(float)
    ranges = {}
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key in ("data", "optimizer"):
            ranges[ev.key] = ev.cpu_time_total
            continue
        parts[part_of(ev.key, ev.input_shapes, config.vocab_size, config.intermediate_size, 16)] += ev.self_cpu_time_total
    # the optimizer's and the data's own ops are inside their ranges: move them out of the op parts
    inside = {k: 0.0 for k in ranges}
    for ev in prof.events():
        for key in ranges:
            if _within(ev, key):
                inside[key] += ev.self_cpu_time_total
    for key, total in ranges.items():
        parts[key] = total
    parts["other (norms, RoPE, SiLU, adds, copies)"] -= sum(inside.values())
    tokens = sum(c[0] for c in counts)
    padded = sum(c[1] for c in counts)
    mean_len = padded / (args.steps * tc.batch_size)
    flops = lora_flops_per_token(config, mean_len) * tokens
    whole = sum(parts.values())
    print(f"SmolLM2-135M LoRA r16, {args.steps} steps after 1 warm-up, {args.threads} threads, fp32, load "
          f"{os.getloadavg()[0]:.1f}: {seconds:.1f} s, {tokens} real tokens ({100 * (1 - tokens / padded):.0f}% padding),"
          f" {tokens / seconds:.0f} tokens/s")
    print(f"model FLOPs {lora_flops_per_token(config, mean_len) / 1e6:.0f} MFLOP/token -> {flops / seconds / 1e9:.1f} "
          f"GFLOP/s = {100 * flops / seconds / 1e9 / PEAK_GFLOPS:.0f}% of {PEAK_GFLOPS:.0f} GFLOP/s\n")
    print("| part | share of profiled op time |\n|---|---:|")
    for name, t in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {100 * t / whole:.1f}% |")


def _within(event, key: str) -> bool:
    """Whether an op event ran inside a ``record_function(key)`` range (its parent chain reaches it)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == key:
            return True
        parent = parent.cpu_parent
    return False


if __name__ == "__main__":
    main()
