"""Every reader, and the errors that name file and line."""

import gzip
import json

import pytest

from leantune.data.readers import detect_format, read_records
from leantune.errors import LeantuneError

ROWS = [{"text": "good, very good", "label": "pos"}, {"text": "bad", "label": "neg"}]


def _check(records):
    assert [(r["text"], str(r["label"])) for r in records] == [("good, very good", "pos"), ("bad", "neg")]
    assert all("_source" in r for r in records)


def test_csv_and_tsv(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"good, very good",pos\nbad,neg\n')
    _check(read_records(str(tmp_path / "d.csv")))
    (tmp_path / "d.tsv").write_text("text\tlabel\ngood, very good\tpos\nbad\tneg\n")
    _check(read_records(str(tmp_path / "d.tsv")))


def test_jsonl_json_and_gzip(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    _check(read_records(str(tmp_path / "d.jsonl")))
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    _check(read_records(str(tmp_path / "d.json")))
    (tmp_path / "c.json").write_text(json.dumps({"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}))
    _check(read_records(str(tmp_path / "c.json")))
    (tmp_path / "w.json").write_text(json.dumps({"data": ROWS}))
    _check(read_records(str(tmp_path / "w.json")))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    _check(read_records(str(tmp_path / "d.jsonl.gz")))


def test_parquet_and_hf_folder(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    _check(read_records(str(tmp_path / "d.parquet")))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    assert detect_format(str(tmp_path / "hf")) == "hf"
    _check(read_records(str(tmp_path / "hf")))
    with pytest.raises(LeantuneError, match="no split 'test'"):
        read_records(str(tmp_path / "hf"), split="test")


def test_label_text_lines(tmp_path):
    (tmp_path / "stsa.binary.train").write_text("pos good, very good\n\n__label__neg bad\n")
    _check(read_records(str(tmp_path / "stsa.binary.train")))


def test_errors_name_file_and_line(tmp_path):
    with pytest.raises(LeantuneError, match="not found"):
        read_records(str(tmp_path / "missing.csv"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(LeantuneError, match=r"bad.jsonl:2: invalid JSON"):
        read_records(str(tmp_path / "bad.jsonl"))
    (tmp_path / "list.jsonl").write_text('[1, 2]\n')
    with pytest.raises(LeantuneError, match=r"list.jsonl:1: expected a JSON object"):
        read_records(str(tmp_path / "list.jsonl"))
    (tmp_path / "wide.csv").write_text("text,label\na,b,c\n")
    with pytest.raises(LeantuneError, match=r"wide.csv:2: more fields"):
        read_records(str(tmp_path / "wide.csv"))
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(LeantuneError, match="not valid UTF-8"):
        read_records(str(tmp_path / "latin.csv"))
