"""torch.distributed on CPU (gloo, 2 processes through torchrun): DDP and FSDP2 give the same losses and the same
whole adapter as one process with the same global batch; a killed 2-process run resumes exactly; the adapter loads
in one process and in HF peft; resuming with another world size is refused clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_models import save_tiny_bert, sentiment_rows, write_csv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    model = save_tiny_bert(tmp / "m")  # plain BERT head: no pooling-head dropout
    config = json.loads((tmp / "m" / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same maths however batches split
    (tmp / "m" / "config.json").write_text(json.dumps(config))
    data = write_csv(tmp / "train.csv", sentiment_rows(320))
    return model, data, tmp


def _config(setup, name: str, batch_size: int, strategy: str = "none", **train) -> Path:
    model, data, tmp = setup
    cfg = {"model": model, "method": "lora", "method_args": {"r": 4, "alpha": 8},
           "data": {"train": data, "eval_fraction": 0.2},
           "train": {"max_steps": 12, "batch_size": batch_size, "lr": 2e-2, "max_length": 32, "log_every": 1,
                     "eval_before": False, "num_threads": 1, "seed": 1, "save_every": 4, **train},
           "distributed": {"strategy": strategy}, "output_dir": str(tmp / f"run-{name}")}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(cfg: Path, *extra: str, nproc: int = 1, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "leantune", "train", str(cfg), "--quiet", "--nproc", str(nproc), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _run_dir(cfg: Path) -> Path:
    return Path(yaml.safe_load(cfg.read_text())["output_dir"])


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def single(setup):
    cfg = _config(setup, "single", batch_size=8)
    code, _, err = _train(cfg)
    assert code == 0, err
    return _run_dir(cfg)


@pytest.fixture(scope="module")
def two_process_run(setup):
    """``two_process_run(strategy)``: (run folder, stdout, stderr) of a 2-process run of batch 4, trained once,
    on first use, so any test that needs one can run alone."""
    done: dict[str, tuple[Path, str, str]] = {}

    def run(strategy: str) -> tuple[Path, str, str]:
        if strategy not in done:
            cfg = _config(setup, strategy, batch_size=4, strategy=strategy)
            code, out, err = _train(cfg, nproc=2)
            assert code == 0, err
            done[strategy] = (_run_dir(cfg), out, err)
        return done[strategy]

    return run


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_with_the_same_global_batch(single, two_process_run, strategy):
    run, out, err = two_process_run(strategy)
    assert out.count("run folder:") == 1  # one process reports
    one, two = _losses(single), _losses(run)
    assert sorted(one) == sorted(two) == list(range(1, 13))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
    a, b = _adapter(single), _adapter(run)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, f"{k}: a shard was saved, not the whole tensor"
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert f"x 2 processes ({strategy})" in err
    assert {p.name for p in (run / "checkpoints" / "step-0000012").iterdir()} >= {
        "optimizer-rank0.pt", "optimizer-rank1.pt", "rng-rank0.pt", "rng-rank1.pt", "trainable.safetensors"}


def test_the_adapter_loads_in_one_process_and_in_peft(setup, two_process_run):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import leantune as lt

    model_dir = setup[0]
    run, _, _ = two_process_run("ddp")  # the run of the test above, or its own when run alone
    tok = AutoTokenizer.from_pretrained(model_dir)
    batch = tok(["the film was good", "the food was bad"], return_tensors="pt", padding=True)
    ours = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    lt.load_adapter(ours, run / "adapter")
    theirs = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2),
                                       str(run / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes_exactly(setup, strategy):
    reference = _config(setup, f"ref-long-{strategy}", batch_size=4, strategy=strategy, max_steps=150, save_every=10)
    code, _, err = _train(reference, nproc=2)
    assert code == 0, err

    cfg = _config(setup, f"killed-{strategy}", batch_size=4, strategy=strategy, max_steps=150, save_every=10)
    run = _run_dir(cfg)
    proc = _train(cfg, nproc=2, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline:
        log = run / "train_log.jsonl"
        if log.is_file() and any(json.loads(x).get("step", 0) >= 25 for x in log.read_text().splitlines()
                                 if x.strip().endswith("}")):
            break
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, at once
    proc.wait()
    assert max(_losses(run)) < 150

    code, _, err = _train(cfg, "--resume", nproc=1)
    assert code == 2 and "written by 2 process(es)" in err  # another world size: a clear refusal

    code, _, err = _train(cfg, "--resume", nproc=2)
    assert code == 0, err
    ref, new = _losses(_run_dir(reference)), _losses(run)
    assert sorted(new) == sorted(ref)
    for step in ref:
        assert new[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), step
    a, b = _adapter(_run_dir(reference)), _adapter(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_two_nodes_through_a_rendezvous_endpoint(setup, single):
    """Multi-node torchrun, simulated with two 'nodes' of one process each on this machine (c10d rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(setup, "nodes", batch_size=4, strategy="ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
         "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "leantune-test",
         "-m", "leantune", "train", str(cfg), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    one, two = _losses(single), _losses(_run_dir(cfg))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
