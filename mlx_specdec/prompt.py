"""Messages (or raw text) -> prompt token ids: the one place the chat template is applied.

`chat_ids` renders a conversation with the tokenizer's chat template, ending with the model's
turn when `add_generation_prompt`. A tokenizer without a template (a bare base model) gets
plain "role: content" lines and a final "assistant:", so every front end behaves the same.
"""

from __future__ import annotations

from typing import Optional, Sequence


def chat_ids(
    tokenizer, messages: Sequence[dict], *, tools: Optional[list] = None, add_generation_prompt: bool = True,
    **template_kwargs,
) -> list[int]:
    """[{"role", "content"}, ...] -> token ids through the chat template (tools and template
    arguments such as `enable_thinking` passed on to it)."""
    messages = list(messages)
    if getattr(tokenizer, "chat_template", None):
        kwargs = dict(template_kwargs, add_generation_prompt=add_generation_prompt)
        if tools is not None:
            kwargs["tools"] = tools
        ids = tokenizer.apply_chat_template(messages, **kwargs)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers may return a BatchEncoding
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text_ids(tokenizer, text + ("assistant:" if add_generation_prompt else ""))


def text_ids(tokenizer, text: str) -> list[int]:
    """Raw text -> token ids, no template."""
    return [int(t) for t in tokenizer.encode(text)]
