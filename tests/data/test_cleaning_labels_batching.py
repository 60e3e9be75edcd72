"""Cleaning counts, label maps and splits, length-grouped batches and padding."""

from collections import Counter

from leantune.config import CleanConfig
from leantune.data.batching import length_grouped_batches, pad_batch
from leantune.data.cleaning import clean_records, clean_text
from leantune.data.labels import build_label_map, stratified_split


def test_clean_text():
    cfg = CleanConfig(strip_html=True, lowercase=True)
    assert clean_text("  <b>Ｆｕｌｌ</b>&amp;  width\n text ", cfg) == "full & width text"
    assert clean_text("keep <b>tags</b>", CleanConfig()) == "keep <b>tags</b>"


def test_every_drop_is_counted():
    rows = [{"text": t} for t in ["ok", "  ", "ok", "x", "a very long text indeed", "fine"]]
    kept, report = clean_records(rows, CleanConfig(min_chars=2, max_chars=10), ["text"])
    assert [r["text"] for r in kept] == ["ok", "fine"]
    assert report == Counter({"empty": 1, "duplicate": 1, "shorter than 2 chars": 1, "longer than 10 chars": 1})
    assert len(kept) + sum(report.values()) == len(rows)


def test_label_map_orders_numbers_numerically():
    assert build_label_map(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert build_label_map(["pos", "neg"]) == ["neg", "pos"]


def test_stratified_split_keeps_proportions_and_is_seeded():
    labels = ["a"] * 80 + ["b"] * 20
    train, held = stratified_split(labels, 0.25, seed=3)
    assert sorted(train + held) == list(range(100))
    assert Counter(labels[i] for i in held) == Counter({"a": 20, "b": 5})
    assert (train, held) == stratified_split(labels, 0.25, seed=3)
    assert held != stratified_split(labels, 0.25, seed=4)[1]


def test_length_grouped_batches_cover_everything_once_with_little_padding():
    import random

    lengths = [random.Random(i).randint(1, 100) for i in range(1000)]
    batches = length_grouped_batches(lengths, 16, seed=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    naive = sum(len(b) * max(lengths[i] for i in b) for b in [list(range(i, min(i + 16, 1000))) for i in range(0, 1000, 16)])
    assert padded < 0.75 * naive
    assert batches != length_grouped_batches(lengths, 16, seed=1)  # reshuffled per epoch seed


def test_pad_batch():
    out = pad_batch([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "targets": 1},
                     {"input_ids": [5], "attention_mask": [1], "targets": 0}], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["targets"].tolist() == [1, 0]
    left = pad_batch([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [5], "labels": [5]}], 0, "left")
    assert left["input_ids"].tolist() == [[5, 6], [0, 5]] and left["labels"].tolist() == [[5, 6], [-100, 5]]
