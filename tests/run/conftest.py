"""One small finished run (tiny BERT, LoRA, 4 steps with checkpoints and evaluations) shared by the run tests."""

from __future__ import annotations

import pytest
from tiny_models import save_tiny_bert, sentiment_rows, write_csv

from leantune.config import validate_config
from leantune.train.loop import fine_tune


@pytest.fixture(scope="package")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = validate_config({"model": save_tiny_bert(tmp / "m", pooling="mean"), "method": "lora",
                           "method_args": {"r": 2},
                           "data": {"train": write_csv(tmp / "train.csv", sentiment_rows(64)), "eval_fraction": 0.25},
                           "train": {"max_steps": 4, "batch_size": 8, "max_length": 24, "num_threads": 1, "lr": 0.05,
                                     "eval_every": 2, "save_every": 2, "log_every": 1},
                           "output_dir": str(tmp / "run")})
    return fine_tune(cfg, quiet=True).run_dir
