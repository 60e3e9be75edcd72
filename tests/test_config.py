"""Config validation: unknown keys, wrong types and bad methods are errors that name the key."""

import pytest

from leantune.config import load_config, validate_config
from leantune.errors import LeantuneError

BASE = {"model": "m", "data": {"train": "t.csv"}}


def test_defaults():
    cfg = validate_config(BASE)
    assert cfg.method == "lora" and cfg.train.batch_size == 32 and cfg.data.text_column == "text"


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
    with pytest.raises(LeantuneError, match="choose one of lora, dora"):
        validate_config({**BASE, "method": "lorax"})
    with pytest.raises(LeantuneError, match="method_args for lora: rank"):
        validate_config({**BASE, "method_args": {"rank": 4}})
    assert validate_config({**BASE, "method": "dora", "method_args": {"r": 4}}).method == "dora"


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
