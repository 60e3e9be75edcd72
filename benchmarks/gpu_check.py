"""GPU check: one script that one 8-minute run on one GPU (an H200) completes, and prints a markdown report.

    python benchmarks/gpu_check.py                       # on the GPU: about 5 minutes
    python benchmarks/gpu_check.py --device cpu --tiny   # dry mode: the same code paths on tiny random models

1. The environment: versions, the GPU, and what is missing (the script stops with a list of wheels to carry).
2. The test suite's device-agnostic tests (``TEST_FILES``, not ``slow``) on the GPU machine: leantune picks the GPU
   itself (``pick_device``), so every test that trains through the loop trains on CUDA there. The dry mode only
   collects the first of them.
3. leantune against peft + the transformers Trainer configured competently (base weights in bf16, ``bf16=True``,
   ``train_sampling_strategy="group_by_length"``, ``use_cache=False``, batches padded to their longest example),
   on SmolLM2-135M, Gemma 3 270M and a 1B-class Llama (Llama 3.2 1B's shape), each built from its config with
   random weights (no downloads; speed and memory do not depend on the values): real tokens/s (step 1 is warm-up,
   the clock reads after every optimizer step, tokens counted by a forward pre-hook: ``speed.StepClock``), peak
   CUDA memory, and model FLOPs utilisation against ``PEAK_TFLOPS`` (790, measured bf16 dense on one H200).
   leantune runs two ways: as a run does today (fp32 weights, bf16 autocast) and with the base in bf16 (adapters
   fp32). Its step is the loop's own: ``accumulate_gradients`` with the instruction task's loss (the LM head fused
   with the cross-entropy, response tokens only), ``clip_gradients``, AdamW, linear schedule.
4. The fused head alone (``linear_cross_entropy``) against logits + ``F.cross_entropy``: agreement, time, memory.
5. QLoRA through bitsandbytes (NF4 base, LoRA r16) on SmolLM2, if its wheel runs; else the reason.
6. The precision policy: a bf16 checkpoint trained a few LoRA steps in each ``train.precision`` (auto, fp32, bf16,
   fp16 with its loss scaler): the dtypes of base, adapter and optimizer state, steps and fp16 overflows, the loss.
7. FSDP2 on one device: a process group of one, ``fully_shard`` per block and at the root (as
   ``distributed.strategy: fsdp`` does), three steps, the adapter gathered and saved.

Needs on the GPU machine: torch with CUDA, transformers >= 4.56, peft, and leantune's own dependencies that a bare
PyTorch image lacks (pydantic and its pydantic-core, annotated-types, typing-inspection; pyyaml, rich, tqdm,
safetensors); pytest for section 2; bitsandbytes for section 5 (optional). README: "Running the GPU check" says how
to carry their wheels.

Model FLOPs of a LoRA step, per real token (``lora_flops_per_token``): 2N forward + 2N backward to the activations
for the N weights of the linear layers (the frozen base has no weight gradients; LoRA's own GEMMs, r=16, add ~2%
and are not counted), plus causal attention 6 * layers * mean length * attention width (forward and the two
backward products). The LM head counts over every token (the fused head computes it for response tokens only, so
leantune's MFU is if anything understated).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import StepClock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEAK_TFLOPS = 790.0  # bf16 dense, measured on one H200
NEEDED = ["torch", "transformers", "peft", "pydantic", "yaml", "rich", "tqdm", "safetensors"]
OPTIONAL = {"pytest": "section 2 (tests)", "bitsandbytes": "section 5 (QLoRA)"}
TEST_FILES = ["tests/kernels", "tests/methods", "tests/test_adapters.py", "tests/test_peft_parity.py",
              "tests/train/test_loop.py", "tests/train/test_activation_checkpointing.py", "tests/train/test_checkpoints.py",
              "tests/train/test_precision.py"]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ------------------------------------------------------------------------------------------------- 1. environment
def check_environment(device: str) -> list[str]:
    """Versions and the device; stops with the wheels to carry when a needed package is missing."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"gpu_check: missing {', '.join(missing)}. Carry their wheels (README: Running the GPU check) and "
                 "`pip install --no-deps --no-index --find-links wheels/ ...`.")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda but torch sees no GPU (use --device cpu --tiny for the dry mode)")
    lines = ["## Environment", ""]
    for m in [*NEEDED, *OPTIONAL]:
        try:
            lines.append(f"- {m} {getattr(importlib.import_module(m), '__version__', '?')}")
        except Exception as e:  # noqa: BLE001 - an optional package that does not import is reported, not fatal
            lines.append(f"- {m}: not usable ({type(e).__name__}: {str(e)[:120]})"
                         + (f" - skips {OPTIONAL[m]}" if m in OPTIONAL else ""))
    if device == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
    return lines


