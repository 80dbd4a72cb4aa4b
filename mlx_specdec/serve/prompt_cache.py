"""The server's prompt caches: several at once, shared by longest common prefix.

Many sessions (coding agents, several chats) talk to one server; most share a system prompt
and each grows its own conversation. `CachePool` keeps one `PromptCache` per line of talk:

* `take(ids)` finds the entry sharing the longest prefix with the prompt. A prompt that extends
  the entry whole (the next turn of its conversation) takes the entry itself; a prompt that
  diverges from it (another session on the same system prompt, a retry, an edited history)
  gets a COPY trimmed to the common prefix, and the entry stays for the session it belongs to.
* `give_back(pc)` returns an entry as the most recently used, drops the entries it makes
  redundant (their tokens are a prefix of its own), and evicts the least recently used while
  the pool holds more than `max_bytes` of K/V.
* `keep_for(pc, next_ids, snapshot)`, after an answer: the next turn's prompt is rendered by the
  template, which may differ from what was generated (the thinking is dropped from history), so
  the entry kept is the one holding the longest prefix of that prompt: the answer's cache cut
  back to it, or the snapshot taken after prefill when the sliding window cannot be cut back.

All of it runs on the worker thread (mlx is not thread-safe).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..cache import common_prefix


class CachePool:
    """A bounded LRU of PromptCaches, matched by the longest common token prefix."""

    def __init__(self, make: Callable[[], object], max_bytes: int):
        self._make, self.max_bytes = make, max_bytes
        self._entries: list = []  # least recently used first

    @property
    def nbytes(self) -> int:
        return sum(pc.nbytes for pc in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, ids: Sequence[int]):
        """A cache for this prompt: the entry it extends (removed from the pool), a copy of the
        entry it shares the longest prefix with (trimmed to that prefix), or a new one."""
        best, best_n = None, 0
        for pc in self._entries:
            n = common_prefix(pc.tokens, ids[:-1])  # the last id always runs again
            if n and n >= best_n:  # ties: the most recently used
                best, best_n = pc, n
        if best is None:
            return self._make()
        if best_n == len(best.tokens):
            self._entries.remove(best)
            return best
        return best.copy(best_n)

    def keep_for(self, pc, next_ids: Sequence[int], snapshot=None):
        """The cache to keep after an answer: whichever of `pc` (cut back) and `snapshot` holds
        the longer prefix of `next_ids`, the next turn's prompt as the template renders it."""
        n = common_prefix(pc.tokens, next_ids)
        if snapshot is not None and common_prefix(snapshot.tokens, next_ids) > n:
            pc, n = snapshot, common_prefix(snapshot.tokens, next_ids)
        if n < len(pc.tokens):
            pc.truncate(n)  # resets it when the sliding window no longer holds position n
        return pc

    def give_back(self, pc) -> None:
        """Return an entry as the most recently used; evict the oldest while over budget."""
        if not pc.tokens:
            return
        self._entries = [e for e in self._entries if common_prefix(e.tokens, pc.tokens) < len(e.tokens)]
        self._entries.append(pc)
        while self._entries and self.nbytes > self.max_bytes:
            self._entries.pop(0)
