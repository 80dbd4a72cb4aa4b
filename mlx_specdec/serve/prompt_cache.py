"""The server's prompt caches: several at once, shared by longest common prefix.

Many sessions (coding agents, several chats) talk to one server; most share a system prompt
and each grows its own conversation. `CachePool` keeps one `PromptCache` per line of talk:

* `take(ids)` finds the entry sharing the longest prefix with the prompt. A prompt that extends
  the entry whole (the next turn of its conversation) takes the entry itself; a prompt that
  diverges from it (another session on the same system prompt, a retry, an edited history)
  gets a COPY trimmed to the common prefix, and the entry stays for the session it belongs to.
  A sliding-window layer holds only its window and a little more behind the entry's end, so
  an entry cannot give a prefix that ends far behind its end: the next best entry is tried.
* `give_back(pc)` returns an entry as the most recently used, and evicts the least recently used
  while the pool holds more than `max_bytes` of K/V. A prompt's snapshot also drops the entries
  it makes redundant (their tokens are a prefix of its own and it reaches as far back); a
  conversation's entry does not, since its next turns move its sliding windows on: the snapshot
  of its first turn then still gives a later session the shared system prompt.
* `keep_for(pc, next_ids, snapshot)`, after an answer: the next turn's prompt is rendered by the
  template, which may differ from what was generated (the thinking is dropped from history), so
  the entry kept is the one holding the longest prefix of that prompt: the answer's cache cut
  back to it, or the snapshot of the prompt taken after prefill. The snapshot not chosen stays
  as an entry of its own: a retry, an edit of the last message, or another session's first turn
  on the same system prompt diverges from the answer's cache where its window no longer reaches.
  The price: memory. A prompt's snapshot and its answer's cache hold its full-attention K/V
  twice, and the snapshots of a conversation's earlier turns stay (each reaches back further
  than the next) until the byte budget evicts them, the least recently used first.

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
        """A cache for this prompt: the entry it extends (removed from the pool), else a copy,
        trimmed to the shared prefix, of the entry sharing the longest prefix that it can still
        give (a sliding window cannot go back far behind its entry's end), else a new one."""
        # the last id always runs again (its logits are needed), so it is never taken from a cache
        shared = [(common_prefix(pc.tokens, ids[:-1]), i) for i, pc in enumerate(self._entries)]
        for n, i in sorted(shared, reverse=True):  # longest first; ties: the most recently used
            if n == 0:
                break
            best = self._entries[i]
            if n == len(best.tokens):
                del self._entries[i]
                return best
            copy = best.copy(n)
            if copy.tokens:
                return copy
        return self._make()

    def keep_for(self, pc, next_ids: Sequence[int], snapshot=None):
        """The cache to keep after an answer: whichever of `pc` (cut back) and `snapshot` holds
        the longer prefix of `next_ids`, the next turn's prompt as the template renders it. A
        snapshot not chosen goes back to the pool as an entry of its own: the prompt, for a retry,
        an edit of the last message or another session's first turn, which the answer's cache
        may no longer give once its sliding window has moved past them."""
        n = common_prefix(pc.tokens, next_ids)
        if snapshot is not None and common_prefix(snapshot.tokens, next_ids) > n:
            pc, n = snapshot, common_prefix(snapshot.tokens, next_ids)
        elif snapshot is not None:
            self.give_back(snapshot, grows=False)
        if n < len(pc.tokens):
            pc.truncate(n)  # resets it when the sliding window no longer holds position n
        return pc

    def give_back(self, pc, grows: bool = True) -> None:
        """Return an entry as the most recently used; evict the oldest while over budget.
        `grows`: the entry is a conversation's, which its next turn extends; its sliding windows
        will then forget what lies behind, so it never makes another entry redundant (a prompt's
        snapshot, `grows=False`, does: it stays as it is)."""
        if not pc.tokens:
            return
        if not grows:  # an entry is redundant when this one holds its tokens and reaches as far back
            self._entries = [e for e in self._entries if not self._covers(pc, e)]
        self._entries.append(pc)
        while self._entries and self.nbytes > self.max_bytes:
            self._entries.pop(0)

    @staticmethod
    def _covers(pc, entry) -> bool:
        """Whether `pc` gives every prefix `entry` gives: it holds entry's tokens and reaches as far back."""
        n = len(entry.tokens)
        return common_prefix(entry.tokens, pc.tokens) == n and _reach(pc) <= _reach(entry)


def _reach(pc) -> int:
    """The shortest prefix a copy of `pc` can hold (0: any); a sliding window forgets what lies
    further back. Copies are lazy views, so the bisection evaluates nothing."""
    lo, hi = 0, len(pc.tokens)  # copy(hi) always works; copy(n) works for every n >= the reach
    while lo < hi:
        mid = (lo + hi) // 2
        if mid == 0 or pc.copy(mid).tokens:
            hi = mid
        else:
            lo = mid + 1
    return lo