# ------------------------------------------------------------------------------------------------- 2. tests
def run_tests(tiny: bool, budget_s: int) -> list[str]:
    """pytest on TEST_FILES (not slow) within ``budget_s``; the dry mode collects only."""
    if importlib.util.find_spec("pytest") is None:
        return ["## Tests", "", "skipped: pytest is not installed"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *TEST_FILES]
    cmd = cmd[:-len(TEST_FILES)] + [TEST_FILES[0], "--collect-only"] if tiny else [*cmd, "-x"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget_s)
        tail = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
        status = f"exit {proc.returncode}: {tail[0]}"
        if proc.returncode:
            status += "\n\n```\n" + proc.stdout[-2500:] + "\n```"
    except subprocess.TimeoutExpired:
        status = f"stopped after the budget of {budget_s} s"
    return ["## Tests", "", f"`{' '.join(cmd[1:])}` ({time.perf_counter() - start:.0f} s): {status}"]


# ------------------------------------------------------------------------------------------------- models and data
def model_configs(tiny: bool) -> dict[str, Any]:
    """SmolLM2-135M, Gemma 3 270M and Llama 3.2 1B's shapes (tiny: the same classes, 2 small layers)."""
    from transformers import Gemma3TextConfig, LlamaConfig

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=512, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16) if tiny else {}
    return {
        "SmolLM2-135M": LlamaConfig(**{**dict(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
            vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True), **small}),
        "Gemma-3-270M": Gemma3TextConfig(**{**dict(
            hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
            head_dim=256, vocab_size=262144, max_position_embeddings=32768, sliding_window=512,
            query_pre_attn_scalar=256, tie_word_embeddings=True), **small}),
        "Llama-1B (3.2 shape)": LlamaConfig(**{**dict(
            hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
            num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
            tie_word_embeddings=True), **small}),
    }


def build_model(config: Any, device: str, dtype: Any) -> Any:
    """A causal LM with random weights, made directly on ``device`` in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config.use_cache = False
    config.pad_token_id = 0
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    return model


def examples(n: int, max_length: int, vocab: int, seed: int = 0) -> list[dict]:
    """Instruction-like examples: lengths from max_length/8 to max_length, the first third a prompt (label -100)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(max_length // 8, max_length)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = length // 3
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * prompt + ids[prompt:]})
    return out


