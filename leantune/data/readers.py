"""Read examples from CSV, TSV, JSONL, JSON, Parquet, ``LABEL TEXT`` lines, or HF datasets.

Every record keeps where it came from (``_source``: ``file:line``) so later errors and skips can name it.
TSV is read with quoting off, as TSV has no quoting (GLUE, ChnSentiCorp): a ``"`` inside a field is a character,
never the start of a quoted field that would swallow the following lines. CSV keeps standard quoting.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from leantune.data.bad_rows import BadRows
from leantune.errors import LeantuneError

Record = dict[str, Any]
FILE_FORMATS = ("auto", "csv", "tsv", "jsonl", "json", "parquet", "lines", "hf", "text")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet",
               ".txt": "lines"}


def detect_format(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        return "hf"
    name = p.name.removesuffix(".gz")
    suffix = Path(name).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if not p.exists() and "/" in path and not path.startswith((".", "/")):
        return "hf"  # looks like a hub dataset id
    if p.exists():
        return "lines"  # e.g. SST-2's stsa.binary.train: "LABEL TEXT" per line
    raise LeantuneError(f"data file not found: {path}")


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8", newline="")


def _lines(path: Path, bad: BadRows) -> Iterator[str]:
    """The file's lines, decoded one by one, so invalid UTF-8 is reported with its line number; a skipped line
    reads as an empty one (line numbers stay right, readers skip blank lines)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad(f"{path}:{i}", f"not valid UTF-8 (byte {e.start} of the line); re-encode the file as UTF-8")
                yield "\n"


def read_records(path: str, fmt: str = "auto", split: str = "train", label_column: str = "label",
                 text_column: str = "text", bad: BadRows | None = None) -> list[Record]:
    """All records of ``path`` as dicts; ``lines`` files give ``{label_column, text_column}``. Malformed rows go
    to ``bad`` (default: an error naming the file and line)."""
    bad = bad or BadRows("error")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "hf":
        return list(_read_hf(path, split))
    p = Path(path)
    if not p.is_file():
        raise LeantuneError(f"data file not found: {path}")
    try:
        if fmt in ("csv", "tsv"):
            return list(_read_csv(p, "\t", bad, csv.QUOTE_NONE) if fmt == "tsv" else _read_csv(p, ",", bad))
        if fmt == "jsonl":
            return list(_read_jsonl(p, bad))
        if fmt == "json":
            return _read_json(p)
        if fmt == "parquet":
            return _read_parquet(p)
        if fmt == "lines":
            return list(_read_lines(p, label_column, text_column, bad))
        if fmt == "text":
            return list(_read_text(p, text_column, bad))
    except UnicodeDecodeError as e:
        raise LeantuneError(f"{path}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8.") from None
    raise LeantuneError(f"unknown data format '{fmt}'")


def _read_csv(path: Path, delimiter: str, bad: BadRows, quoting: int = csv.QUOTE_MINIMAL) -> Iterator[Record]:
    reader = csv.DictReader(_lines(path, bad), delimiter=delimiter, quoting=quoting)
    try:
        header = reader.fieldnames
    except csv.Error as e:
        raise LeantuneError(f"{path}:1: malformed header row ({e}).") from None
    if not header:
        raise LeantuneError(f"{path}: empty file (no header row).")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            bad(f"{path}:{reader.line_num}", f"malformed row ({e})")
            continue
        source = f"{path}:{reader.line_num}"
        if None in row:
            bad(source, f"more fields than the header's {len(header)} columns")
        elif any(v is None for v in row.values()):
            missing = [k for k, v in row.items() if v is None]
            bad(source, f"fewer fields than the header: no value for {missing}")
        else:
            yield {**row, "_source": source}


def _read_jsonl(path: Path, bad: BadRows) -> Iterator[Record]:
    for i, line in enumerate(_lines(path, bad), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad(f"{path}:{i}", f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            bad(f"{path}:{i}", f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield {**obj, "_source": f"{path}:{i}"}


def _read_json(path: Path) -> list[Record]:
    with _open_text(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise LeantuneError(f"{path}:{e.lineno}: invalid JSON ({e.msg}).") from None
    if isinstance(obj, dict) and "data" in obj and isinstance(obj["data"], list):
        obj = obj["data"]
    if isinstance(obj, dict):  # columnar: {"text": [...], "label": [...]}
        lengths = {len(v) for v in obj.values() if isinstance(v, list)}
        if len(lengths) != 1:
            raise LeantuneError(f"{path}: expected a list of objects or equal-length columns.")
        n = lengths.pop()
        obj = [{k: v[i] for k, v in obj.items()} for i in range(n)]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise LeantuneError(f"{path}: expected a list of objects.")
    return [{**r, "_source": f"{path}:record {i + 1}"} for i, r in enumerate(obj)]


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return [{**r, "_source": f"{path}:row {i + 1}"} for i, r in enumerate(rows)]


def _read_lines(path: Path, label_column: str, text_column: str, bad: BadRows) -> Iterator[Record]:
    """``LABEL TEXT`` per line (fastText's ``__label__x text`` too)."""
    for i, line in enumerate(_lines(path, bad), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split(None, 1)
        label = parts[0].removeprefix("__label__")
        yield {label_column: label, text_column: parts[1] if len(parts) > 1 else "", "_source": f"{path}:{i}"}


def _read_text(path: Path, column: str, bad: BadRows) -> Iterator[Record]:
    """One example per line (parallel corpora); every line is kept, empty ones too, so files stay aligned."""
    for i, line in enumerate(_lines(path, bad), 1):
        yield {column: line.rstrip("\r\n"), "_source": f"{path}:{i}"}


def _read_hf(path: str, split: str) -> Iterator[Record]:
    import datasets

    p = Path(path)
    if p.is_dir():
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise LeantuneError(f"{path}: no split '{split}'; splits: {list(ds)}")
            ds = ds[split]
    else:
        ds = datasets.load_dataset(path, split=split)
    for i, row in enumerate(ds):
        yield {**row, "_source": f"{path}[{split}]:{i}"}
