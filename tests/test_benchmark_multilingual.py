"""benchmarks/multilingual.py's dry run: tiny random Gemma 3 (through the GGUF path) and BERT, synthetic Chinese
data in the real files' layout, a leantune run and peft + Trainer peers in-process, and the table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("gguf")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "multilingual.py"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The benchmark module and its parsed --tiny arguments, on tiny assets, with its own model cache."""
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("multilingual_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tmp = tmp_path_factory.mktemp("multi")
    mp = pytest.MonkeyPatch()
    mp.setenv("LEANTUNE_CACHE", str(tmp / "cache"))
    data, gemma, minilm = module.tiny_assets(tmp / "tiny")
    args = module.parse(["--out", str(tmp / "out"), *module.TINY_SIZES, "--data", data, "--gemma", gemma,
                         "--minilm", minilm])
    yield module, args
    mp.undo()


def test_subsets_keep_the_header_and_cut_questions(bench, tmp_path):
    module, args = bench
    tsv = Path(module.first_lines(Path(args.data) / "chnsenticorp" / "train.tsv", 5, header=True))
    assert tsv.name == "train.tsv" and tsv.read_text(encoding="utf-8").splitlines()[0] == "label\ttext"
    assert len(tsv.read_text(encoding="utf-8").splitlines()) == 6
    squad = json.loads(Path(module.first_questions(Path(args.data) / "cmrc2018" / "dev.json", 3)).read_text())
    assert sum(len(p["qas"]) for a in squad["data"] for p in a["paragraphs"]) == 3


def test_dry_run_trains_both_stacks_and_writes_the_table(bench):
    module, args = bench
    from leantune.config import validate_config

    rows = []
    for run in ("cls-gemma-lora", "cls-gemma-lora-peft", "cls-minilm-lora-peft", "mt-en-zh-peft", "qa"):
        cfg = validate_config(module.config(run, args))
        result = module.run_peft(cfg, run, args) if run.endswith("-peft") else module.run_leantune(cfg)
        rows.append({"run": run, **result, "wall_seconds": 1.0, "peak_rss_mb": 1.0})
    by_run = {r["run"]: r for r in rows}
    # the same LoRA (default Gemma 3 targets, the score head in full) on both stacks
    assert by_run["cls-gemma-lora"]["trainable"] == by_run["cls-gemma-lora-peft"]["trainable"]
    assert 0.0 <= by_run["cls-gemma-lora-peft"]["metrics"]["accuracy"] <= 1.0
    assert by_run["mt-en-zh-peft"]["metrics"]["bleu_tokenizer"] == "zh"
    assert by_run["qa"]["metrics"]["qa_scorer"] == "cmrc_char" and "zero_shot" in by_run["qa"]
    text = module.table(rows, args)
    assert "ChnSentiCorp test accuracy" in text and "peer: peft + Trainer cls-gemma-lora" in text
    assert "zero-shot (same prompt, before training)" in text and "CMRC 2018 dev, character-level" in text
