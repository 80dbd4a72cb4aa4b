"""One chat conversation on the speculative loop: history, settings, prompt cache, slash commands.

- `ChatSession.reply(text)` adds the user's turn, fits the conversation into the context and
  returns the answer's record stream. Each turn renders the whole conversation with
  `prompt.chat_ids`; the loop prefills only what follows the prefix the `PromptCache` still
  holds (`TokenRecord.prompt_tokens`). Closing the stream (Ctrl-C) closes the loop's generator,
  whose `finally` rewinds the caches; the partial answer stays in the conversation.
- Fitting: when the conversation plus room for an answer (`max_tokens`, at most half the
  context) no longer fits the context, the oldest turns are dropped, never the system prompt
  or the new message; `Turn.dropped` says how many messages went, for the panel and summary.
- A rejected turn (too long even alone, or refused by the loop before its first token) leaves
  the history exactly as it was, so the next turn works.
- Images: `/image PATH`, or a line that is just an image file's path (as a terminal's
  drag-and-drop pastes it: quoted, or with backslash-escaped spaces), attaches the image to the
  next message; the message keeps its image paths, and every turn runs the conversation's images
  through `media.py` again (placeholders look alike whatever the image, so their K/V is never
  taken from the prompt cache).
- `ChatSession.command(line)` runs one slash command and returns an `Action`; every front end
  acts on it the same way (show the message, the error or the stats; quit when asked).

Invariants: `settings` is always a valid `GenerationSettings`: a change builds a new value with
`dataclasses.replace` in `_change`, whose constructor validates it. `messages` never holds a
rejected turn. Nothing here prints, reads the terminal or touches mlx memory counters.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

from ..energy import Battery
from ..errors import SpecdecError
from ..files import user_path, write_atomically
from ..gemma_format import parse
from ..media import image_placeholders, spec_of
from ..media_audio import MediaPrompt, attach_clip, audio_placeholders, expand_media
from ..prompt import chat_ids, clean_text
from ..settings import GenerationSettings, draft_label, parse_draft
from ..stats import RunStats, TokenRecord

HELP = """\
/help            this help
/reset           forget the conversation (and the prompt cache)
/stats           the status panel of the last answer
/draft K|auto|off  draft length: K tokens per round, adaptive, or plain decoding
/temp T          sampling temperature (0 = greedy)
/colour          colour the tokens that came from the drafter (toggle)
/think [on|off]  show the last answer's thinking, or turn thinking on or off
/image PATH      attach an image to your next message (or paste its path alone on a line);
                 /image lists what is attached, /image clear drops it
/audio PATH      attach an audio clip (WAV, FLAC, MP3, OGG) to your next message (E2B/E4B);
                 /audio lists, /audio clear drops
