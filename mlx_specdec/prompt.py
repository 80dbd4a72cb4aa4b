"""Messages (or raw text) -> prompt token ids: the one place the chat template is applied.

Every front end (generate, chat, bench, serve) turns what the user wrote into ids here, so a
template quirk is handled once. Text that cannot be encoded (lone surrogates, as Python makes
of non-UTF-8 bytes in command-line arguments or piped input) becomes U+FFFD instead of failing
inside the tokenizer.

`PromptInput` is what a user gave as the prompt (text, text with `raw`, or token ids); it decides
which of those becomes the ids, for `specdec generate`, the bench and any other front end.
Construction checks the combination, so a bad one fails before any model loads.

`enable_thinking` is False unless the caller asks for it: mlx-lm's tokenizer wrapper would
otherwise turn it on for every Gemma 4 tokenizer (it detects the thinking markers), and Gemma
4's template then opens a system turn with `<|think|>` that the user never wrote. A message
the template cannot render is a one-line `SpecdecError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

from .errors import SpecdecError, UsageError

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with every lone surrogate (an undecodable byte) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def _clean(value):
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def chat_ids(
    tokenizer,
    messages: Sequence[dict],
    *,
    tools: Optional[Sequence[dict]] = None,
    add_generation_prompt: bool = True,
    **template_kwargs,
) -> list[int]:
    """messages [{"role", "content", ...}] -> ids through the tokenizer's chat template, ending with
    the model's turn when `add_generation_prompt`. `tools` and `template_kwargs` (such as
    `enable_thinking`) go to the template. A tokenizer without a template (a bare base model)
    gets plain "role: content" lines."""
    messages = [_clean(dict(m)) for m in messages]
    if getattr(tokenizer, "chat_template", None):
        extra = dict(template_kwargs)
        if getattr(tokenizer, "has_thinking", False):  # mlx-lm's wrapper would default it to True
            extra.setdefault("enable_thinking", False)
        if tools:
            extra["tools"] = list(tools)
        try:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **extra)
        except Exception as e:  # noqa: BLE001 - jinja2 errors, KeyError/TypeError on messages it cannot render
            raise SpecdecError(
                f"the chat template cannot render these messages ({' '.join(str(e).split())[:200]})"
            ) from None
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers may return a BatchEncoding
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    text = "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages)
    return text_ids(tokenizer, text + ("assistant:" if add_generation_prompt else ""))


def text_ids(tokenizer, text: str) -> list[int]:
    """Raw text -> ids, no template."""
    return [int(t) for t in tokenizer.encode(clean_text(text))]


def parse_prompt_ids(text: str) -> list[int]:
    """'2, 100,200' -> [2, 100, 200]. An empty entry (1,,2) or ids split by spaces (2 100) are
    refused, never read as fewer or merged ids."""
    parts = [t.strip() for t in text.split(",")]
    if not any(parts):
        raise UsageError("--prompt-ids is empty; give comma-separated token ids such as 2,100,200")
    if "" in parts:
        raise UsageError(f"--prompt-ids has an empty entry in {text!r}; separate the ids with single commas")
    try:
        return [int(t) for t in parts]
    except ValueError:
        raise UsageError(f"--prompt-ids must be comma-separated whole numbers, not {text!r}") from None


@dataclass(frozen=True)
class PromptInput:
    """The prompt as a user gave it; exactly one of `text` and `ids`.

    text: one user turn, through the chat template (`chat_ids`), or as it is with `raw` (`text_ids`).
    ids:  token ids as they are: a list, or comma-separated text (`parse_prompt_ids`, parsed here).
    raw:  applies to `text` only (ids never get the template).
    """

    text: Optional[str] = None
    ids: Union[Sequence[int], str, None] = None
    raw: bool = False

    def __post_init__(self):
        if (self.text is None) == (self.ids is None):
            raise UsageError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
        if self.raw and self.text is None:
            raise UsageError("--raw applies to --prompt text; token ids never get the chat template")
        if isinstance(self.ids, str):
            object.__setattr__(self, "ids", parse_prompt_ids(self.ids))
        elif self.ids is not None:
            object.__setattr__(self, "ids", list(self.ids))

    def encode(self, tokenizer) -> list[int]:
        """The prompt ids for this tokenizer."""
        if self.ids is not None:
            return list(self.ids)
        if self.raw:
            return text_ids(tokenizer, self.text)
        return chat_ids(tokenizer, [{"role": "user", "content": self.text}])
