"""Streamed text: stop strings split across tokens are cut and never half-sent; incomplete characters wait."""

from __future__ import annotations

from leantune.serve.text import TextStream


class CharTokenizer:
    """Token i is the i-th character of ``alphabet``; token 99 is half of a two-token character."""

    alphabet = "abcdefgh END"

    def decode(self, ids, skip_special_tokens=True):
        text = "".join(self.alphabet[i] if i < 99 else "\ufffd" for i in ids)
        return text.replace("\ufffd\ufffd", "é")


def feed(stream, text):
    return [stream.push(CharTokenizer.alphabet.index(c)) for c in text]


def test_a_stop_string_across_tokens_is_held_back_then_cut():
    stream = TextStream(CharTokenizer(), ["END"])
    sent = feed(stream, "abc E")
    assert "".join(sent) == "abc " and not stream.stopped  # "E" may start "END": held back
    sent += feed(stream, "ND")
    assert stream.stopped and "".join(sent) == "abc " and stream.text == "abc "


def test_a_false_start_is_released_and_finish_flushes():
    stream = TextStream(CharTokenizer(), ["END"])
    sent = feed(stream, "aEb")
    assert "".join(sent) == "aEb"
    sent += feed(stream, "E")
    assert "".join(sent) + stream.finish() == "aEbE"


def test_an_incomplete_character_waits_for_its_second_token():
    stream = TextStream(CharTokenizer(), [])
    assert stream.push(0) == "a"
    assert stream.push(99) == ""
    assert stream.push(99) == "é"
