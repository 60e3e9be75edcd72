"""Config validation: unknown keys, wrong types and bad methods are errors that name the key."""

import pytest

from leantune.config import dump_config, load_config, validate_config
from leantune.errors import LeantuneError
from leantune.methods import LoraConfig, PromptTuningConfig

BASE = {"model": "m", "data": {"train": "t.csv"}}


def test_defaults():
    cfg = validate_config(BASE)
    assert cfg.method == "lora" and cfg.train.batch_size == 32 and cfg.task_args.text_column == "text"


def test_unknown_key_names_it_and_the_valid_choices():
    with pytest.raises(LeantuneError, match=r"unknown key 'train.lrr'; valid keys: epochs, max_steps.*lr"):
        validate_config({**BASE, "train": {"lrr": 1}})
    with pytest.raises(LeantuneError, match=r"unknown key 'modle'; valid keys: model"):
        validate_config({**BASE, "modle": "x"})


def test_wrong_type_and_choices():
    with pytest.raises(LeantuneError, match=r"'train.batch_size'"):
        validate_config({**BASE, "train": {"batch_size": "many"}})
    with pytest.raises(LeantuneError, match=r"'data.format'.*'csv'"):
        validate_config({**BASE, "data": {"train": "t", "format": "xlsx"}})
    with pytest.raises(LeantuneError, match="missing key 'data'"):
        validate_config({"model": "m"})


def test_method_and_method_args():
    with pytest.raises(LeantuneError, match="'method': Input should be 'lora', 'dora', 'ia3'"):
        validate_config({**BASE, "method": "lorax"})
    assert validate_config({**BASE, "method": "dora", "method_args": {"r": 4}}).method == "dora"


def test_method_args_are_typed_per_method(tmp_path):
    # a wrong field fails at validation (nothing loaded), naming it and the method's valid fields
    with pytest.raises(LeantuneError, match=r"unknown key 'method_args.rank'; valid keys of method lora: r, alpha, "
                                            r"dropout, target_modules, .*use_dora, .*modules_to_save"):
        validate_config({**BASE, "method": "lora", "method_args": {"rank": 8}})
    with pytest.raises(LeantuneError, match=r"valid keys of method ia3: target_modules, feedforward_modules"):
        validate_config({**BASE, "method": "ia3", "method_args": {"r": 8}})
    with pytest.raises(LeantuneError, match=r"'method_args.r': Input should be greater than 0"):
        validate_config({**BASE, "method_args": {"r": 0}})
    with pytest.raises(LeantuneError, match="method dora means use_dora: True"):
        validate_config({**BASE, "method": "dora", "method_args": {"use_dora": False}})
    with pytest.raises(LeantuneError, match="DoRA with init 'pissa' is not supported"):
        validate_config({**BASE, "method": "dora", "method_args": {"init": "pissa"}})
    cfg = validate_config({**BASE, "method": "dora", "method_args": {"r": 4}})
    assert isinstance(cfg.method_args, LoraConfig) and cfg.method_args.r == 4 and cfg.method_args.use_dora
    assert isinstance(validate_config({**BASE, "method": "prompt"}).method_args, PromptTuningConfig)
    # the resolved config a run folder keeps reads back the same, and --set reaches method_args
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert load_config(tmp_path / "config.yaml", ["method_args.r=2"]).method_args.r == 2


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: m\ndata: {train: t.csv}\ntrain: {lr: 1.0e-3}\n")
    cfg = load_config(p, ["train.lr=2e-4", "method=ia3", "data.eval=dev.csv"])
    assert cfg.train.lr == 2e-4 and cfg.method == "ia3" and cfg.data.eval == "dev.csv"
    with pytest.raises(LeantuneError, match="expected key=value"):
        load_config(p, ["oops"])
    p.write_text("model: m\n  data: [\n")
    with pytest.raises(LeantuneError, match="invalid YAML at line"):
        load_config(p)


def test_task_args_are_typed_per_task(tmp_path):
    from leantune.tasks.classification import ClassificationArgs
    from leantune.tasks.translation import TranslationArgs

    assert isinstance(validate_config(BASE).task_args, ClassificationArgs)
    translation = {**BASE, "task": "translation", "task_args": {"source_lang": "English", "target_lang": "German"}}
    cfg = validate_config(translation)
    assert isinstance(cfg.task_args, TranslationArgs) and cfg.task_args.max_new_tokens == 64
    with pytest.raises(LeantuneError, match=r"unknown key 'task_args.doc_stride'; valid keys of task translation: "
                                            r"template, .*source_lang, target_lang"):
        validate_config({**translation, "task_args": {**translation["task_args"], "doc_stride": 64}})
    with pytest.raises(LeantuneError, match=r"missing key 'task_args.source_lang'; missing key 'task_args.target_lang'"):
        validate_config({**BASE, "task": "translation"})
    with pytest.raises(LeantuneError, match=r"'task_args.pooling': Input should be 'auto', 'mean', 'cls' or 'last'"):
        validate_config({**BASE, "task_args": {"pooling": "max"}})
    with pytest.raises(LeantuneError, match=r"unknown key 'task_args.max_new_tokens'; valid keys of task "
                                            r"classification: text_column"):
        validate_config({**BASE, "task_args": {"max_new_tokens": 8}})
    with pytest.raises(LeantuneError, match=r"task_args.doc_stride \(64\) must be below half of train.max_length"):
        validate_config({**BASE, "task": "extractive_qa", "task_args": {"doc_stride": 64}})
    with pytest.raises(LeantuneError, match=r"'task': 'summarisation' is not a task; choose one of classification, instruction"):
        validate_config({**BASE, "task": "summarisation"})
    # the saved config reads back as it was
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").task_args == cfg.task_args


def test_old_task_keys_say_where_they_went():
    with pytest.raises(LeantuneError, match=r"unknown key 'train.max_new_tokens': it is a task setting now, "
                                            r"task_args.max_new_tokens"):
        validate_config({**BASE, "task": "instruction", "train": {"max_new_tokens": 8}})
    with pytest.raises(LeantuneError, match=r"unknown key 'data.text_column': .*task_args.text_column"):
        validate_config({**BASE, "data": {"train": "t.csv", "text_column": "review"}})
    with pytest.raises(LeantuneError, match=r"unknown key 'pooling': .*task_args.pooling"):
        validate_config({**BASE, "pooling": "mean"})


def test_train_metric_and_packing_are_checked_by_the_task():
    with pytest.raises(LeantuneError, match=r"train.metric: 'acc' is not a metric of task classification; choose "
                                            r"one of accuracy, macro_f1, micro_f1, eval_loss"):
        validate_config({**BASE, "train": {"metric": "acc"}})
    assert validate_config({**BASE, "train": {"metric": "eval_loss"}}).train.metric == "eval_loss"
    with pytest.raises(LeantuneError, match="train.packing is for tasks that train a causal LM"):
        validate_config({**BASE, "task": "extractive_qa", "train": {"packing": True}})
    assert validate_config({**BASE, "task": "instruction", "train": {"packing": True}}).train.packing
