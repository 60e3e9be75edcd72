"""Chinese QA scoring (CMRC 2018 character level) and BLEU with the zh tokenizer, against hand-computed values;
answer positions that are off are re-located, or dropped and counted."""

from __future__ import annotations

import pytest

from leantune.data.qa_formats import locate_answer
from leantune.tasks.qa_metrics import qa_scores, token_f1
from leantune.tasks.qa_metrics_zh import cmrc_exact_match, cmrc_f1, longest_common_run, mixed_segmentation
from leantune.tasks.translation_metrics import bleu_tokenizer, translation_scores


def test_mixed_segmentation():
    assert mixed_segmentation("北京大学2008年举办Olympic Games！") == [
        "北", "京", "大", "学", "2008", "年", "举", "办", "olympic", "games"]
    assert mixed_segmentation("《红楼梦》，作者：曹雪芹。") == ["红", "楼", "梦", "作", "者", "曹", "雪", "芹"]
    assert mixed_segmentation("C-3PO 与 R2D2") == ["c", "3po", "与", "r2d2"]


def test_character_level_em_and_f1_by_hand():
    # pred 北京大学 (4 tokens), gold 北京 (2): longest common run 2 -> P 2/4, R 2/2 -> F1 2/3
    assert cmrc_f1("北京大学", "北京") == pytest.approx(2 / 3)
    # pred 在北京 (3), gold 北京大学 (4): common run 北京 -> P 2/3, R 2/4 -> F1 4/7
    assert cmrc_f1("在北京", "北京大学") == pytest.approx(4 / 7)
    # the official F1 counts the longest *contiguous* common run, not a bag of tokens: 京北 vs 北京 -> 1 of 2
    assert longest_common_run(list("京北"), list("北京")) == 1 and cmrc_f1("京北", "北京") == pytest.approx(0.5)
    assert cmrc_f1("上海", "北京") == 0.0
    assert cmrc_exact_match("1998 年。", "1998年") == 1.0 and cmrc_exact_match("《红楼梦》", "红楼梦") == 1.0
    assert cmrc_exact_match("1999年", "1998年") == 0.0
    assert token_f1("北京大学", "北京") == 0.0  # why SQuAD's whitespace F1 is wrong for Chinese


def test_the_scorer_follows_the_language():
    preds, refs = ["北京大学", "1998年"], [["北京", "北京市"], ["1998年", "一九九八年"]]
    zh = qa_scores(preds, refs)  # detected from the references
    assert zh["exact_match"] == pytest.approx(50.0) and zh["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert qa_scores(preds, refs, "Chinese") == zh
    assert qa_scores(preds, refs, "en")["f1"] == pytest.approx(50.0)  # forced word level: only the exact one
    assert qa_scores(["Paris, France"], [["Paris"]])["f1"] == pytest.approx(100 * 2 / 3)  # English stays SQuAD


def test_bleu_for_chinese_uses_the_zh_tokenizer():
    assert [bleu_tokenizer(lang) for lang in ("zh", "Chinese", "zh-TW", "de", "English", "th")] == [
        "zh", "zh", "zh", "13a", "13a", "char"]
    assert bleu_tokenizer(None, ["我喜欢猫。"]) == "zh" and bleu_tokenizer(None, ["I like cats."]) == "13a"
    # characters: 1-grams 7/9, 2-grams 6/8, 3-grams 5/7, 4-grams 4/6, same length -> (5/18) ** (1/4)
    scores = translation_scores(["我喜欢吃苹果和香蕉"], ["我喜欢吃苹果和西瓜"], "zh")
    assert scores["bleu"] == pytest.approx(100 * (5 / 18) ** 0.25, abs=1e-6)
    assert scores["bleu_tokenizer"] == "zh" and 0 < scores["chrf"] < 100
    # the default 13a tokenizer sees one "word" per sentence: no n-gram matches at all
    assert translation_scores(["我喜欢吃苹果和香蕉"], ["我喜欢吃苹果和西瓜"], "de")["bleu"] == 0.0


def test_answer_positions_are_relocated_or_dropped():
    context = "莎菲，笔名莎菲。她说：莎菲很好。"
    assert locate_answer(context, "笔名莎菲。", 3) == 3  # right
    assert locate_answer(context, "笔名莎菲。", 2) == 3  # off by one (CMRC 2018 train has 21 such)
    assert locate_answer(context, "莎菲", 9) == 11  # the occurrence nearest to the given start
    assert locate_answer(context, "莎菲", -1) == 0
    assert locate_answer(context, "不在这里", 0) is None


def test_extractive_qa_counts_relocated_and_missing_answers(tmp_path):
    import json

    from tiny_models import save_tiny_bert
    from transformers import AutoConfig, AutoTokenizer

    from leantune.config import validate_config
    from leantune.tasks.extractive_qa import ExtractiveQATask

    ctx = "the movie was great and the food was bad"
    qas = [{"id": "a", "question": "movie", "answers": [{"text": "great", "answer_start": 14}]},
           {"id": "b", "question": "food", "answers": [{"text": "bad", "answer_start": 30}]},  # off: at 37
           {"id": "c", "question": "room", "answers": [{"text": "superb", "answer_start": 0}]}]  # not there
    (tmp_path / "q.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": [
        {"context": ctx, "qas": qas}]}]}))
    cfg = validate_config({"model": "m", "task": "extractive_qa", "data": {"train": str(tmp_path / "q.json")},
                           "train": {"max_length": 32}})
    folder = save_tiny_bert(tmp_path / "bert")
    task = ExtractiveQATask(cfg, AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder))
    features = task.featurize(task.read(str(tmp_path / "q.json"), "train"), train=True)
    assert len(features) == 2
    assert task.report["answer_positions"] == {"answer_start re-located to the answer text": 1,
                                               "answer text not in the context": 1}
    bad = features[1]
    span = bad["input_ids"][bad["start_positions"]:bad["end_positions"] + 1]
    assert task.tokenizer.decode(span) == "bad"
