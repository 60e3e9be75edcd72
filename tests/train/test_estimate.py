"""``leantune estimate``: counts, the largest micro-batch, and how each setting moves the prediction."""

from __future__ import annotations

import json

import pytest
from tiny_models import save_tiny_llama

from leantune.cli import main
from leantune.config import validate_config
from leantune.train.estimate import estimate_run

ROWS = [{"instruction": "Say something " + "long " * (i % 9), "output": "ok " * (1 + i % 5)} for i in range(40)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("est")
    folder = save_tiny_llama(tmp / "m", [r["instruction"] + r["output"] for r in ROWS])
    (tmp / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return folder, str(tmp / "d.jsonl"), tmp


def _cfg(setup, **train):
    folder, data, tmp = setup
    return validate_config({"model": folder, "task": "instruction", "data": {"train": data},
                            "train": {"batch_size": 4, "max_length": 48, **train}, "output_dir": str(tmp / "run")})


def test_estimate_parts_and_settings(setup):
    base = estimate_run(_cfg(setup))
    assert base.trainable_params < base.total_params
    assert base.batch_shape[0] == 4
    parts = base.parts_mb
    assert parts["gradients"] == pytest.approx(base.trainable_params * 4 / 2**20)
    assert parts["optimizer state (AdamW)"] == pytest.approx(2 * parts["gradients"])
    assert parts["activations saved for backward"] > 0 and base.peak_mb > parts["weights"]
    bigger = estimate_run(_cfg(setup, batch_size=8))
    assert bigger.parts_mb["activations saved for backward"] > 1.5 * parts["activations saved for backward"]
    ckpt = estimate_run(_cfg(setup, batch_size=8, activation_checkpointing=True))
    assert ckpt.parts_mb["activations saved for backward"] < bigger.parts_mb["activations saved for backward"]
    packed = estimate_run(_cfg(setup, packing=True, max_length=96))
    assert packed.batch_shape[1] > base.batch_shape[1]  # rows filled up to max_length


def test_estimate_cli(setup, capsys):
    folder, data, tmp = setup
    (tmp / "c.yaml").write_text(f"model: {folder}\ntask: instruction\ndata: {{train: {data}}}\n"
                                "train: {batch_size: 4, max_length: 48}\n")
    assert main(["estimate", str(tmp / "c.yaml"), "--set", "train.batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "predicted peak memory" in out and "largest micro-batch: 2 x" in out and "trainable" in out
