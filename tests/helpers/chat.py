"""A fake loop with the real contract for chat tests: common-prefix reuse of a PromptCache,
one record per token, answering "echo: <last user text>" one character per token, then EOS."""

import io
from types import SimpleNamespace

from mlx_specdec.chat.session import ChatOptions, ChatSession
from mlx_specdec.chat.terminal import run_piped
from mlx_specdec.energy import NullSource
from mlx_specdec.errors import SpecdecError
from mlx_specdec.settings import GenerationSettings, SamplingParams
from mlx_specdec.stats import TokenRecord


class FakeTokenizer:
    chat_template = "yes"
    eos_token_ids = [1]

    def apply_chat_template(self, messages, add_generation_prompt=True):
        ids = [2]
        for m in messages:
            ids += [5] + [ord(c) for c in f"{m['role']}\n{m['content'].strip()}"] + [6]
        return ids + [5] + [ord(c) for c in "assistant\n"]

    def encode(self, text):
        return [ord(c) for c in text]


class FakeCache:
    def __init__(self, bundle):
        self.tokens = []


class FakeLoop:
    """`stream_generate(bundle, ids, settings, *, prompt_cache)`; a user text containing
    "REFUSE" is refused before the first token, as the loop refuses a bad prompt."""

    def __init__(self):
        self.calls, self.closed = [], 0

    def __call__(self, bundle, prompt_ids, settings, *, prompt_cache):
        self.calls.append(
            SimpleNamespace(
                prompt=list(prompt_ids),
                draft=settings.draft,
                sampling=settings.sampling,
                max_tokens=settings.max_tokens,
                battery=settings.battery,
            )
        )
        return self._gen(prompt_ids, settings.max_tokens, settings.draft, prompt_cache)

    def _gen(self, ids, max_tokens, draft, pc):
        user = "".join(chr(t) for t in ids).split("user\n")[-1].split("\x06")[0]
        if "REFUSE" in user:
            raise SpecdecError("the loop refuses this prompt")
        common = 0
        for a, b in zip(pc.tokens, ids[:-1]):
            if a != b:
                break
            common += 1
        new = len(ids) - common
        pc.tokens = list(ids)
        answer = [ord(c) for c in f"echo: {user}"][: max_tokens - 1] + [1]
        k = 2 if draft == "auto" else draft
        try:
            for i, tok in enumerate(answer):
                last = i == len(answer) - 1
                yield TokenRecord(
                    token=tok,
                    text="" if tok == 1 else chr(tok),
                    from_draft=bool(k) and i % 2 == 1,
                    round=(i + 1) // 2,
                    draft_tokens=k if i else 0,
                    accepted=1 if k else 0,
                    prompt_tokens=new,
                    ttft_s=0.01,
                    elapsed_s=0.01 * i,
                    finish_reason="stop" if last else None,
                )
                pc.tokens.append(tok)
        finally:
            self.closed += 1


def bundle(drafter=True):
    return SimpleNamespace(target=None, drafter=object() if drafter else None, tokenizer=FakeTokenizer(), name="fake")


def session(drafter=True, system=None, colour_drafts=False, temp=0.0, **settings):
    loop = FakeLoop()
    settings = GenerationSettings(**{"max_tokens": 512, **settings}, sampling=SamplingParams(temp=temp))
    s = ChatSession(
        bundle(drafter), settings, ChatOptions(system, colour_drafts), stream_fn=loop, cache_factory=FakeCache
    )
    return s, loop


def piped(s, text):
    """Run the piped front end on `text` (str, or bytes for raw input) -> what it printed."""
    out = io.StringIO()
    lines = io.BytesIO(text) if isinstance(text, bytes) else io.StringIO(text)
    run_piped(s, lines, out, energy_source=NullSource())
    return out.getvalue()
