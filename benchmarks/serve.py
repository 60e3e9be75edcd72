"""Serving many adapters: ``leantune serve`` against HF peft, on SmolLM2-135M-Instruct with 8 adapters.

The adapters are LoRA and DoRA of ranks 4 to 64 on all 7 linear projections, with random non-zero weights (speed
does not depend on what they learned). Every system answers the same fixed list of requests (varied prompt and
output lengths; every request generates exactly its max_tokens) from 32 concurrent clients that each send their
next request when the last one is answered; the load stops when the list is done. Systems:

- ``leantune``: ``leantune serve`` over HTTP (in this process, uvicorn in a thread), requests spread over the
  8 adapters; continuous batching, every adapter in the same batch;
- ``leantune-base``: the same server, every request to the base model (no adapter);
- ``peft-set_adapter``: one PeftModel with the 8 adapters, one request at a time (``set_adapter`` then
  ``generate``), as a simple server does it;
- ``peft-mixed-batch``: the same PeftModel, waiting requests taken in batches of up to 32, one
  ``generate(..., adapter_names=[...])`` for the batch's LoRA rows (peft's mixed-adapter inference; a batch runs
  to its longest) and, since peft refuses DoRA in a mixed batch, one ``generate`` per DoRA adapter present.

Also ``--kernels``: the per-layer cost of applying 8 adapters to 32 rows by contiguous segments (leantune's
choice) against gathering each row's padded A/B (BGMV-style) on this CPU.

Each system runs in its own process. Usage: ``python benchmarks/serve.py [--requests 128] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, report, run_children, set_offline  # noqa: E402

ADAPTERS = [("lora", 4), ("lora", 8), ("lora", 16), ("lora", 32), ("lora", 64), ("dora", 8), ("dora", 16),
            ("dora", 32)]
SYSTEMS = ["leantune", "leantune-base", "peft-set_adapter", "peft-mixed-batch"]
SEED_TASKS = SHARED / "instructions" / "seed_tasks.jsonl"


# ------------------------------------------------------------------------------------------------ setup


def make_adapters(folder: Path) -> list[Path]:
    """Run folders (config.yaml + adapter/) for the 8 adapters on smollm2, with random non-zero B (and m)."""
    import torch

    import leantune as lt
    from leantune.config import dump_config, validate_config
    from leantune.methods.registry import method_config
    from leantune.models.loading import load_tokenizer
    from leantune.models.registry import resolve_model
    from leantune.tasks import make_task

    path = resolve_model("smollm2")
    runs = []
    for i, (method, r) in enumerate(ADAPTERS):
        run = folder / f"{method}-r{r}"
        if (run / "adapter" / "adapter_model.safetensors").is_file():
            runs.append(run)
            continue
        cfg = validate_config({"model": "smollm2", "task": "instruction", "method": method,
                               "method_args": {"r": r, "alpha": 2 * r}, "data": {"train": "unused.jsonl"},
                               "output_dir": str(run)})
        model = make_task(cfg, load_tokenizer(path), path).build_model(path)
        lt.attach(model, method_config(method, {"r": r, "alpha": 2 * r}))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.01)
                elif "magnitude" in name:
                    p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
        run.mkdir(parents=True, exist_ok=True)
        lt.save_adapter(model, run / "adapter")
        dump_config(cfg, run / "config.yaml")
        runs.append(run)
    return runs


def workload(n: int, quick: bool) -> list[dict[str, Any]]:
    """``n`` requests: (adapter index, chat-formatted prompt, max_tokens), the same for every system."""
    import random

    from leantune.models.loading import load_tokenizer
    from leantune.models.registry import resolve_model

    rng = random.Random(0)
    if SEED_TASKS.is_file():
        rows = [json.loads(line) for line in SEED_TASKS.read_text().splitlines() if line.strip()]
        texts = [r["instruction"] + ("\n\n" + r["instances"][0]["input"] if r["instances"][0]["input"] else "")
                 for r in rows]
    else:
        words = "the a cat dog house river explain write list name three reasons why how".split()
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 60))) for _ in range(200)]
    tok = load_tokenizer(resolve_model("smollm2"))
    low, high = (8, 32) if quick else (16, 96)
    out = []
    for i in range(n):
        text = texts[rng.randrange(len(texts))]
        prompt = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)
        out.append({"adapter": i % len(ADAPTERS), "prompt": prompt, "max_tokens": rng.randint(low, high)})
    return out


def closed_loop(requests: list[dict[str, Any]], clients: int, send) -> dict[str, Any]:
    """``clients`` threads take the next request as soon as their last one is answered; ``send`` returns the
    number of generated tokens (or raises)."""
    todo: queue.Queue = queue.Queue()
    for r in requests:
        todo.put(r)
    latencies, tokens, errors = [], [], []
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                r = todo.get_nowait()
            except queue.Empty:
                return
            start = time.perf_counter()
            try:
                n = send(r)
            except Exception as e:  # noqa: BLE001 - counted
                with lock:
                    errors.append(repr(e)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens.append(n)

    start, cpu_start = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    latencies.sort()
    return {
        "requests": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 2), "req_per_s": round(len(latencies) / wall, 3),
        "out_tok_per_s": round(sum(tokens) / wall, 1),
        # CPU seconds of the whole process (every thread): on a shared machine the wall clock also counts the time
        # other people's processes held the cores, this does not
        "cpu_s": round(cpu, 1), "out_tok_per_cpu_s": round(sum(tokens) / cpu, 1),
        "p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2) if latencies else None,
    }


# ------------------------------------------------------------------------------------------------ systems


def run_leantune(runs: list[Path], requests: list[dict], clients: int, base_only: bool) -> dict[str, Any]:
    import socket

    import uvicorn

    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx

    from leantune.serve.api import create_app
    from leantune.serve.server import ServeOptions, Server

    server = Server([(r.name, str(r)) for r in runs], ServeOptions(max_batch=clients, max_tokens=512))
    base = next(iter(server.registry.bases))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_server = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    while not app_server.started:
        time.sleep(0.05)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600,
                        limits=httpx.Limits(max_connections=clients + 4))

    def send(r: dict) -> int:
        model = base if base_only else runs[r["adapter"]].name
        resp = http.post("/v1/completions", json={"model": model, "prompt": r["prompt"], "max_tokens": r["max_tokens"],
                                                  "temperature": 0, "ignore_eos": True})
        resp.raise_for_status()
        return resp.json()["usage"]["completion_tokens"]

    result = closed_loop(requests, clients, send)
    steps, rows = server.metrics.steps[base], server.metrics.step_rows[base]
    result["mean_decode_batch"] = round(rows / max(steps, 1), 1)
    app_server.should_exit = True
    thread.join(60)
    return result


def _peft_model(runs: list[Path]):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from leantune.models.loading import load_tokenizer
    from leantune.models.registry import resolve_model

    path = resolve_model("smollm2")
    tok = load_tokenizer(path)
    tok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(runs[0] / "adapter"), adapter_name="a0")
    for i, run in enumerate(runs[1:], start=1):
        model.load_adapter(str(run / "adapter"), adapter_name=f"a{i}")
    return model.eval(), tok


def run_peft(runs: list[Path], requests: list[dict], clients: int, mixed: bool) -> dict[str, Any]:
    """A one-worker server around peft: requests queue up from the clients; the worker answers one at a time
    (set_adapter) or takes every waiting request, up to ``clients``, as one mixed-adapter batch."""
    import torch

    model, tok = _peft_model(runs)
    inbox: queue.Queue = queue.Queue()

    def worker() -> None:
        while True:
            first = inbox.get()
            if first is None:
                return
            batch = [first]
            while mixed and len(batch) < clients:
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                counts = _peft_generate(model, tok, [r for r, _ in batch], mixed)
                for (_, box), n in zip(batch, counts, strict=True):
                    box.put(n)
            except Exception as e:  # noqa: BLE001 - handed to the clients
                for _, box in batch:
                    box.put(e)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()

    def send(r: dict) -> int:
        box: queue.Queue = queue.Queue()
        inbox.put((r, box))
        got = box.get()
        if isinstance(got, Exception):
            raise got
        return got

    with torch.no_grad():
        result = closed_loop(requests, clients, send)
    inbox.put(None)
    return result


def _peft_generate(model, tok, batch: list[dict], mixed: bool) -> list[int]:
    """One generate() call per group: in a mixed batch the LoRA rows go together (``adapter_names``); peft refuses
    DoRA there ("Cannot pass `adapter_names` when DoRA is enabled"), so each DoRA adapter's rows form their own call."""
    import torch

    groups: dict[Any, list[dict]] = {}
    for r in batch:
        dora = ADAPTERS[r["adapter"]][0] == "dora"
        key = r["adapter"] if (dora or not mixed) else "lora"
        groups.setdefault(key, []).append(r)
    for key, rows in groups.items():
        enc = tok([r["prompt"] for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
        longest = max(r["max_tokens"] for r in rows)
        kwargs = {"max_new_tokens": longest, "min_new_tokens": longest, "do_sample": False,
                  "pad_token_id": tok.pad_token_id}
        with torch.no_grad():
            if key == "lora":
                model.generate(**enc, adapter_names=[f"a{r['adapter']}" for r in rows], **kwargs)
            else:
                model.set_adapter(f"a{key}")
                model.generate(**enc, **kwargs)
    return [r["max_tokens"] for r in batch]  # each request's own output (a batch runs to its longest)


# ------------------------------------------------------------------------------------------------ kernels


def kernels(threads: int) -> list[dict[str, Any]]:
    """Per-layer time of 8 adapters (ranks 4-64) on 32 rows: segments vs per-row gather, SmolLM2's shapes."""
    import torch

    torch.set_num_threads(threads)
    return [_layer_timing(fan_in, fan_out) for fan_in, fan_out in [(576, 576), (576, 1536), (1536, 576)]]


def _timed(fn, n: int = 200) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def _layer_timing(fan_in: int, fan_out: int, ranks: tuple[int, ...] = (4, 8, 8, 16, 16, 32, 32, 64)) -> dict:
    import torch
    import torch.nn.functional as F

    W, x = torch.randn(fan_out, fan_in) / 24, torch.randn(32, 1, fan_in)
    As = [torch.randn(r, fan_in) / 24 for r in ranks]
    Bs = [torch.randn(fan_out, r) / 8 for r in ranks]
    A_pad, B_pad = torch.zeros(8, 64, fan_in), torch.zeros(8, fan_out, 64)
    for i, (A, B) in enumerate(zip(As, Bs, strict=True)):
        A_pad[i, :A.shape[0]], B_pad[i, :, :B.shape[1]] = A, B
    idx = torch.arange(8).repeat_interleave(4)

    def segments():
        out = F.linear(x, W)
        for i, (A, B) in enumerate(zip(As, Bs, strict=True)):
            out[4 * i:4 * i + 4] += F.linear(F.linear(x[4 * i:4 * i + 4], A) * 2.0, B)
        return out

    def gather():
        xa = torch.bmm(x, A_pad[idx].transpose(1, 2)) * 2.0
        return F.linear(x, W) + torch.bmm(xa, B_pad[idx].transpose(1, 2))

    torch.testing.assert_close(segments(), gather(), atol=1e-4, rtol=1e-4)
    base = _timed(lambda: F.linear(x, W))
    return {"layer": f"{fan_in}->{fan_out}", "base_us": round(base), "segments_extra_us": round(_timed(segments) - base),
            "gather_extra_us": round(_timed(gather) - base)}


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="shorter outputs (8-32 tokens instead of 16-96)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "leantune-serve-bench"))
    parser.add_argument("--kernels", action="store_true", help="only the per-layer segments-vs-gather timing")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_offline()
    if args.kernels:
        for row in kernels(args.threads):
            print(row)
        return
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        runs = make_adapters(Path(args.workdir))
        requests = workload(args.requests, args.quick)
        if args.one.startswith("leantune"):
            result = run_leantune(runs, requests, args.clients, base_only=args.one == "leantune-base")
        else:
            result = run_peft(runs, requests, args.clients, mixed=args.one == "peft-mixed-batch")
        report(result)
        return
    make_adapters(Path(args.workdir))  # once, before the timed children
    extra = ["--requests", str(args.requests), "--clients", str(args.clients), "--threads", str(args.threads),
             "--workdir", args.workdir] + (["--quick"] if args.quick else [])
    rows = run_children(__file__, args.systems.split(","), extra)
    by_name = {r["run"]: r for r in rows}
    peer = by_name.get("peft-set_adapter", {}).get("out_tok_per_s")
    print(f"\n{args.requests} requests, {args.clients} clients, {args.threads} threads, outputs "
          f"{'8-32' if args.quick else '16-96'} tokens, SmolLM2-135M-Instruct fp32, 8 adapters (LoRA r4-64, DoRA r8-32)\n")
    print("| system | req/s | output tok/s | × set_adapter | output tok per CPU s | p50 s | p95 s | errors | "
          "mean decode batch | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['out_tok_per_s'] / peer:.2f}" if peer else "-"
        print(f"| {r['run']} | {r['req_per_s']} | {r['out_tok_per_s']} | {ratio} | {r['out_tok_per_cpu_s']} | "
              f"{r['p50_s']} | {r['p95_s']} | {r['errors']} | {r.get('mean_decode_batch', '-')} | "
              f"{r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
