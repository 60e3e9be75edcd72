"""Extractive QA: windows with a stride, span targets, best-span search across windows, offsets back to text."""

import torch
from tiny_models import save_tiny_bert

from leantune.models.loading import load_tokenizer
from leantune.tasks.extractive_qa import best_span, make_windows, span_targets

CONTEXT = "the red house is big . the blue dog is small . the green cat is old . the film was good ."


def _windows(tmp_path, max_length=16, stride=6):
    tok = load_tokenizer(save_tiny_bert(tmp_path / "bert"))
    return tok, make_windows(tok, ["what is old"], [CONTEXT], max_length, stride)


def test_long_contexts_become_overlapping_windows(tmp_path):
    tok, enc = _windows(tmp_path)
    assert len(enc["input_ids"]) > 2
    assert all(len(ids) <= 16 for ids in enc["input_ids"])
    # question and special tokens have no offsets; context tokens point into the context
    offs = enc["offset_mapping"][0]
    assert offs[0] is None and any(o is not None for o in offs)
    spans = [[o for o in w if o is not None] for w in enc["offset_mapping"]]
    assert spans[1][0][0] < spans[0][-1][1]  # windows overlap


def test_span_targets_inside_and_outside_a_window(tmp_path):
    _, enc = _windows(tmp_path)
    start = CONTEXT.index("green cat")
    targets = [span_targets(o, start, start + len("green cat")) for o in enc["offset_mapping"]]
    inside = [t for t in targets if t != (0, 0)]
    assert inside and (0, 0) in targets  # the answer is in some windows, not in others (unanswerable -> CLS)
    w = targets.index(inside[0])
    s, e = inside[0]
    offs = enc["offset_mapping"][w]
    assert CONTEXT[offs[s][0]:offs[e][1]] == "green cat"


def test_best_span_searches_every_window_and_respects_limits(tmp_path):
    _, enc = _windows(tmp_path)
    start = CONTEXT.index("green cat")
    targets = [span_targets(o, start, start + 9) for o in enc["offset_mapping"]]
    starts, ends = [], []
    for (s, e), ids in zip(targets, enc["input_ids"], strict=True):
        sl, el = torch.zeros(len(ids)), torch.zeros(len(ids))
        if (s, e) != (0, 0):
            sl[s], el[e] = 5.0, 5.0
        sl[0] = el[0] = 9.0  # [CLS] scores highest but is never a valid span
        starts.append(sl)
        ends.append(el)
    text, _ = best_span(starts, ends, enc["offset_mapping"], CONTEXT, max_answer_length=10)
    assert text == "green cat"
    text, _ = best_span(starts, ends, enc["offset_mapping"], CONTEXT, max_answer_length=1)
    assert text != "green cat"  # too long for the limit


def test_records_without_context_or_question_are_bad_rows(tmp_path):
    import json

    import pytest

    from leantune.config import validate_config
    from leantune.errors import LeantuneError
    from leantune.tasks import make_task

    folder = save_tiny_bert(tmp_path / "bert")
    good = {"context": CONTEXT, "question": "what is old", "answers": {"text": ["the green cat"],
                                                                      "answer_start": [CONTEXT.index("the green")]}}
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [good, good, {"context": CONTEXT}, good]))

    def task(policy):
        cfg = validate_config({"model": folder, "task": "extractive_qa",
                               "data": {"train": str(path), "on_bad_rows": policy}, "train": {"max_length": 32}})
        return make_task(cfg, load_tokenizer(folder), folder)

    with pytest.raises(LeantuneError, match=r"qa.jsonl:3: missing or empty field\(s\) \['question'\]"):
        task("error").read(str(path), "train")
    skipping = task("skip")
    assert len(skipping.read(str(path), "train")) == 3
    assert list(skipping.report["bad_rows_skipped"].values())[0]["rows"] == 1