def lora_flops_per_token(config: Any, mean_length: float) -> float:
    """Model FLOPs of one LoRA training step per token (module docstring)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    linear = layers * (h * (q + 2 * kv) + q * h + 3 * h * config.intermediate_size) + h * config.vocab_size
    return 4 * linear + 6 * layers * mean_length * q


# ------------------------------------------------------------------------------------------------- 3. the sides
def decoder_loss() -> Any:
    """The instruction task's loss (``GenerativeTask.batch_loss``: the head fused with the cross-entropy, response
    tokens only) for a decoder-only model without a tokenizer: what ``accumulate_gradients`` calls."""
    from leantune.tasks.generative import GenerativeTask

    class DecoderLoss:
        seq2seq = False
        batch_loss = GenerativeTask.batch_loss
        batch_count = GenerativeTask.batch_count
        _outputs_and_targets = GenerativeTask._outputs_and_targets

    return DecoderLoss()


def leantune_steps(model: Any, data: list[dict], batch_size: int, steps: int, device: str,
                   clock: StepClock | None = None) -> float:
    """The model (LoRA attached) trained ``steps`` steps by the loop's own step; returns the last loss."""
    import torch

    from leantune.data.batching import iterate_batches, length_grouped_batches
    from leantune.system.device import autocast_dtype
    from leantune.train.loop import accumulate_gradients, clip_gradients
    from leantune.train.optim import build_optimizer, build_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(model, 2e-4, 0.01)
    sched = build_scheduler(opt, steps, 0, "linear")
    if clock is not None:
        opt.register_step_post_hook(clock.tick)
    batches = iterate_batches(data, length_grouped_batches([len(f["input_ids"]) for f in data], batch_size, seed=0), 0)
    amp = autocast_dtype("auto", torch.device(device))
    model.train()
    loss, task = float("nan"), decoder_loss()
    for _ in range(steps):
        loss, _ = accumulate_gradients(model, task, [next(batches)], torch.device(device), amp)
        clip_gradients(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return loss


def attach_lora(model: Any, adapters_fp32: bool) -> Any:
    import leantune as lt

    lt.attach(model, lt.LoraConfig(r=16, alpha=32, target_modules=LORA_TARGETS))
    if adapters_fp32:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model


def peer_steps(model: Any, data: list[dict], batch_size: int, steps: int, device: str,
               sync: Any = None) -> StepClock:
    """peft LoRA r16 + Trainer: bf16 autocast on a GPU, length-grouped batches padded to their longest example."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    clock = StepClock(model, sync)

    class Tick(TrainerCallback):
        def on_optimizer_step(self, *_: Any, **__: Any) -> None:
            clock.tick()

    def pad(rows: list[dict]) -> dict:
        longest = max(len(r["input_ids"]) for r in rows)
        return {k: torch.tensor([r[k] + [fill] * (longest - len(r[k])) for r in rows])
                for k, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100))}

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size, learning_rate=2e-4, max_steps=steps,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0, save_strategy="no",
        report_to=[], logging_steps=10_000, use_cpu=device == "cpu", bf16=device == "cuda", seed=0, disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=False, train_sampling_strategy="group_by_length",
    )
    Trainer(model=model, args=args, train_dataset=data, data_collator=pad, callbacks=[Tick()]).train()
    return clock


def compare(configs: dict[str, Any], device: str, tiny: bool) -> list[str]:
    """Section 3: every model, the peer and leantune's two ways, one after the other in this process."""
    import torch

    batch, max_length, steps = (2, 32, 2) if tiny else (8, 1024, 12)
    lines = ["## leantune vs peft + Trainer (bf16, LoRA r16 all linear)", "",
             f"batch {batch}, lengths {max_length // 8}-{max_length}, {steps} steps (1 warm-up), random weights", "",
             "| model | run | real tokens/s | peak MB (CUDA; RSS on CPU) | MFU | × peer tokens/s | × peer memory |",
             "|---|---|---:|---:|---:|---:|---:|"]
    bf16 = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else None
    for name, config in configs.items():
        data = examples(batch * (steps + 1), max_length, config.vocab_size)
        flops = lora_flops_per_token(config, sum(len(f["input_ids"]) for f in data) / len(data))
        rows = {}
        for run in ("peft + Trainer (bf16 base)", "leantune (fp32 weights, bf16 autocast)",
                    "leantune (bf16 base, fp32 adapters)"):
            reset_memory(device)
            model = build_model(config, device, torch.float32 if "fp32 weights" in run else bf16)
            try:
                if run.startswith("peft"):
                    clock = peer_steps(model, data, batch, steps, device, sync)
                else:
                    model = attach_lora(model, "bf16 base" in run)
                    clock = StepClock(model, sync)
                    leantune_steps(model, data, batch, steps, device, clock)
                rows[run] = {**clock.summary(), "peak_mb": peak_mb(device)}
            except Exception as e:  # noqa: BLE001 - one failing run is a row with its error; the check goes on
                rows[run] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            del model
            reset_memory(device)
        peer = rows["peft + Trainer (bf16 base)"]
        for run, r in rows.items():
            if "error" in r:
                lines.append(f"| {name} | {run} | failed: {r['error']} | | | | |")
                continue
            mfu = r["tokens_per_s"] * flops / (PEAK_TFLOPS * 1e12)
            ratio = (f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f} | {r['peak_mb'] / peer['peak_mb']:.2f}"
                     if "error" not in peer and peer["peak_mb"] else "- | -")
            lines.append(f"| {name} | {run} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | {100 * mfu:.1f}% | {ratio} |")
    return lines


