"""Token ids to text without broken characters.

A Chinese character is three UTF-8 bytes, and byte-level or byte-fallback vocabularies (GPT-2/SmolLM2's, Gemma's
``<0xE4>`` tokens) can spend one token per byte. Decoding stops mid-character when generation hits
``max_new_tokens``, or when a stream is cut between two tokens; tokenizers then put U+FFFD (the replacement
character) where the incomplete bytes were. :func:`complete_text` drops such a tail from a finished generation, and
:class:`StreamDecoder` holds it back while streaming until the rest of the character arrives, so every piece it
hands out is whole text.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


def complete_text(tokenizer: Any, ids: list[int], skip_special_tokens: bool = True) -> str:
    """The text of ``ids`` without a trailing incomplete character (the tokenizer's U+FFFD for its bytes)."""
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).rstrip(REPLACEMENT)


class StreamDecoder:
    """Turns tokens, as they are generated, into text pieces that never split a character.

    ``push(token_ids)`` returns the new text that is complete so far ("" while a character's bytes are still
    arriving); ``finish()`` returns the rest, without the bytes of a character that never completed. Each piece is
    the text of the tokens since the last piece, decoded together with the tokens before them (as vLLM's
    incremental detokenizer does), so tokenizers that spell a token differently at the start of a text (a
    sentencepiece word's leading space) give the same text as decoding everything at once.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:sent] were handed out last time; decoding starts there for context
        self.sent = 0  # ids[:sent] are handed out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_ids: list[int]) -> str:
        self.ids.extend(token_ids)
        before = self._decode(self.ids[self.prefix:self.sent])
        text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(before) or text.endswith(REPLACEMENT):
            return ""  # nothing new, or the last character is incomplete: hold it back
        self.prefix, self.sent = self.sent, len(self.ids)
        return text[len(before):]

    def finish(self) -> str:
        before = self._decode(self.ids[self.prefix:self.sent])
        text = self._decode(self.ids[self.prefix:]).rstrip(REPLACEMENT)
        self.prefix = self.sent = len(self.ids)
        return text[len(before):]
