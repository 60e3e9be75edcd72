"""SQuAD normalisation, EM and F1 against hand-computed values; BLEU/chrF through sacrebleu."""

import pytest

from leantune.tasks.qa_metrics import exact_match, normalize_answer, qa_scores, token_f1


def test_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Eiffel tower", "Eiffel Tower.") == 1.0
    # pred tokens: paris france ; gold: paris  -> precision 1/2, recall 1 -> F1 2/3
    assert token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "") == 1.0
    scores = qa_scores(["Paris, France", "blue"], [["Paris", "the city of Paris"], ["Blue!"]])
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_translation_metrics():
    from leantune.tasks.generative import Example
    from leantune.tasks.translation import TranslationArgs, TranslationTask

    task = TranslationTask.__new__(TranslationTask)
    task.args = TranslationArgs(source_lang="English", target_lang="German")
    refs = ["das rote haus ist sehr gross", "der blaue hund schlaeft im garten"]
    ex = [Example([], r) for r in refs]
    perfect = task.score(refs, ex)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert perfect["bleu_tokenizer"] == "13a"
    worse = task.score(["das haus ist sehr klein", "ein hund schlaeft im haus"], ex)
    assert worse["chrf"] < perfect["chrf"] and worse["bleu"] < perfect["bleu"]