def reset_memory(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    from leantune.system.memory import peak_rss_mb

    return peak_rss_mb()


# ------------------------------------------------------------------------------------------------- 4. fused head
def fused_head(config: Any, device: str, tiny: bool) -> list[str]:
    """linear_cross_entropy against logits + F.cross_entropy on the model's head shape: loss, gradient, time, memory."""
    import torch
    import torch.nn.functional as F

    from leantune.kernels.linear_cross_entropy import linear_cross_entropy

    tokens = 256 if tiny else 8192
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator(device).manual_seed(0)
    weight = (torch.randn(config.vocab_size, config.hidden_size, device=device, generator=g) * 0.02).to(dtype)
    hidden0 = torch.randn(tokens, config.hidden_size, device=device, generator=g).to(dtype)
    targets = torch.randint(0, config.vocab_size, (tokens,), device=device, generator=g)
    results = {}
    for name in ("plain", "fused"):
        hidden = hidden0.clone().requires_grad_(True)
        reset_memory(device)
        base = torch.cuda.memory_allocated() if device == "cuda" else 0
        start = time.perf_counter()
        if name == "plain":
            loss = F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")
        else:
            loss = linear_cross_entropy(hidden, weight, targets)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        extra = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else float("nan")
        results[name] = (float(loss), hidden.grad.float(), seconds, extra)
    rel = abs(results["fused"][0] - results["plain"][0]) / abs(results["plain"][0])
    grad = float((results["fused"][1] - results["plain"][1]).norm() / results["plain"][1].norm())
    return ["## Fused head", "", f"{tokens} tokens x vocab {config.vocab_size}, {str(dtype).removeprefix('torch.')}: "
            f"loss rel. diff {rel:.1e}, gradient rel. diff {grad:.1e}; plain {results['plain'][2] * 1e3:.1f} ms / "
            f"{results['plain'][3]:.0f} MB transient, fused {results['fused'][2] * 1e3:.1f} ms / "
            f"{results['fused'][3]:.0f} MB (first calls, one each)"]


# ------------------------------------------------------------------------------------------------- 5. QLoRA
def qlora(config: Any, device: str, tiny: bool) -> list[str]:
    """NF4 base through bitsandbytes + leantune LoRA: a few steps' tokens/s and peak memory, or why not."""
    import torch

    lines = ["## QLoRA (bitsandbytes NF4)", ""]
    try:
        import bitsandbytes  # noqa: F401

        from leantune.models.quantize import quantize_model

        batch, max_length, steps = (2, 32, 2) if tiny else (8, 1024, 6)
        reset_memory(device)
        model = build_model(config, "cpu", torch.float32)
        report = quantize_model(model, "nf4", "bitsandbytes")
        model = attach_lora(model.to(device), adapters_fp32=True)
        clock = StepClock(model, torch.cuda.synchronize if device == "cuda" else None)
        loss = leantune_steps(model, examples(batch * (steps + 1), max_length, config.vocab_size), batch, steps,
                              device, clock)
        s = clock.summary()
        lines.append(f"{report['layers']} layers NF4: {s['tokens_per_s']:.0f} real tokens/s, peak "
                     f"{peak_mb(device):.0f} MB, last loss {loss:.3f}")
    except Exception as e:  # noqa: BLE001 - bitsandbytes may not run here: say why
        lines.append(f"not run: {type(e).__name__}: {str(e)[:300]}")
    return lines


# ------------------------------------------------------------------------------------------------- 6. precision
def precision_policy(config: Any, device: str, tiny: bool) -> list[str]:
    """A bf16 checkpoint trained a few LoRA steps in each ``train.precision`` as a run applies it: the base cast
    to the compute dtype, the adapter upcast to fp32, autocast, and for fp16 the loss scaler (unscale, clip, step,
    overflows skipped)."""
    import torch

    from leantune.data.batching import pad_batch
    from leantune.system.device import autocast_dtype, resolve_precision
    from leantune.train.loop import accumulate_gradients, apply_gradients
    from leantune.train.optim import build_optimizer
    from leantune.train.precision import cast_base, grad_scaler, upcast_trainable

    batch, max_length, steps = (2, 32, 3) if tiny else (8, 512, 12)
    dev = torch.device(device)
    lines = ["## Precision (a bf16 checkpoint, LoRA r16)", "",
             "| precision | resolved | base | trainable | optimizer state | steps / overflows | loss scale | last loss |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for precision in ("auto", "fp32", "bf16", "fp16"):
        try:
            resolved = resolve_precision(precision, dev)
            model = build_model(config, device, torch.bfloat16)
            cast_base(model, precision, dev)
            model = attach_lora(model, adapters_fp32=False)
            upcast_trainable(model)
            params = [p for p in model.parameters() if p.requires_grad]
            opt, scaler = build_optimizer(model, 2e-4, 0.01), grad_scaler(resolved, dev)
            amp = autocast_dtype(resolved, dev)
            data = examples(batch * steps * 4, max_length, config.vocab_size)
            rows = iter([data[i:i + batch] for i in range(0, len(data), batch)])
            outcomes, loss = [], float("nan")
            while outcomes.count("step") < steps and len(outcomes) < 4 * steps:
                micro = [pad_batch(next(rows), 0)]
                loss, _ = accumulate_gradients(model, decoder_loss(), micro, dev, amp, None, scaler)
                outcomes.append(apply_gradients(opt, scaler, params, 1.0, loss)[0])
            dtypes = [{str(t.dtype).removeprefix("torch.") for t in ts}
                      for ts in ([p for p in model.parameters() if not p.requires_grad], params,
                                 [v for st in opt.state.values() for v in st.values() if v.dim() > 0])]
            scale = f"{scaler.get_scale():.0f}" if scaler.is_enabled() else "-"
            names = [", ".join(sorted(d)) for d in dtypes]
            lines.append(f"| {precision} | {resolved} | {names[0]} | {names[1]} | {names[2]} | "
                         f"{outcomes.count('step')} / {outcomes.count('overflow')} | {scale} | {loss:.3f} |")
            del model, opt
        except Exception as e:  # noqa: BLE001 - a precision this device refuses is a row with its reason
            lines.append(f"| {precision} | failed: {type(e).__name__}: {str(e)[:200]} | | | | | | |")
        reset_memory(device)
    return lines


# ------------------------------------------------------------------------------------------------- 7. FSDP2
def fsdp_smoke(config: Any, device: str) -> list[str]:
    """A process group of one; fully_shard per block and at the root; three steps; the adapter gathered."""
    import torch
    import torch.distributed as torch_dist

    lines = ["## FSDP2 on one device", ""]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    try:
        from torch.distributed.fsdp import fully_shard

        import leantune as lt
        from leantune.train.activation_checkpointing import transformer_blocks

        torch_dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
        model = attach_lora(build_model(config, device, torch.float32), adapters_fp32=False)
        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
        loss = leantune_steps(model, examples(6, 32, config.vocab_size), 2, 3, device)
        out = Path(tempfile.mkdtemp()) / "adapter"
        lt.save_adapter(model, out)
        lines.append(f"3 steps, last loss {loss:.3f} (finite: {loss == loss}); adapter saved whole: "
                     f"{sorted(p.name for p in out.iterdir())}")
    except Exception as e:  # noqa: BLE001 - the smoke test reports its failure as its result
        lines.append(f"FAILED: {type(e).__name__}: {str(e)[:300]}")
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny random models, few steps (the dry mode)")
    parser.add_argument("--test-budget", type=int, default=150, help="seconds for section 2")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    start = time.perf_counter()
    lines = [f"# gpu_check ({args.device}{', tiny' if args.tiny else ''})", "", *check_environment(args.device), ""]
    import torch

    if args.device == "cpu":
        torch.set_num_threads(2)
    lines += [*run_tests(args.tiny, args.test_budget), ""]
    configs = model_configs(args.tiny)
    lines += [*compare(configs, args.device, args.tiny), ""]
    smol = configs["SmolLM2-135M"]
    lines += [*fused_head(configs["Gemma-3-270M"], args.device, args.tiny), ""]
    lines += [*qlora(smol, args.device, args.tiny), ""]
    lines += [*precision_policy(smol, args.device, args.tiny), ""]
    lines += [*fsdp_smoke(smol, args.device), "", f"total {time.perf_counter() - start:.0f} s"]
    report = "\n".join(lines)
    print(report, flush=True)
    if args.out:
        args.out.write_text(report + "\n")
    return report


if __name__ == "__main__":
    main()
