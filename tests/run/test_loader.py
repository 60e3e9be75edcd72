"""A run folder loaded back: a folder that is not a finished run is refused with an error naming what is missing,
a broken config.yaml is reported by line and column without echoing its text, and a finished run comes back with
its task, labels and trained adapter."""

from __future__ import annotations

import pytest

from leantune.errors import LeantuneError
from leantune.run.files import load_config_yaml, read_config
from leantune.run.layout import ADAPTER_DIR, CONFIG_FILE, LABELS_FILE
from leantune.run.loader import load_run, read_run, run_config


def test_a_folder_without_a_config_is_not_a_run(tmp_path):
    for load in (load_run, read_run, run_config):
        with pytest.raises(LeantuneError, match="is not a leantune run folder: it has no config.yaml"):
            load(tmp_path)


def test_a_broken_config_is_located_never_echoed(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("model: minilm\napi_key: [hunter2-secret\nmethod: lora\n")
    with pytest.raises(LeantuneError) as e:
        read_run(tmp_path)
    message = str(e.value)
    assert "not valid YAML (line" in message and "column" in message and str(tmp_path) in message
    assert "hunter2" not in message and "api_key" not in message and "minilm" not in message
    assert read_config(tmp_path) == {}  # the dashboard shows the run without a config
    (tmp_path / CONFIG_FILE).write_text("- a list\n- not a config\n")
    with pytest.raises(LeantuneError, match="not a run config"):
        load_config_yaml(tmp_path)


def test_a_finished_run_loads_with_its_task_and_adapter(trained):
    cfg, task, model = load_run(trained)
    assert cfg == run_config(trained) and sorted(task.labels) == ["neg", "pos"] and not model.training
    served = read_run(trained, "mine")
    assert (served.name, served.kind, served.labels, served.adapter_dir) == \
        ("mine", "classify", task.labels, trained.resolve() / ADAPTER_DIR)
    adapter = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert adapter.abs().sum() > 0  # the trained adapter, not a fresh one (LoRA's B starts at zero)


def test_a_run_that_did_not_finish_is_not_served(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / LABELS_FILE).unlink()
    with pytest.raises(LeantuneError, match="a classification run needs its labels.json"):
        read_run(run)
    shutil.rmtree(run / ADAPTER_DIR)
    with pytest.raises(LeantuneError, match="no adapter/ folder"):
        read_run(run)
