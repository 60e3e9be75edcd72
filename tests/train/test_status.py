"""status.json: the process that trains a run, and how it ended (finished, interrupted, failed with its error),
written by the run's own process only, never into a folder it refused."""

from __future__ import annotations

import json
import os

import pytest
from tiny_models import save_tiny_bert, sentiment_rows, write_csv

from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.train import loop
from leantune.train.guards import TrainingInterrupted
from leantune.train.loop import fine_tune
from leantune.train.status import is_running, mark_ended, mark_running, process_alive, read_status


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    return save_tiny_bert(tmp / "m", pooling="mean"), write_csv(tmp / "train.csv", sentiment_rows(64)), tmp


def _cfg(setup, name: str, **train):
    model, data, tmp = setup
    return validate_config({"model": model, "method": "lora", "method_args": {"r": 2},
                            "data": {"train": data, "eval_fraction": 0.25},
                            "train": {"max_steps": 2, "batch_size": 8, "max_length": 24, "num_threads": 1, **train},
                            "output_dir": str(tmp / name)})


def test_a_finished_run_records_its_process_and_end(setup):
    result = fine_tune(_cfg(setup, "done"), quiet=True)
    record = read_status(result.run_dir)
    assert record["status"] == "finished" and record["pid"] == os.getpid() and record["total_steps"] == 2
    assert record["ended"] >= record["started"] and "error" not in record
    assert not is_running(record)


@pytest.mark.parametrize("error, status", [(RuntimeError("the disk is on fire"), "failed"),
                                           (TrainingInterrupted("stopped by SIGTERM"), "interrupted")])
def test_a_run_that_raises_records_how_it_ended(setup, monkeypatch, error, status):
    def raise_error(run):
        raise error

    monkeypatch.setattr(loop, "fit", raise_error)
    with pytest.raises(type(error)):
        fine_tune(_cfg(setup, status), quiet=True)
    record = read_status(setup[2] / status)
    assert record["status"] == status
    if status == "failed":  # the error line and the traceback's end, for the dashboard
        assert record["error"] == "RuntimeError: the disk is on fire"
        assert "the disk is on fire" in record["traceback"][-1]


def test_a_refused_folder_keeps_the_status_of_its_own_run(setup):
    fine_tune(_cfg(setup, "kept"), quiet=True)
    before = read_status(setup[2] / "kept")
    with pytest.raises(LeantuneError, match="already holds a run"):
        fine_tune(_cfg(setup, "kept"), quiet=True)
    assert read_status(setup[2] / "kept") == before


def test_running_record_and_liveness(tmp_path):
    mark_running(tmp_path, total_steps=5)
    record = read_status(tmp_path)
    assert is_running(record)  # this very process, same command line
    assert not is_running({**record, "argv": ["x", "another", "command"]})  # the pid now runs something else
    assert not is_running({**record, "host": "elsewhere"})
    assert not process_alive(None) and process_alive(os.getpid())
    mark_ended(tmp_path, "finished")
    assert read_status(tmp_path)["status"] == "finished"
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "pid": 1}))  # not ours: untouched
    mark_ended(tmp_path, "failed")
    assert read_status(tmp_path) == {"status": "running", "pid": 1}
    (tmp_path / "status.json").write_text("{cut sho")
    assert read_status(tmp_path) == {}
