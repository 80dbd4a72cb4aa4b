"""Messages or raw text -> prompt token ids: the one place the chat template is applied.

Every front end (generate, chat, bench, serve) builds its prompt here, so a conversation renders
the same way whichever one sends it.

Invariants:
* `enable_thinking` is False unless the caller asks for it. mlx-lm's tokenizer wrapper would
  otherwise turn it on for every Gemma 4 tokenizer (it detects the thinking markers), and
  Gemma 4's template then adds `<|think|>` to a system turn the user never wrote.
* Template failures (a message the template cannot render) are one-line `SpecdecError`s.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import SpecdecError


def chat_ids(tokenizer, messages: Sequence[dict], *, tools: Sequence[dict] | None = None,
             add_generation_prompt: bool = True, **template_kwargs) -> list[int]:
    """Render `messages` (OpenAI-style dicts) and `tools` through the tokenizer's chat template."""
    template_kwargs.setdefault("enable_thinking", False)
    if not getattr(tokenizer, "chat_template", None):
        # No template (a base model): the turns' text, one after another.
        return text_ids(tokenizer, "\n".join(str(m.get("content") or "") for m in messages))
    try:
        ids = tokenizer.apply_chat_template(
            list(messages), tools=list(tools) if tools else None,
            add_generation_prompt=add_generation_prompt, tokenize=True, **template_kwargs,
        )
    except Exception as e:  # noqa: BLE001 - jinja2 errors (TemplateError, TypeError, KeyError on odd messages)
        raise SpecdecError(f"the chat template cannot render these messages ({' '.join(str(e).split())[:200]})") from None
    if hasattr(ids, "keys"):  # a BatchEncoding
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def text_ids(tokenizer, text: str) -> list[int]:
    """Raw text, no template (the tokenizer adds its BOS token as it would for any prompt)."""
    return [int(t) for t in tokenizer.encode(text)]
