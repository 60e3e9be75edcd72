"""``lt.fine_tune`` from Python: a config from a path, a mapping or a RunConfig with overrides; callbacks that see
the run and cannot stop it; the result that loads the trained model."""

from __future__ import annotations

import pytest
import yaml
from tiny_models import save_tiny_bert, sentiment_rows, write_csv

import leantune as lt
from leantune.api import run_config
from leantune.config import validate_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "m", pooling="mean")


def _raw(tmp_path, model_dir):
    return {"model": model_dir, "method_args": {"r": 4, "alpha": 8},
            "data": {"train": write_csv(tmp_path / "train.csv", sentiment_rows(80)), "eval_fraction": 0.25},
            "train": {"max_steps": 6, "batch_size": 16, "lr": 1e-2, "max_length": 32, "log_every": 2,
                      "eval_every": 3, "eval_before": False},
            "output_dir": str(tmp_path / "run")}


class Recorder(lt.Callback):
    def __init__(self) -> None:
        self.steps, self.evaluations, self.ended = [], [], None

    def on_step(self, row):
        self.steps.append(row["step"])

    def on_evaluate(self, step, metrics):
        self.evaluations.append((step, metrics["accuracy"]))

    def on_end(self, result):
        self.ended = result


class Broken(lt.Callback):
    def on_step(self, row):
        raise RuntimeError("no room on the dashboard")


def test_config_from_a_path_a_mapping_or_a_run_config_with_overrides(tmp_path, model_dir):
    raw = _raw(tmp_path, model_dir)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    from_path = run_config(path, {"train.lr": 1e-3}, {"train": {"batch_size": 8}, "method_args": {"lora_alpha": 2}})
    assert (from_path.train.lr, from_path.train.batch_size, from_path.train.max_steps) == (1e-3, 8, 6)
    assert from_path.method_args.alpha == 2 and from_path.method_args.r == 4  # merged; peft's name replaces alpha
    assert run_config(raw, {}, {"output_dir": "elsewhere"}).output_dir == "elsewhere"
    cfg = validate_config(raw)
    assert run_config(cfg, {}, {}) is cfg
    assert run_config(cfg, {"method_args.r": 2}, {}).method_args.r == 2
    with pytest.raises(lt.LeantuneError, match=r"unknown key 'train.lrr'; valid keys: epochs"):
        run_config(raw, {"train.lrr": 1}, {})
    with pytest.raises(lt.LeantuneError, match="config file not found"):
        lt.fine_tune(tmp_path / "missing.yaml")


def test_callbacks_see_the_run_and_the_result_loads_the_model(tmp_path, model_dir):
    seen, broken = Recorder(), Broken()
    with pytest.warns(RuntimeWarning, match="Broken.on_step raised RuntimeError: no room") as caught:
        result = lt.fine_tune(_raw(tmp_path, model_dir), callbacks=[broken, seen], quiet=True)
    assert sum("Broken" in str(w.message) for w in caught) == 1  # once, though it raised at every logged step
    assert result.steps == 6 and seen.steps == [2, 4, 6]  # the broken callback stopped nothing
    assert [step for step, _ in seen.evaluations] == [3, 6]
    assert seen.evaluations[-1][1] == result.metrics["accuracy"] and seen.ended is result
    assert result.config.train.max_steps == 6
    cfg, task, model = result.load()
    assert cfg == result.config and task.name == "classification" and not model.training
