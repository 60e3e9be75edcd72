"""Never lose a run: SIGKILL + resume equals an uninterrupted run, SIGTERM checkpoints and says how to resume,
corrupt checkpoints are skipped, NaN steps are skipped then stop the run, the same seed gives the same run."""

from __future__ import annotations

import json
import os
import random
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

from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.train import loop
from leantune.train.loop import fine_tune


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    model = save_tiny_bert(tmp / "m", pooling="mean")
    data = write_csv(tmp / "train.csv", sentiment_rows(600))
    return model, data, tmp


def _raw(setup, out: str, **train) -> dict:
    model, data, tmp = setup
    return {
        "model": model, "method": "lora", "method_args": {"r": 4, "alpha": 8, "dropout": 0.1},  # dropout: RNG
        "data": {"train": data, "eval_fraction": 0.2},
        "train": {"max_steps": 40, "batch_size": 8, "lr": 5e-3, "max_length": 32, "log_every": 1, "save_every": 5,
                  "eval_before": False, "num_threads": 1, "seed": 3, **train},
        "output_dir": str(tmp / out),
    }


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "skipped" not in r}


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _assert_same_adapter(a: Path, b: Path) -> None:
    ta, tb = _adapter(a), _adapter(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-6, msg=k)


def _start(cfg_file: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "leantune", "train", str(cfg_file), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    log = run / "train_log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}: {proc.stderr.read()[-2000:]}")
        if log.is_file() and any(json.loads(x).get("step", 0) >= step for x in log.read_text().splitlines()
                                 if x.strip().endswith("}")):
            return
        time.sleep(0.005)
    raise AssertionError(f"no step {step} within {timeout} s")


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_equals_an_uninterrupted_run(setup):
    reference = fine_tune(validate_config(_raw(setup, "reference", max_steps=400)), quiet=True)

    raw = _raw(setup, "killed", max_steps=400)
    cfg_file = setup[2] / "killed.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    kill_at = random.Random(raw["train"]["seed"]).randint(8, 120)  # the run's seed: a failure can be replayed
    print(f"killing the run at step {kill_at} (train.seed {raw['train']['seed']})")
    proc = _start(cfg_file)
    _wait_for_step(Path(raw["output_dir"]), kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_log = _losses(Path(raw["output_dir"]))
    print(f"killed after step {max(killed_log)}")
    assert max(killed_log) < 400, "the run finished before it was killed"

    resumed = fine_tune(validate_config(raw), quiet=True, resume=True)
    rows = [json.loads(x) for x in (resumed.run_dir / "train_log.jsonl").read_text().splitlines()]
    resumed_from = next(r["step"] for r in rows if "resumed_from" in r)
    assert 5 <= resumed_from <= max(killed_log) and resumed_from % 5 == 0
    _assert_same_adapter(resumed.run_dir, reference.run_dir)
    ref_losses, new_losses = _losses(reference.run_dir), _losses(resumed.run_dir)
    assert sorted(new_losses) == sorted(ref_losses)  # every step logged once, none lost or doubled
    for step in range(resumed_from + 1, 401):
        assert new_losses[step] == pytest.approx(ref_losses[step], rel=1e-6, abs=1e-7), step
    assert resumed.after["accuracy"] == reference.after["accuracy"]


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_says_how_to_resume(setup):
    raw = _raw(setup, "term", max_steps=400, save_every=None)
    cfg_file = setup[2] / "term.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    proc = _start(cfg_file)
    _wait_for_step(Path(raw["output_dir"]), 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    run = Path(raw["output_dir"])
    latest = (run / "checkpoints" / "latest").read_text().strip()
    step = int(latest.removeprefix("step-"))
    assert max(_losses(run)) == step  # the checkpoint is of the last finished step
    proc = _start(cfg_file, "--resume", "--set", "train.max_steps=" + str(step + 5))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert max(_losses(run)) == step + 5


def test_corrupt_checkpoint_is_detected_and_the_previous_one_used(setup, capsys, tmp_path):
    import shutil

    raw = _raw(setup, "corrupt", max_steps=20, keep_last=3)
    first = fine_tune(validate_config(raw), quiet=True)
    shutil.copytree(first.run_dir / "adapter", tmp_path / "reference" / "adapter")
    ckpts = sorted(p.name for p in (first.run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-0000010", "step-0000015", "step-0000020"]
    assert (first.run_dir / "checkpoints" / "latest").read_text().strip() == "step-0000020"
    target = first.run_dir / "checkpoints" / "step-0000020" / "trainable.safetensors"
    target.write_bytes(target.read_bytes()[:-100])  # truncated, as by a full disk
    for name in ("adapter", "optimizer-rank0.pt", "rng-rank0.pt", "state.json", "manifest.json"):
        assert (first.run_dir / "checkpoints" / "step-0000015" / name).exists()
    capsys.readouterr()
    resumed = fine_tune(validate_config(raw), quiet=True, resume=True)  # steps 16-20 again, from step 15
    err = capsys.readouterr().err
    assert "step-0000020 is corrupt" in err and "trainable.safetensors" in err
    rows = [json.loads(x) for x in (resumed.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert next(r["resumed_from"] for r in rows if "resumed_from" in r) == "step-0000015"
    _assert_same_adapter(resumed.run_dir, tmp_path / "reference")


def test_resume_refuses_what_it_cannot_continue(setup, tmp_path):
    raw = _raw(setup, "refuse", max_steps=6)
    with pytest.raises(LeantuneError, match="nothing to resume"):
        fine_tune(validate_config(raw), quiet=True, resume=True)
    fine_tune(validate_config(raw), quiet=True)
    changed = {**raw, "train": {**raw["train"], "lr": 1e-3}}
    with pytest.raises(LeantuneError, match=r"train\.lr"):
        fine_tune(validate_config(changed), quiet=True, resume=True)
    more = {**raw, "train": {**raw["train"], "max_steps": 8}}  # a longer run continues from the end
    result = fine_tune(validate_config(more), quiet=True, resume=True)
    assert result.steps == 8


def test_nan_steps_are_skipped_then_the_run_stops(setup, monkeypatch, capsys):
    """Step 3 gets a NaN loss, step 4 a finite loss with NaN gradients: neither may touch the weights."""
    real = loop.accumulate_gradients
    calls, before_skip, unchanged = {"n": 0}, {}, []

    def trainable(model) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def sometimes_nan(model, *args, **kwargs):
        if before_skip:  # the first backward after a skipped step sees the weights the skipped step saw
            now = trainable(model)
            unchanged.append(all(torch.equal(now[n], before_skip[n]) for n in before_skip))
            before_skip.clear()
        loss, tokens = real(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in (3, 4):
            before_skip.update(trainable(model))
        if calls["n"] == 3:
            return float("nan"), tokens
        if calls["n"] == 4:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
        return loss, tokens

    monkeypatch.setattr(loop, "accumulate_gradients", sometimes_nan)
    result = fine_tune(validate_config(_raw(setup, "nan", max_steps=10)), quiet=True)
    assert result.steps == 10
    assert unchanged == [True, True]  # neither skipped step changed a trainable weight
    rows = [json.loads(x) for x in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r.get("skipped")) == 2
    assert "not finite" in capsys.readouterr().err
    assert all(torch.isfinite(t).all() for t in _adapter(result.run_dir).values())

    monkeypatch.setattr(loop, "accumulate_gradients", lambda *a, **k: (float("inf"), 1))
    with pytest.raises(LeantuneError, match="training diverged: 3 steps"):
        fine_tune(validate_config(_raw(setup, "inf", max_steps=10, max_nonfinite_steps=3)), quiet=True)


def test_same_config_and_seed_give_the_same_run(setup):
    a = fine_tune(validate_config(_raw(setup, "det-a", max_steps=15)), quiet=True)
    b = fine_tune(validate_config(_raw(setup, "det-b", max_steps=15)), quiet=True)
    assert a.after == b.after
    ta, tb = _adapter(a.run_dir), _adapter(b.run_dir)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert _losses(a.run_dir) == _losses(b.run_dir)
