"""Extractive QA: windows with a stride, span targets, best-span search across windows, offsets back to text."""

import pytest
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


ZH_CONTEXTS = ["《红楼梦》的作者是曹雪芹，成书于清代。", "北京大学创办于1898年，位于北京。"]
ZH_QAS = [[{"id": "a", "question": "红楼梦的作者是谁？", "answers": [{"text": "曹雪芹", "answer_start": 9}]}],
          [{"id": "b", "question": "北京大学创办于哪一年？", "answers": [{"text": "1898年", "answer_start": 6}]}]]  # off: 7


def _cmrc_file(path):
    import json

    data = [{"title": f"t{i}", "paragraphs": [{"context": c, "qas": q}]}
            for i, (c, q) in enumerate(zip(ZH_CONTEXTS, ZH_QAS, strict=True))]
    path.write_text(json.dumps({"version": "v1.0", "data": data}, ensure_ascii=False), encoding="utf-8")
    return str(path)


class SpanOracle(torch.nn.Module):
    """A span head that points at fixed (start, end) token positions for each input row."""

    def __init__(self, spans: dict[tuple[int, ...], tuple[int, int]]) -> None:
        super().__init__()
        self.spans = spans

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        from types import SimpleNamespace

        start, end = torch.zeros(input_ids.shape), torch.zeros(input_ids.shape)
        for row, ids in enumerate(input_ids.tolist()):
            s, e = self.spans.get(tuple(i for i in ids if i != 0), (0, 0))
            start[row, s], end[row, e] = 10.0, 10.0
        return SimpleNamespace(start_logits=start, end_logits=end)


def test_chinese_through_the_extractive_path_is_scored_by_character(tmp_path):
    from leantune.config import validate_config
    from leantune.tasks.extractive_qa import ExtractiveQATask
    from leantune.train.loop import fine_tune

    chars = sorted({ch for text in ZH_CONTEXTS + [q["question"] for qs in ZH_QAS for q in qs] for ch in text})
    folder = save_tiny_bert(tmp_path / "bert", extra_vocab=tuple(c for c in chars if not c.isdigit()) + ("1898",))
    data = _cmrc_file(tmp_path / "cmrc.json")
    cfg = validate_config({"model": folder, "task": "extractive_qa", "method": "lora", "method_args": {"r": 2},
                           "data": {"train": data, "eval": data, "format": "squad"},
                           "train": {"max_length": 64, "max_steps": 2, "batch_size": 2, "eval_before": False},
                           "output_dir": str(tmp_path / "run")})
    task = ExtractiveQATask(cfg, load_tokenizer(folder), None)
    train_f, eval_f = task.prepare()
    assert task.report["answer_positions"] == {"answer_start re-located to the answer text": 1}
    # the span targets cover exactly the Chinese answers (character tokens mapped back through the offsets)
    spans = {}
    for f, rec, text in zip(train_f, task.eval_records, ["曹雪芹", "1898年"], strict=True):
        offsets = task.tokenizer(rec["question"], rec["context"], return_offsets_mapping=True)["offset_mapping"]
        s, e = f["start_positions"], f["end_positions"]
        assert rec["context"][offsets[s][0]:offsets[e][1]] == text
        spans[tuple(f["input_ids"])] = (s, e)
    exact = task.evaluate(SpanOracle(spans), eval_f, torch.device("cpu"))
    assert exact == {"exact_match": 100.0, "f1": 100.0, "qa_scorer": "cmrc_char"}
    # one character too many on the first answer: 曹雪芹， has no extra token (punctuation is dropped) but
    # 曹雪芹，成 has 4 against 3 -> P 3/4, R 1 -> F1 6/7; the second stays exact
    (s, e), key = spans[tuple(train_f[0]["input_ids"])], tuple(train_f[0]["input_ids"])
    longer = task.evaluate(SpanOracle({**spans, key: (s, e + 2)}), eval_f, torch.device("cpu"))
    assert longer["exact_match"] == 50.0 and longer["f1"] == pytest.approx(100 * (6 / 7 + 1) / 2)
    result = fine_tune(cfg, quiet=True)  # the training path with Chinese windows and a span head
    assert result.after["qa_scorer"] == "cmrc_char" and result.steps == 2