/save FILE       write the conversation as JSON
/quit            leave (also Ctrl-D); Ctrl-C stops the current answer"""

CHAT_SETTINGS = GenerationSettings(max_tokens=512)  # what `specdec chat` starts with
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
# .m4a too: a pasted voice memo gets the line that says how to convert it, not a reply to its path
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".aif", ".aiff", ".m4a")


def pasted_path(line: str) -> Optional[Path]:
    """The image or audio file a line names on its own, as a terminal's drag-and-drop pastes it
    ('quoted', "quoted" or with backslash-escaped spaces; ~ expanded); None when the line is
    anything else."""
    text = line.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    else:
        text = re.sub(r"\\(.)", r"\1", text)
    if not text or "\n" in text or not text.lower().endswith(IMAGE_SUFFIXES + AUDIO_SUFFIXES):
        return None
    try:
        path = Path(text).expanduser()
        return path if path.is_file() else None
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return None


NA = "n/a"


@dataclass(frozen=True)
class Status:
    """What the caller knows that the records do not.

    draft:               the draft setting in use, as the user wrote it: "auto", "4" or "off".
    plain_tokens_per_s:  plain decoding speed measured on this machine (None: speed-up is n/a).
    active/peak_memory_bytes: from the backend (None: n/a).
    energy_joules:       energy over this answer so far (None: no energy source).
    energy_watts:        mean power over the same interval.
    energy_measuring:    the source publishes in batches (IOReport: about every 2 s) and no full
                         period has passed yet: the view says "measuring", not numbers.
    energy_source:       the source's name ("IOReport", "RAPL", "n/a").
    battery:             level and power source (None: no battery or unknown).
    context_limit:       tokens the context holds (None: unknown).
    dropped_messages:    old messages dropped so that this turn fits the context.
    """

    draft: str = "auto"
    plain_tokens_per_s: Optional[float] = None
    active_memory_bytes: Optional[int] = None
    peak_memory_bytes: Optional[int] = None
    energy_joules: Optional[float] = None
    energy_watts: Optional[float] = None
    energy_measuring: bool = False
    energy_source: str = NA
    battery: Optional[Battery] = None
    context_limit: Optional[int] = None
    dropped_messages: int = 0


@dataclass(frozen=True)
class ChatOptions:
    """What only the chat has: the system prompt, whether drafted tokens are coloured, and
    whether the model is asked to think first (the template's `enable_thinking`)."""

    system: Optional[str] = None
    colour_drafts: bool = False
    thinking: bool = False


@dataclass(frozen=True)
class Action:
    """What a front end does after a slash command.

    message: a line (or the help) for the user; with `error`, print it as `error: <message>`.
    stats:   show the last answer's statistics (the panel on a terminal, the summary piped).
    quit:    leave after showing the message.
    """

    message: str = ""
    error: bool = False
    stats: bool = False
    quit: bool = False


@dataclass
class Turn:
    """The last answer: its prompt ids, records, status and how many old messages made room."""

    records: list = field(default_factory=list)
    prompt: list = field(default_factory=list)
    status: Status = field(default_factory=Status)
    dropped: int = 0

    @property
    def prompt_len(self) -> Optional[int]:
        return len(self.prompt) if self.prompt else None


def _owned_policies(bundle):
    """`decode.stream_generate` with the session's own draft-length policies: auto calibrates once
    and what it learns carries over from one turn to the next."""
    from ..calibrate import Policies
    from ..decode import stream_generate

    policies = Policies(bundle)

    def stream(bundle, ids, settings, *, prompt_cache, media=None):
        policy = policies.get(settings.draft, settings.battery)
        return stream_generate(bundle, ids, settings, prompt_cache=prompt_cache, policy=policy, media=media)

    return stream


class ChatSession:
    """The conversation, its settings and the prompt cache kept between turns.

    `stream_fn` and `cache_factory` default to `decode.stream_generate` and `cache.PromptCache`;
    tests inject fakes with the same signatures. `first(fn)` runs what reads the user's files
    (attached images and clips, a pasted path): under mlx.launch rank 0 reads them and every rank
    gets its result (distributed.Spmd.first); alone, fn(). Raises SpecdecError for a draft length
    without a drafter, or a --max-context beyond the model's.
    """

    def __init__(
        self,
        bundle,
        settings: GenerationSettings = CHAT_SETTINGS,
        options: ChatOptions = ChatOptions(),
        *,
        stream_fn=None,
        cache_factory=None,
        first=None,
    ):
        if stream_fn is None:
            stream_fn = _owned_policies(bundle)
        if cache_factory is None:
            from ..cache import PromptCache

            cache_factory = PromptCache
        if bundle.drafter is None and settings.draft not in (0, "auto"):
            raise SpecdecError(f"draft tokens {settings.draft} need a drafter; load one, or use --no-draft")
        self.bundle = bundle
        self.settings = replace(settings, draft=0) if bundle.drafter is None else settings
        _ = self.context_limit  # a --max-context beyond the model's fails now, not at the first turn
        # Undecodable bytes in --system become U+FFFD here too, so /save can write them.
        self.options = replace(options, system=clean_text(options.system)) if options.system else options
        self._stream = stream_fn
        self._first = first or (lambda fn: fn())
        self._cache_factory = cache_factory
        self.messages: list[dict] = []  # user and assistant turns; the system prompt is in options
        self.prompt_cache = cache_factory(bundle)
        self.last = Turn()
        self.plain_speeds: list[float] = []  # decode tok/s of plain turns: the speed-up baseline
        self.images: list[str] = []  # image paths attached to the next message
        self.clips: list[str] = []  # audio paths attached to the next message (after its images)

    # -- the conversation --------------------------------------------------------------------
    @property
    def context_limit(self) -> int:
        """Tokens the context holds: --max-context, else the model's."""
        return self.settings.context_limit(getattr(self.bundle.target, "config", None) or {})

    def all_messages(self, messages: Optional[list[dict]] = None) -> list[dict]:
        """The system prompt (if any) followed by `messages` (default: the conversation)."""
        system = [{"role": "system", "content": self.options.system}] if self.options.system else []
        return system + list(self.messages if messages is None else messages)

    def prompt_ids(self, messages: Optional[list[dict]] = None) -> list[int]:
        """The conversation through the chat template, ending with the model's turn; each image's
        placeholder expanded (media.expand_images)."""
        return self._prompt(messages)[0]

    def _prompt(self, messages: Optional[list[dict]] = None) -> tuple[list[int], Optional[MediaPrompt]]:
        """(prompt ids, the conversation's images read and placed, or None without images)."""
        extra = {"enable_thinking": True} if self.options.thinking else {}
        everything = self.all_messages(messages)
        plain = [{k: v for k, v in m.items() if k not in ("images", "audio")} for m in everything]
        ids = chat_ids(self.bundle.tokenizer, plain, **extra)
        images = [path for m in everything for path in m.get("images") or ()]
        clips = [path for m in everything for path in m.get("audio") or ()]
        if not images and not clips:
            return ids, None
        return self._first(lambda: expand_media(self.bundle, ids, images, clips))

    def reply(self, text: str) -> Iterator[TokenRecord]:
        """Add the user's turn (with the attached images, before its text) and return the
        answer's record stream. The answer joins the conversation even when the caller stops
        early (close() / Ctrl-C); `self.last` holds this turn's prompt at once and its records
        as they come. Raises SpecdecError (history unchanged, attachments dropped) when the
        message cannot fit the context even alone."""
        before = (list(self.messages), self.last)
        message = {"role": "user", "content": text}
        if self.images or self.clips:  # images, then clips, then the text
            images, clips, self.images, self.clips = self.images, self.clips, [], []
            places = image_placeholders(self.bundle, len(images)) if images else ""
            places += audio_placeholders(self.bundle, len(clips)) if clips else ""
            message = {"role": "user", "content": places + text}
            message.update({k: v for k, v in (("images", images), ("audio", clips)) if v})
        kept, prompt, images = self._fit(before[0] + [message])
        self.messages = kept
        self.last = Turn([], prompt, dropped=len(before[0]) + 1 - len(kept))
        return self._stream_answer(prompt, self.last.records, before, images)

    def _fit(self, messages: list[dict]) -> tuple[list[dict], list[int], Optional[MediaPrompt]]:
        """Drop the oldest turns until the prompt and room for an answer fit the context."""
        (prompt, images), limit = self._prompt(messages), self.context_limit
        room = min(self.settings.max_tokens, limit // 2)
        while len(prompt) + room > limit and len(messages) > 1:
            n = 1  # the oldest user message and the answers that follow it
            while n < len(messages) - 1 and messages[n]["role"] != "user":
                n += 1
            messages = messages[n:]
            prompt, images = self._prompt(messages)
        if len(prompt) >= limit:
            raise SpecdecError(
                f"this message needs {len(prompt)} tokens and its answer at least one more, "
                f"but the context holds {limit}; "
                "it was not added: shorten it or raise --max-context"
            )
        return messages, prompt, images

    def _stream_answer(
        self,
        prompt: list[int],
        records: list[TokenRecord],
        before: tuple[list[dict], Turn],
        images: Optional[MediaPrompt] = None,
    ) -> Iterator[TokenRecord]:
        stream, rejected = None, False
        try:
            media = {} if images is None else {"media": images.encode(self.bundle)}  # the towers
            stream = self._stream(self.bundle, prompt, self.settings, prompt_cache=self.prompt_cache, **media)
            for record in stream:
                records.append(record)
                yield record
        except Exception:
            rejected = not records  # refused before its first token: the turn never happened
            raise
        finally:
            if stream is not None:
                stream.close()  # the loop rewinds its caches in its own finally
            if rejected:
                self.messages, self.last = before
            else:
                self.messages.append({"role": "assistant", "content": self._answer_text(records)})
                stats = RunStats.from_records(records)
                if self.settings.draft == 0 and stats.decode_tokens_per_s > 0:
                    self.plain_speeds.append(stats.decode_tokens_per_s)

    def _raw_text(self, records: list[TokenRecord]) -> str:
        eos = set(getattr(self.bundle.tokenizer, "eos_token_ids", ()) or ())
        if records and records[-1].finish_reason == "stop" and records[-1].token in eos:
            records = records[:-1]
        return "".join(r.text for r in records)

    def _answer_text(self, records: list[TokenRecord]) -> str:
        """What the history keeps of an answer: its text without the thinking channel (Gemma 4's
        template drops earlier thinking too)."""
        return parse(self._raw_text(records), tools=False).content

    @property
    def plain_tokens_per_s(self) -> Optional[float]:
        return statistics.median(self.plain_speeds) if self.plain_speeds else None

    def reset(self) -> None:
        self.messages = []
        self.images, self.clips = [], []
        self.prompt_cache = self._cache_factory(self.bundle)
        self.last = Turn()

    def save(self, path: Union[str, Path]) -> tuple[Path, int]:
        """Write the conversation (system prompt included) as JSON -> (path, messages written)."""
        path = user_path(path, "/save")
        messages = self.all_messages()
        data = {
            "model": self.bundle.name,
            "settings": {**asdict(self.settings), **asdict(self.options)},
            "messages": messages,
        }
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        write_atomically(path, lambda f: f.write(text.encode("utf-8")), "/save")
        return path, len(messages)

    def attach_image(self, path: Union[str, Path]) -> Action:
        """Attach an image to the next message, read now so that a bad one is one error line."""
        path = Path(path).expanduser()
        spec = spec_of(self.bundle)  # a target without a vision tower says so here
        patches = self._first(lambda: spec.read(path))
        self.images.append(str(path))
        return Action(f"attached {path} ({patches.soft_tokens} image tokens) to your next message")

    def attach_audio(self, path: Union[str, Path]) -> Action:
        """Attach an audio clip to the next message (after its images), read now."""
        path = Path(path).expanduser()
        tokens = self._first(lambda: attach_clip(self.bundle, path))  # no audio tower: said here
        self.clips.append(str(path))
        return Action(f"attached {path} ({tokens} audio tokens) to your next message")

    # -- slash commands ----------------------------------------------------------------------
    def line_action(self, line: str) -> Optional[Action]:
        """What a line does when it is not a message: a slash command, or an image or audio
        file's path pasted alone (attached). None: the line is a message."""
        path = self._first(lambda: pasted_path(line))
        if path is not None:
            try:
                if path.name.lower().endswith(AUDIO_SUFFIXES):
                    return self.attach_audio(path)
                return self.attach_image(path)
            except SpecdecError as e:
                return Action(str(e), error=True)
        return self.command(line) if line.startswith("/") else None

    def command(self, line: str) -> Action:
        """Run one slash command. Bad arguments come back as an error action, never raised."""
        name, _, arg = line.strip().partition(" ")
        try:
            return self._command(name.lower(), arg.strip())
        except SpecdecError as e:
            return Action(str(e), error=True)

    def _command(self, name: str, arg: str) -> Action:
        if name in ("/quit", "/exit", "/q"):
            return Action("bye", quit=True)
        if name in ("/help", "/?"):
            return Action(HELP)
        if name == "/reset":
            self.reset()
            return Action("conversation and prompt cache cleared")
        if name == "/stats":
            return Action(stats=True)
        if name == "/draft":
            if not arg:
                return Action(f"draft length: {draft_label(self.settings.draft)} (use /draft K|auto|off)")
            draft = parse_draft(arg)
            if draft != 0 and self.bundle.drafter is None:
                return Action("no drafter loaded: plain decoding only", error=True)
            self._change(draft=draft)
            return Action(f"draft length: {draft_label(draft)}")
        if name == "/temp":
            try:
                temp = float(arg)
            except ValueError:
                temp = math.nan
            try:
                self._change(sampling=replace(self.settings.sampling, temp=temp))
            except SpecdecError:  # SamplingParams checks the range
                return Action(f"/temp needs a finite number >= 0, not {arg!r}", error=True)
            return Action(f"temperature: {temp:g}")
        if name in ("/colour", "/color"):
            self.options = replace(self.options, colour_drafts=not self.options.colour_drafts)
            return Action(f"drafted tokens coloured: {'on' if self.options.colour_drafts else 'off'}")
        if name == "/think":
            if arg.lower() in ("on", "off"):
                self.options = replace(self.options, thinking=arg.lower() == "on")
                return Action(f"thinking: {arg.lower()}")
            if arg:
                return Action(f"/think takes on, off or nothing, not {arg!r}", error=True)
            reasoning = parse(self._raw_text(self.last.records), tools=False).reasoning.strip()
            return Action(reasoning or "the last answer did no thinking")
        if name == "/image":
            if arg.lower() == "clear":
                self.images = []
                return Action("no image attached")
            if not arg:
                return Action(f"attached: {', '.join(self.images)}" if self.images else "no image attached")
            return self.attach_image(pasted_path(arg) or arg)
        if name == "/audio":
            if arg.lower() == "clear":
                self.clips = []
                return Action("no audio attached")
            if not arg:
                return Action(f"attached: {', '.join(self.clips)}" if self.clips else "no audio attached")
            return self.attach_audio(pasted_path(arg) or arg)
        if name == "/save":
            if not arg:
                return Action("/save needs a file name", error=True)
            path, n = self.save(arg)
            return Action(f"saved {n} messages to {path}")
        return Action(f"unknown command {name}; /help lists them", error=True)

    def _change(self, **fields) -> None:
        """The one place settings change: a new validated value (SpecdecError if invalid)."""
        self.settings = replace(self.settings, **fields)
