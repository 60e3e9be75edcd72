"""Instruction tuning, generative QA and translation on tiny models: masking, EOS learning, readers, metrics."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
from tiny_models import save_tiny_llama, save_tiny_t5

from leantune.config import validate_config
from leantune.errors import LeantuneError
from leantune.generate import eos_ids, generate_ids
from leantune.models.loading import load_tokenizer
from leantune.run.loader import load_run
from leantune.tasks import make_task
from leantune.tasks.generative import Example
from leantune.train.loop import fine_tune

COLORS = ["red", "blue", "green", "yellow"]
ROWS = [{"instruction": f"What colour is item {i}?", "input": "", "output": COLORS[i % 4]} for i in range(160)]
CORPUS = [r["instruction"] + " " + r["output"] for r in ROWS] + ["Answer the question with a short phrase",
                                                                 "Context: Question: ### Instruction: Response:"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    return {
        "chat": save_tiny_llama(tmp / "chat", CORPUS),
        "plain": save_tiny_llama(tmp / "plain", CORPUS, chat_template=False),
        "t5": save_tiny_t5(tmp / "t5", CORPUS),
        "tmp": tmp,
    }


def _task(folder, task="instruction", task_args=None, max_length=64, **data):
    cfg = validate_config({"model": folder, "task": task, "task_args": task_args or {},
                           "data": {"train": "unused.jsonl", **data}, "train": {"max_length": max_length}})
    return make_task(cfg, load_tokenizer(folder), folder)


def _trained_text(task, feature):
    ids = [i for i, lab in zip(feature["input_ids"], feature["labels"], strict=True) if lab != -100]
    return task.tokenizer.decode(ids)


def test_only_response_tokens_are_in_the_loss(folders):
    task = _task(folders["chat"])
    ex = Example([{"role": "user", "content": "What colour is item 3?"}], "yellow")
    f = task.encode(ex, Counter())
    assert _trained_text(task, f) == "yellow<|im_end|>\n"  # the answer and the end of turn (EOS): learns to stop
    assert task.tokenizer.decode(f["input_ids"]).startswith("<|im_start|>user\nWhat colour is item 3?")
    plain = _task(folders["plain"])
    fp = plain.encode(ex, Counter())
    assert _trained_text(plain, fp) == "yellow<|im_end|>"
    assert plain.tokenizer.decode(fp["input_ids"]).startswith("### Instruction:\nWhat colour is item 3?")


def test_every_assistant_turn_of_a_chat_is_trained(folders):
    task = _task(folders["chat"])
    ex = Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "red"},
                  {"role": "user", "content": "and?"}], "blue")
    assert _trained_text(task, task.encode(ex, Counter())) == "red<|im_end|>\nblue<|im_end|>\n"


def test_seq2seq_targets_end_with_eos(folders):
    task = _task(folders["t5"])
    f = task.encode(Example([{"role": "user", "content": "What colour is item 3?"}], "yellow"), Counter())
    assert f["labels"][-1] == task.tokenizer.eos_token_id
    assert task.tokenizer.decode(f["labels"], skip_special_tokens=True) == "yellow"


def test_truncation_drops_the_start_of_the_prompt_first(folders):
    task = _task(folders["chat"])
    ex = Example([{"role": "user", "content": "What colour is item 3? " * 30}], "yellow")
    counts = Counter()
    f = task.encode(ex, counts)
    assert len(f["input_ids"]) == 64 and counts == {"truncated": 1}
    assert _trained_text(task, f) == "yellow<|im_end|>\n"
    kept = task.tokenizer.decode(f["input_ids"])
    assert kept.endswith("item 3? <|im_end|>\n<|im_start|>assistant\nyellow<|im_end|>\n")  # the prompt's end
    assert not kept.startswith("<|im_start|>user")  # its start went


def test_a_response_longer_than_max_length_keeps_its_head_and_is_counted(folders):
    task = _task(folders["chat"], max_length=16)
    long = " ".join(["red blue green yellow"] * 10)
    counts = Counter()
    f = task.encode(Example([{"role": "user", "content": "What colour is item 3?"}], long), counts)
    assert len(f["input_ids"]) == 16 and counts == {"truncated": 1, "response_truncated": 1}
    assert all(lab != -100 for lab in f["labels"])  # the whole prompt went first
    assert long.startswith(task.tokenizer.decode(f["input_ids"]))
    t5 = _task(folders["t5"], max_length=8)
    counts = Counter()
    f = t5.encode(Example([{"role": "user", "content": "What colour is item 3? " * 5}], long), counts)
    assert counts == {"truncated": 1, "response_truncated": 1}
    assert len(f["input_ids"]) == len(f["labels"]) == 8
    assert f["input_ids"][-1] == f["labels"][-1] == t5.tokenizer.eos_token_id  # EOS kept after the cut
    assert t5.tokenizer.decode(f["input_ids"], skip_special_tokens=True).rstrip().endswith("item 3?")  # its end
    assert long.startswith(t5.tokenizer.decode(f["labels"], skip_special_tokens=True))  # the target's head


def test_record_styles(folders, tmp_path):
    rows = [
        {"instruction": "Name a colour", "instances": [{"input": "", "output": "red"}, {"input": "warm", "output": "orange"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"prompt": "2+2=", "completion": "4"},
        {"instruction": "Say nothing", "output": ""},
    ]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = _task(folders["chat"])
    examples = []
    for i, style in enumerate(["alpaca", "chat", "prompt_completion", "alpaca"]):
        (tmp_path / f"{i}.jsonl").write_text(json.dumps(rows[i]) + "\n")
        task.cfg.data.format = style
        examples += task.read_examples(str(tmp_path / f"{i}.jsonl"), None, "train")
    assert [e.response for e in examples] == ["red", "orange", "hello", "4"]  # the empty output is skipped, counted
    assert examples[1].messages[0]["content"] == "Name a colour\n\nwarm"
    assert task.report["dropped"] == {"3.jsonl: empty prompt or response": 1}
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    task.cfg.data.format = "chat"
    with pytest.raises(LeantuneError, match=r"bad.jsonl:1: the last message must be the assistant"):
        task.read_examples(str(tmp_path / "bad.jsonl"), None, "train")


def test_squad_as_generative_qa(folders, tmp_path):
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "The sky is blue.", "qas": [
        {"id": "q1", "question": "What colour is the sky?", "answers": [{"text": "blue", "answer_start": 11}]}]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(squad))
    task = _task(folders["chat"], format="squad")
    (ex,) = task.read_examples(str(tmp_path / "s.json"), None, "train")
    assert ex.response == "blue" and "Context: The sky is blue." in ex.messages[0]["content"]
    assert task.score(["Blue."], [ex]) == {"exact_match": 100.0, "f1": 100.0, "qa_scorer": "squad_word"}


def test_generative_qa_trains_on_an_answer_in_the_context_and_scores_chinese_by_character(folders, tmp_path):
    # CMRC 2018 dev: some references have answer_start -1 and a text not in the context
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "丁玲原名蒋伟，笔名莎菲。", "qas": [
        {"id": "a", "question": "原名?", "answers": [{"text": "蒋卫", "answer_start": -1},
                                                    {"text": "蒋伟", "answer_start": 4}]},
        {"id": "b", "question": "笔名?", "answers": [{"text": "莎菲女士", "answer_start": -1}]}]}]}]}
    (tmp_path / "zh.json").write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    task = _task(folders["chat"], format="squad")
    first, second = task.read_examples(str(tmp_path / "zh.json"), None, "train")
    assert first.response == "蒋伟" and first.references == ["蒋卫", "蒋伟"]  # the first answer in the context
    assert second.response == "莎菲女士"  # none in the context: trained as given, and counted
    assert task.report["answer_positions"] == {"zh.json: answer text not in the context (trained as given)": 1}
    # character level (CMRC 2018): 莎菲 against 莎菲女士 -> P 2/2, R 2/4 -> F1 2/3; detected from the references
    scores = task.score(["蒋伟", "莎菲"], [first, second])
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 2 / 3) / 2, "qa_scorer": "cmrc_char"})
    assert _task(folders["chat"], task_args={"language": "en"}).score(["莎菲"], [second])["qa_scorer"] == "squad_word"
    assert _task(folders["chat"], task_args={"language": "中文"}).score(["a"], [Example([], "a")])["qa_scorer"] == \
        "cmrc_char"
    with pytest.raises(LeantuneError, match="task_args.language.*unknown language 'chinse'"):
        _task(folders["chat"], task_args={"language": "chinse"})


def test_translation_readers(folders, tmp_path):
    with gzip.open(tmp_path / "a.en.gz", "wt") as f:
        f.write("the red dog\nthe cat\n\n")
    with gzip.open(tmp_path / "a.de.gz", "wt") as f:
        f.write("der rote hund\ndie katze\nleer\n")
    task = _task(folders["chat"], "translation", {"source_lang": "English", "target_lang": "German"})
    examples = task.read_examples(str(tmp_path / "a.en.gz"), str(tmp_path / "a.de.gz"), "train")
    assert [e.response for e in examples] == ["der rote hund", "die katze"]  # the empty source line is skipped
    assert "Translate this English text into German" in examples[0].messages[0]["content"]
    (tmp_path / "p.tsv").write_text("src\ttgt\nthe dog\tder hund\n")
    task.args.source_column, task.args.target_column = "src", "tgt"
    assert task.read_examples(str(tmp_path / "p.tsv"), None, "train")[0].response == "der hund"
    with gzip.open(tmp_path / "short.de.gz", "wt") as f:
        f.write("eins\n")
    with pytest.raises(LeantuneError, match="aligned line by line"):
        task.read_examples(str(tmp_path / "a.en.gz"), str(tmp_path / "short.de.gz"), "train")
    with pytest.raises(LeantuneError, match="missing key 'task_args.source_lang'"):
        validate_config({"model": "m", "task": "translation", "data": {"train": "x"}})


def _instruction_config(folders, tmp_path, **train):
    (tmp_path / "inst.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return validate_config({
        "model": folders["chat"], "task": "instruction", "method": "lora", "method_args": {"r": 8},
        "task_args": {"eval_max_examples": 16, "max_new_tokens": 12},
        "data": {"train": str(tmp_path / "inst.jsonl"), "format": "alpaca"},
        "train": {"epochs": 4, "batch_size": 8, "lr": 5e-3, "max_length": 64, **train},
        "output_dir": str(tmp_path / "run"),
    })


def test_instruction_tuning_learns_to_answer_and_stop(folders, tmp_path):
    result = fine_tune(_instruction_config(folders, tmp_path), quiet=True)
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert result.after["exact_match"] > result.before["exact_match"]
    preds = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 16 and {"prompt", "reference", "prediction"} <= set(preds[0])
    # it stops: generations end at EOS long before max_new_tokens
    _, task, model = load_run(result.run_dir)
    prompts = [task.tokenizer(task.prompt_text([{"role": "user", "content": f"What colour is item {i}?"}]),
                              add_special_tokens=False)["input_ids"] for i in range(8)]
    out = generate_ids(model, prompts, task.pad_id, eos_ids(model, task.tokenizer), max_new_tokens=12)
    assert sum(len(o) < 12 for o in out) >= 6


def test_packed_and_checkpointed_training_learns(folders, tmp_path):
    cfg = _instruction_config(folders, tmp_path, batch_size=2, packing=True, activation_checkpointing=True)
    result = fine_tune(cfg, quiet=True)
    assert result.steps <= 4 * 144 / 2 / 2  # unpacked: 288 steps; rows hold two or more examples
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert result.after["exact_match"] > result.before["exact_match"]
    with pytest.raises(LeantuneError, match="encoder-decoder"):
        fine_tune(cfg.model_copy(update={"model": folders["t5"], "output_dir": str(tmp_path / "t5")}), quiet=True)
    with pytest.raises(LeantuneError, match="packing cannot be combined with method prompt"):
        validate_config({**cfg.model_dump(), "method": "prompt", "method_args": {}})
