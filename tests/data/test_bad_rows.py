"""Bad input gets a clear answer: one line naming file, line and field (on_bad_rows: error), or a counted,
reported skip (on_bad_rows: skip); config, model and output problems fail before training, without traceback."""

from __future__ import annotations

import json

import pytest
from tiny_models import save_tiny_bert, save_tiny_llama, sentiment_rows, write_csv

from leantune.cli import main
from leantune.config import validate_config
from leantune.data.bad_rows import BadRows
from leantune.data.readers import read_records
from leantune.errors import LeantuneError
from leantune.train.loop import fine_tune


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "m", pooling="mean")


def _good_lines(n: int = 60) -> list[str]:
    return [f"{r['label']},{r['text']}" for r in sentiment_rows(n)]


def _run_cfg(bert_dir, train: str, tmp_path, **data) -> dict:
    return {"model": bert_dir, "method": "lora", "data": {"train": train, "eval_fraction": 0.25, **data},
            "train": {"max_steps": 2, "batch_size": 8, "max_length": 32, "eval_before": False},
            "output_dir": str(tmp_path / "run")}


CASES = {
    # name: (file name, bytes, the error's location, the skip reason)
    "extra CSV field": ("d.csv", "label,text\n" + "\n".join(_good_lines()[:30]) + "\npos,too,many,fields\n"
                        + "\n".join(_good_lines()[30:]) + "\n", "d.csv:32", "more fields than the header"),
    "missing CSV field": ("d.csv", "label,text\n" + "\n".join(_good_lines()) + "\npos\n", "d.csv:62",
                          "fewer fields than the header"),
    "invalid UTF-8": ("d.csv", ("label,text\n" + "\n".join(_good_lines()[:10]) + "\n").encode() + b"pos,caf\xe9 ok\n"
                      + ("\n".join(_good_lines()[10:]) + "\n").encode(), "d.csv:12", "not valid UTF-8"),
    "invalid JSON line": ("d.jsonl", "".join(json.dumps(r) + "\n" for r in sentiment_rows(60)[:20]) + "{oops\n"
                          + "".join(json.dumps(r) + "\n" for r in sentiment_rows(60)[20:]), "d.jsonl:21",
                          "invalid JSON"),
    "missing label": ("d.jsonl", "".join(json.dumps(r) + "\n" for r in sentiment_rows(60)) + '{"text": "no label"}\n',
                      "d.jsonl:61", "no value in label column 'label'"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_rows_error_names_the_line_or_are_counted(case, bert_dir, tmp_path):
    name, content, where, reason = CASES[case]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LeantuneError) as err:
        fine_tune(validate_config(_run_cfg(bert_dir, str(path), tmp_path)), quiet=True)
    message = str(err.value)
    assert where in message and reason in message and "on_bad_rows: skip" in message
    assert "\n" not in message
    result = fine_tune(validate_config(_run_cfg(bert_dir, str(path), tmp_path, on_bad_rows="skip")), quiet=True,
                       overwrite=True)
    skipped = result.data_report["bad_rows_skipped"]
    assert len(skipped) == 1
    (got_reason, entry), = skipped.items()
    assert reason in got_reason and entry["rows"] == 1 and where in entry["first"]
    log = json.loads((result.run_dir / "train_log.jsonl").read_text().splitlines()[0])
    assert log["data"]["bad_rows_skipped"] == skipped


def test_unseen_eval_labels_and_empty_data(bert_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(40))
    evals = write_csv(tmp_path / "eval.csv", sentiment_rows(10) + [{"text": "the film was odd", "label": "meh"}])
    raw = _run_cfg(bert_dir, train, tmp_path, eval=evals)
    with pytest.raises(LeantuneError, match=r"eval.csv:12: label\(s\) \['meh'\] never appear in the training data"):
        fine_tune(validate_config(raw), quiet=True)
    raw["data"]["on_bad_rows"] = "skip"
    result = fine_tune(validate_config(raw), quiet=True)
    assert result.data_report["eval"] == 10
    empty = tmp_path / "empty.csv"
    empty.write_text("label,text\npos,   \nneg,\n")
    with pytest.raises(LeantuneError, match="no examples left after cleaning"):
        fine_tune(validate_config(_run_cfg(bert_dir, str(empty), tmp_path)), quiet=True, overwrite=True)


def test_reader_level_policy():
    bad = BadRows("skip")
    bad("f.csv:3", "broken")
    bad("f.csv:9", "broken")
    assert bad.report() == {"broken": {"rows": 2, "first": "f.csv:3"}}
    with pytest.raises(ValueError):
        BadRows("ignore")


def test_invalid_utf8_names_the_line_in_every_line_format(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(b"pos good\nneg bad\npos \xff\xfe nice\n")
    with pytest.raises(LeantuneError, match=r"s.txt:3: not valid UTF-8"):
        read_records(str(path), "lines")
    bad = BadRows("skip")
    assert len(read_records(str(path), "lines", bad=bad)) == 2 and bad.total == 1


def test_a_method_the_model_cannot_take_fails_before_weights_load(bert_dir, tmp_path, monkeypatch):
    import leantune.tasks.base as tasks_base

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(tasks_base, "pretrained", no_loading)  # every task loads its weights through it
    train = write_csv(tmp_path / "t.csv", sentiment_rows(40))
    raw = _run_cfg(bert_dir, train, tmp_path)
    with pytest.raises(LeantuneError, match="method prefix on .*decoder-only"):
        fine_tune(validate_config({**raw, "method": "prefix", "method_args": {}}), quiet=True)
    with pytest.raises(LeantuneError, match="method lora on .*target_modules"):
        fine_tune(validate_config({**raw, "method_args": {"target_modules": ["nonexistent_proj"]}}), quiet=True)


def test_pickle_weights_need_an_explicit_opt_in(tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = save_tiny_bert(tmp_path / "pickled")
    weights = tmp_path / "pickled" / "model.safetensors"
    torch.save(load_file(str(weights)), tmp_path / "pickled" / "pytorch_model.bin")  # an old-style pickle checkpoint
    weights.unlink()
    train = write_csv(tmp_path / "t.csv", sentiment_rows(40))
    raw = _run_cfg(folder, train, tmp_path)
    with pytest.raises(LeantuneError, match="no safetensors weights.*allow_pickle_weights: true"):
        fine_tune(validate_config(raw), quiet=True)
    result = fine_tune(validate_config({**raw, "allow_pickle_weights": True}), quiet=True, overwrite=True)
    assert result.steps == 2


def test_cli_answers_in_one_line(bert_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the film was good", "label": "pos"}\n[1, 2]\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {bert_dir}\ndata: {{train: {bad}}}\noutput_dir: {tmp_path / 'r'}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.jsonl:2: expected a JSON object" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert main(["train", str(cfg), "--resume", "--overwrite"]) == 2
    assert "choose one" in capsys.readouterr().err
    missing = tmp_path / "c2.yaml"
    missing.write_text(f"model: {tmp_path / 'nowhere'}\ndata: {{train: {bad}}}\n")
    assert main(["train", str(missing)]) == 2
    assert "Model folder not found" in capsys.readouterr().err


def test_generative_bad_records_are_skipped_and_counted(tmp_path):
    rows = [{"instruction": f"Say {i}", "output": str(i)} for i in range(30)]
    folder = save_tiny_llama(tmp_path / "m", [r["instruction"] + r["output"] for r in rows])
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"instruction": "no output"}\nnot json\n')
    raw = {"model": folder, "task": "instruction", "task_args": {"eval_max_examples": 0},
           "data": {"train": str(data), "format": "alpaca"},
           "train": {"max_steps": 1, "batch_size": 4, "max_length": 32},
           "output_dir": str(tmp_path / "run")}
    with pytest.raises(LeantuneError, match=r"d.jsonl:32: invalid JSON"):
        fine_tune(validate_config(raw), quiet=True)
    raw["data"]["on_bad_rows"] = "skip"
    result = fine_tune(validate_config(raw), quiet=True, overwrite=True)
    assert sum(v["rows"] for v in result.data_report["bad_rows_skipped"].values()) == 2
