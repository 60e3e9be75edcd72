"""The Task interface: one registry, the capabilities every caller relies on, the shared pieces."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny_models import save_tiny_bert, save_tiny_llama, save_tiny_t5

from leantune.config import TASK_SCHEMAS, validate_config
from leantune.data.bad_rows import BadRows
from leantune.errors import LeantuneError
from leantune.models.loading import load_tokenizer
from leantune.tasks import TASK_NAMES, TASKS, Task, make_task


def test_one_registry_of_tasks_names_the_config_and_cli_choices():
    from leantune.cli import build_parser

    assert TASK_NAMES == ("classification", "instruction", "translation", "extractive_qa")
    assert TASK_SCHEMAS == TASKS  # the config validates against the tasks' own registry
    methods = build_parser()._subparsers._group_actions[0].choices["methods"]
    assert next(a for a in methods._actions if a.dest == "task").choices == TASK_NAMES
    for name, cls in TASKS.items():
        assert issubclass(cls, Task) and cls.name == name and not inspect.isabstract(cls)
        assert cls.default_metric in cls.metrics and cls.Args is not Task.Args
        assert cls.higher_is_better(cls.default_metric) == (cls.default_metric != "eval_loss")
    assert [n for n, cls in TASKS.items() if cls.generates] == ["instruction", "translation"]
    with pytest.raises(LeantuneError, match="'bleu' is not a metric of task classification"):
        TASKS["classification"].higher_is_better("bleu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    corpus = ["the dog", "der hund", "what colour"]
    return {"bert": save_tiny_bert(tmp / "bert"), "llama": save_tiny_llama(tmp / "llama", corpus),
            "t5": save_tiny_t5(tmp / "t5", corpus)}


def _task(folder, task, **task_args):
    cfg = validate_config({"model": folder, "task": task, "task_args": task_args,
                           "data": {"train": "unused", "eval_fraction": 0.25}, "train": {"batch_size": 3}})
    return make_task(cfg, load_tokenizer(folder), folder)


def test_capabilities_and_meta_models(folders):
    langs = {"source_lang": "English", "target_lang": "German"}
    cases = {"classification": ("bert", {}), "extractive_qa": ("bert", {}), "instruction": ("llama", {}),
             "translation": ("t5", langs)}
    for name, (model, args) in cases.items():
        task = _task(folders[model], name, **args)
        assert task.seq2seq == (model == "t5") and task.eval_batch_size == 6
        skeleton = task.build_model(folders[model], meta=True)  # what preflight attaches the method to
        assert all(p.is_meta for p in skeleton.parameters())
        assert isinstance(skeleton, task.model_class(task.model_config)._model_mapping[type(task.model_config)])
        if not task.generates:
            with pytest.raises(LeantuneError, match="does not generate"):
                task.generate(skeleton, ["hi"])
    llama = _task(folders["llama"], "instruction")
    assert llama.fused_head_bytes(llama.build_model(folders["llama"]), 10) == 10 * len(llama.tokenizer) * 4
    assert _task(folders["bert"], "classification").fused_head_bytes(None, 10) == 0


def test_held_out_split_is_seeded_stratified_or_grouped(folders):
    task = _task(folders["bert"], "classification")
    items = [(i, "a" if i % 4 else "b") for i in range(40)]
    train, held = task.hold_out(items, stratum=lambda x: x[1])
    assert len(held) == 10 and sum(x[1] == "b" for x in held) == 2 and not set(train) & set(held)
    assert task.hold_out(items, stratum=lambda x: x[1]) == (train, held) and task.report["eval_split_from_train"] == 10
    train, held = task.hold_out(items, group=lambda x: x[0] // 10)
    assert len(held) == 10 and len({x[0] // 10 for x in held}) == 1  # one whole group


def test_skipped_rows_are_reported_once(folders, capsys):
    task = _task(folders["bert"], "classification")
    bad = BadRows("skip")
    bad("f.csv:3", "no label")
    task.report_bad_rows(bad, "f.csv")
    task.report_dropped("data/f.csv", {"duplicate": 2})
    assert task.report == {"bad_rows_skipped": {"no label": {"rows": 1, "first": "f.csv:3"}},
                           "dropped": {"f.csv: duplicate": 2}}
    err = capsys.readouterr().err
    assert "f.csv: skipped 1 bad rows" in err and "data/f.csv: skipped {'duplicate': 2}" in err


def test_eval_batches_restore_the_mode_and_keep_the_order(folders):
    task = _task(folders["bert"], "classification")
    model = torch.nn.Linear(1, 1).train()
    features = [{"input_ids": [1] * n, "targets": n} for n in (2, 5, 3, 1, 4, 6, 7)]

    def step(batch):
        assert set(batch) == {"input_ids"} and not model.training and not torch.is_grad_enabled()
        return batch["input_ids"].shape[1]

    out = task.eval_batches(model, features, torch.device("cpu"), step, fields=("input_ids",))
    assert [idx for idx, _ in out] == [[6, 5, 1, 4, 2, 0], [3]]  # eval batches of 2 x batch_size, longest first
    assert [width for _, width in out] == [7, 1] and model.training
