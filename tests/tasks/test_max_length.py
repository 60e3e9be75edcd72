"""Task-aware max_length: generative tasks choose it from the data when it is unset, the others keep 128."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny_models import save_tiny_llama

import leantune as lt
from leantune.config import validate_config
from leantune.models.loading import load_tokenizer
from leantune.tasks import make_task
from leantune.tasks.generative import pick_max_length

# instructions of 1 to 24 sentences: many longer than the 128 tokens a run took by default
ROWS = [{"instruction": " ".join(f"What colour is item {j}?" for j in range(1 + i % 24)), "input": "",
         "output": ["red", "blue"][i % 2]} for i in range(48)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("maxlen")
    folder = save_tiny_llama(tmp / "llama", [r["instruction"] + " " + r["output"] for r in ROWS])
    data = tmp / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return folder, str(data)


def _raw(setup, tmp_path, **train):
    folder, data = setup
    return {"model": folder, "task": "instruction", "method_args": {"r": 4},
            "task_args": {"eval_max_examples": 0}, "data": {"train": data, "format": "alpaca"},
            "train": {"max_steps": 2, "batch_size": 8, "eval_before": False, **train},
            "output_dir": str(tmp_path / "run")}


def test_pick_max_length():
    assert pick_max_length([10] * 99 + [11], None)[0] == 16  # the longest, rounded up to a multiple of 8
    chosen, why = pick_max_length([10] * 200 + [100], None)  # one outlier: the 99th percentile
    assert chosen == 16 and why.startswith("the 99th percentile of 201 tokenised lengths")
    assert pick_max_length([300, 20], 256)[0] == 256  # never beyond the model's context
    assert pick_max_length([3], None)[0] == 8


def test_unset_max_length_is_the_tasks_default(setup):
    cfg = validate_config({"model": "m", "data": {"train": "t.csv"}})
    assert cfg.train.max_length is None
    folder, data = setup
    classify = validate_config({"model": folder, "data": {"train": data}})
    assert make_task(classify, load_tokenizer(folder), folder).cfg.train.max_length == 128
    with pytest.raises(lt.LeantuneError, match=r"doc_stride \(64\) must be below half of train.max_length \(128\)"):
        validate_config({"model": folder, "task": "extractive_qa", "task_args": {"doc_stride": 64},
                         "data": {"train": data}})


def test_generative_task_chooses_max_length_from_the_data(setup, tmp_path, capsys):
    folder, _ = setup
    cfg = validate_config(_raw(setup, tmp_path))
    task = make_task(cfg, load_tokenizer(folder), folder)
    train, evals = task.prepare()
    chosen = cfg.train.max_length
    longest = max(len(f["input_ids"]) for f in train + evals)
    assert 128 < longest <= chosen < longest + 8 and chosen % 8 == 0
    assert task.report["truncated"] == 0 and task.report["max_length_chosen"] == chosen
    assert f"max_length: chose {chosen} (the longest of 48 tokenised lengths" in capsys.readouterr().err


def test_many_truncated_examples_are_a_warning(setup, tmp_path, capsys):
    folder, _ = setup
    cfg = validate_config(_raw(setup, tmp_path, max_length=64))
    make_task(cfg, load_tokenizer(folder), folder).prepare()
    err = capsys.readouterr().err
    assert "max_length: chose" not in err
    assert "warning: " in err and "of 48 examples truncated to max_length 64" in err


def test_a_run_keeps_its_chosen_max_length_and_resumes_with_it(setup, tmp_path, capsys):
    raw = _raw(setup, tmp_path)
    result = lt.fine_tune(raw, quiet=True)
    chosen = result.config.train.max_length
    assert chosen > 128 and result.data_report["truncated"] == 0
    assert "max_length: chose" in capsys.readouterr().err
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["train"]["max_length"] == chosen
    resumed = lt.fine_tune(raw, overrides={"train.max_steps": 3}, quiet=True, resume=True)
    assert resumed.steps == 3 and resumed.config.train.max_length == chosen
    with pytest.raises(lt.LeantuneError, match=r"cannot resume .*train.max_length"):
        lt.fine_tune(raw, train={"max_length": 64}, quiet=True, resume=True)
