"""status.json: the process that trains a run, and how it ended (finished, interrupted, failed with its error),
written by the run's own process only, never into a folder it refused; and the one decision of a run's state."""

from __future__ import annotations

import json
import os

import pytest
from tiny_models import save_tiny_bert, sentiment_rows, write_csv

from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.run.status import is_running, mark_ended, mark_running, process_alive, read_status, run_status
from leantune.system.signals import TrainingInterrupted
from leantune.train import loop
from leantune.train.loop import fine_tune


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
    for crafted in (-1, 0, "1", 1.0, True, [1]):  # kill() reads -1 and 0 as groups: never "alive"
        assert not process_alive(crafted) and not is_running({**record, "pid": crafted})
    assert is_running({**record, "argv": 7})  # a malformed argv is no error
    mark_ended(tmp_path, "finished")
    assert read_status(tmp_path)["status"] == "finished"
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "pid": 1}))  # not ours: untouched
    mark_ended(tmp_path, "failed")
    assert read_status(tmp_path) == {"status": "running", "pid": 1}
    (tmp_path / "status.json").write_text("{cut sho")
    assert read_status(tmp_path) == {}


def _folder(tmp_path, name: str, *, status: dict | None = None, result: bool = False, checkpoint: bool = False):
    run = tmp_path / name
    run.mkdir()
    (run / "config.yaml").write_text("task: classification\n")
    if status is not None:
        (run / "status.json").write_text(json.dumps(status))
    if result:
        (run / "metrics.json").write_text('{"accuracy": 0.9}')
        (run / "adapter").mkdir()
    if checkpoint:
        (run / "checkpoints" / "step-0000002").mkdir(parents=True)
        (run / "checkpoints" / "latest").write_text("step-0000002\n")
    return run


def test_the_state_of_a_run_from_its_record(tmp_path):
    live = _folder(tmp_path, "live")
    mark_running(live)
    assert run_status(live) == ("running", None)  # this very process trains it
    assert run_status(_folder(tmp_path, "done", status={"status": "finished"})) == ("finished", None)
    assert run_status(_folder(tmp_path, "stopped", status={"status": "interrupted"}, checkpoint=True)) == \
        ("interrupted", None)
    assert run_status(_folder(tmp_path, "broke", status={"status": "failed", "error": "out of memory"})) == \
        ("failed", "out of memory")


def test_a_record_outranks_the_files_an_earlier_end_left(tmp_path):
    """A run that finished once, then was resumed and killed: its old metrics and adapter do not make it finished."""
    dead = {"status": "running", "pid": 2**22 + 12345, "argv": ["leantune", "train"]}
    status, why = run_status(_folder(tmp_path, "resumed", status=dead, result=True, checkpoint=True))
    assert status == "interrupted" and f"pid {dead['pid']}" in why
    assert run_status(_folder(tmp_path, "old", result=True)) == ("finished", None)  # no record: from the files
    assert run_status(_folder(tmp_path, "none")) == ("failed", "the run left no result and no checkpoint")
