"""Chinese text through reading, cleaning, language detection, tokenisation and batching (tiny data made here)."""

from __future__ import annotations

from collections import Counter

import pytest

from leantune.config import CleanConfig, validate_config
from leantune.data.bad_rows import BadRows
from leantune.data.batching import pad_batch
from leantune.data.cleaning import clean_records, clean_text
from leantune.data.language import (
    detect_language,
    is_spaceless,
    join_cjk_spaces,
    language_code,
    language_name,
)
from leantune.data.readers import read_records
from leantune.errors import LeantuneError


def test_language_names_and_codes():
    assert [language_code(n) for n in ("zh", "Chinese", "zh-CN", "中文", "ZH_hans", "en", "English", "de",
                                       "Deutsch", "fr", "French", "pt-BR")] == \
        ["zh", "zh", "zh", "zh", "zh", "en", "en", "de", "de", "fr", "fr", "pt"]
    assert language_code("Klingon") == "klingon" and language_code(None) is None
    assert [language_name(n) for n in ("zh", "en", "de", "fr", "Chinese", "Klingon")] == \
        ["Chinese", "English", "German", "French", "Chinese", "Klingon"]
    assert is_spaceless("Chinese") and is_spaceless("ja") and not is_spaceless("en") and not is_spaceless(None)
    assert detect_language(["今天天气很好。", "我喜欢Python 3"]) == "zh"
    assert detect_language(["The weather is fine.", "北京"]) is None


def test_spaces_between_chinese_characters_are_removed_and_counted():
    # IWSLT subtitles keep their line breaks as spaces, also after a full-width comma
    assert join_cjk_spaces("去年我给各位展示了两个 关于北极冰帽的演示 在过去三百万年中") == (
        "去年我给各位展示了两个关于北极冰帽的演示在过去三百万年中", 2)
    assert join_cjk_spaces("小镇名叫Livingston， 这是我儿时的卧室") == ("小镇名叫Livingston，这是我儿时的卧室", 1)
    assert join_cjk_spaces("我 love 你 and TED 演讲") == ("我 love 你 and TED 演讲", 0)  # next to Latin: kept


def test_nfkc_makes_full_width_ascii_half_width_and_length_limits_count_characters():
    cfg = CleanConfig()
    assert clean_text("ＡＢＣ１２３，很好！  不错　ｏｋ", cfg) == "ABC123,很好!不错 ok"
    assert clean_text("很好 不错", cfg.model_copy(update={"cjk_spaces": False})) == "很好 不错"
    # min/max_chars count characters: a Chinese review without a single space is not "one word"
    rows = [{"text": t} for t in ("很好", "这个酒店很好", "这个酒店的服务态度非常非常好", "这个酒店很好")]
    kept, report = clean_records(rows, cfg.model_copy(update={"min_chars": 3, "max_chars": 10}), ["text"])
    assert [r["text"] for r in kept] == ["这个酒店很好"]
    assert report == Counter({"shorter than 3 chars": 1, "longer than 10 chars": 1, "duplicate": 1})


def test_tsv_is_read_with_quoting_off(tmp_path):
    # ChnSentiCorp: quote characters inside unquoted fields, some at the start of a field
    (tmp_path / "d.tsv").write_text('label\ttext\n1\t"好"的酒店，推荐\n0\t他说"不好\n1\t还行"\n0\t"房间小\n',
                                    encoding="utf-8")
    rows = read_records(str(tmp_path / "d.tsv"))
    assert [r["text"] for r in rows] == ['"好"的酒店，推荐', '他说"不好', '还行"', '"房间小']
    assert [r["_source"].rsplit(":", 1)[1] for r in rows] == ["2", "3", "4", "5"]
    # a row that does not split into the header's columns is never silently merged: an error, or a counted skip
    (tmp_path / "bad.tsv").write_text("label\ttext\n1\t好\t多余\n0\t差\n", encoding="utf-8")
    with pytest.raises(LeantuneError, match=r"bad.tsv:2: more fields than the header"):
        read_records(str(tmp_path / "bad.tsv"))
    bad = BadRows("skip")
    assert [r["text"] for r in read_records(str(tmp_path / "bad.tsv"), bad=bad)] == ["差"]
    assert bad.total == 1


def test_chinese_tokenisation_and_batching_round_trip(tmp_path):
    from tiny_models import save_tiny_llama
    from transformers import AutoConfig, AutoTokenizer

    from leantune.tasks.classification import ClassificationTask

    corpus = ["这个酒店很好，服务也不错。", "房间太小了，不推荐。", "Wi-Fi 很快，早餐一般。"] * 4
    folder = save_tiny_llama(tmp_path / "m", corpus, chat_template=False)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or "<pad>"
    cfg = validate_config({"model": "m", "data": {"train": "x.tsv"}, "train": {"max_length": 64}})
    task = ClassificationTask(cfg, tok, AutoConfig.from_pretrained(folder))
    task.labels = ["0", "1"]
    records = [{"text": clean_text(t, cfg.data.clean), "label": lab}
               for t, lab in [("这个酒店很好， 服务也不错。", "1"), ("房间太小了！", "0"), ("ＷＩＦＩ很快", "1")]]
    assert [r["text"] for r in records] == ["这个酒店很好,服务也不错。", "房间太小了!", "WIFI很快"]
    features = task.encode(records, True, Counter())
    batch = pad_batch(features, tok.pad_token_id)
    assert batch["input_ids"].shape == (3, max(len(f["input_ids"]) for f in features))
    for row, mask, rec in zip(batch["input_ids"], batch["attention_mask"], records, strict=True):
        assert tok.decode(row[mask.bool()].tolist()) == rec["text"]  # every character survives
    assert batch["targets"].tolist() == [1, 0, 1]
