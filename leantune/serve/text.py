"""Generated token ids to text, piece by piece, with stop strings.

Tokens become text through :class:`leantune.detokenize.StreamDecoder` (an incomplete UTF-8 character is held back
until its last byte arrives, a sentencepiece word decodes as it would in the whole text); on top of that, any tail
that could be the start of a stop string is held back too, so what has been streamed never has to be taken back.
"""

from __future__ import annotations

from typing import Any

from leantune.detokenize import StreamDecoder


class TextStream:
    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.decoded = ""  # all complete text so far
        self.sent = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the new text that is safe to send (``stopped`` is set when a stop string appears)."""
        self.decoded += self.decoder.push([token])
        text = self.decoded
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            return self._send(text[:cut])
        return self._send(text[:len(text) - self._held_back(text)])

    def finish(self) -> str:
        """The rest of the text when generation ends for another reason (EOS, length); a character whose bytes
        never completed is dropped, as ``leantune generate`` drops it."""
        if self.stopped:
            return ""
        self.decoded += self.decoder.finish()
        cut = self._stop_at(self.decoded)
        return self._send(self.decoded if cut is None else self.decoded[:cut])

    @property
    def text(self) -> str:
        return self.sent

    def _send(self, upto: str) -> str:
        if not upto.startswith(self.sent) or len(upto) <= len(self.sent):
            return ""
        delta, self.sent = upto[len(self.sent):], upto
        return delta

    def _stop_at(self, text: str) -> int | None:
        start = max(0, len(self.sent) - max((len(s) for s in self.stop), default=0))
        hits = [i for s in self.stop if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of ``text`` that begins some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
