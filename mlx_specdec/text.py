"""Detokenising the output and cutting it at stop strings, without ever taking text back.

`TextStream` appends tokens through mlx-lm's streaming detokenizer. A stop string ends the
text just before it; a tail that could still grow into a stop string is held back until the
next token decides, so every piece handed out is final.
"""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    """The output text of one generation, handed out piece by piece."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.detok = tokenizer.detokenizer
        self.stop = [s for s in stop if s]
        self.text, self.emitted = "", 0

    def add(self, token: int) -> bool:
        """Append a token; True when a stop string now ends the text (the text is cut before it)."""
        self.detok.add_token(token)
        self.text += self.detok.last_segment
        cuts = [c for s in self.stop if (c := self.text.find(s, max(0, self.emitted - len(s) + 1))) >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
        return bool(cuts)

    def piece(self, final: bool) -> str:
        """The text not yet handed out: all of it when final, else up to a possible stop prefix."""
        if final:
            self.detok.finalize()
            self.text += self.detok.last_segment
        end = len(self.text) if final else len(self.text) - self._stop_prefix_len()
        out, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return out

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
