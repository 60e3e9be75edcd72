"""How close ``leantune estimate`` comes to the peak memory a run then measures (target: within 25%).

    python benchmarks/estimate.py          # ~6 min on 2 cores

Each config is estimated in one process and trained for one full epoch (so the largest micro-batch is seen) in
another; the run's peak RSS up to the end of training is compared with the prediction.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, set_offline  # noqa: E402

SEED_TASKS = SHARED / "instructions" / "seed_tasks.jsonl"
SST2 = SHARED / "sst2" / "stsa.binary.train"


def configs(tmp: Path, threads: int) -> dict[str, dict]:
    lm = {"model": "smollm2", "task": "instruction", "method": "lora", "method_args": {"r": 16, "alpha": 32},
          "task_args": {"eval_max_examples": 0},
          "data": {"train": str(SEED_TASKS), "format": "alpaca", "eval_fraction": 25 / 175},
          "train": {"epochs": 1, "batch_size": 8, "max_length": 320, "eval_before": False,
                    "num_threads": threads}}
    sst2 = tmp / "sst2.txt"
    sst2.write_text("\n".join(SST2.read_text(encoding="utf-8").splitlines()[:1500]) + "\n", encoding="utf-8")
    cls = {"model": "minilm", "task": "classification", "method": "lora", "data": {"train": str(sst2), "format": "lines"},
           "train": {"epochs": 1, "batch_size": 32, "max_length": 128, "eval_before": False, "num_threads": threads}}
    return {
        "SmolLM2 LoRA r=16, b8 x 320": lm,
        "SmolLM2 LoRA r=16, activation checkpointing": {**lm, "train": {**lm["train"], "activation_checkpointing": True}},
        "SmolLM2 QLoRA (nf4) r=16": {**lm, "quantize": "nf4"},
        "MiniLM LoRA r=8, b32 x 128": cls,
    }


def child(mode: str, cfg_json: str) -> None:
    set_offline()
    from leantune.config import validate_config

    cfg = validate_config(json.loads(cfg_json))
    if mode == "estimate":
        from leantune.train.estimate import estimate_run

        est = estimate_run(cfg)
        print("RESULT " + json.dumps({"predicted": est.peak_mb, "parts": est.parts_mb}), flush=True)
    else:
        from leantune.train.loop import fine_tune

        result = fine_tune(cfg, overwrite=True, quiet=True)
        print("RESULT " + json.dumps({"measured": result.memory["peak_rss_mb"], "steps": result.steps}), flush=True)


def run(mode: str, cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, json.dumps(cfg)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if not (SEED_TASKS.is_file() and SST2.is_file()):
        print(f"needs {SEED_TASKS} and {SST2} (see ../shared/data/README.md); skipping.")
        return
    tmp = Path(tempfile.mkdtemp())
    print(f"python benchmarks/estimate.py\n{time.strftime('%Y-%m-%d')}, {args.threads} threads, CPU fp32\n")
    print("| config | predicted peak MB | measured peak RSS MB | predicted / measured |\n|---|---:|---:|---:|")
    for name, cfg in configs(tmp, args.threads).items():
        cfg = {**cfg, "output_dir": str(tmp / "run")}
        est = run("estimate", cfg)
        got = run("train", cfg)
        print(f"| {name} | {est['predicted']:.0f} | {got['measured']:.0f} | {est['predicted'] / got['measured']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
