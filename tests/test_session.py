"""The chat session against a fake loop: history, slash commands as actions, settings changes,
context trimming, /save; then a second turn on the real loop."""

import errno
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from mlx_specdec.chat import terminal as chat
from mlx_specdec.chat.session import Action, ChatSession
from mlx_specdec.errors import SpecdecError
from mlx_specdec.settings import GenerationSettings, parse_draft

from .helpers.chat import piped, session


@pytest.fixture(autouse=True)
def no_mlx_memory(monkeypatch):
    monkeypatch.setattr(chat, "memory", lambda: (None, None))
    monkeypatch.setattr(chat, "reset_peak_memory", lambda: None)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_second_turn_sends_the_whole_conversation_and_prefills_only_the_new_turn():
    s, loop = session()
    piped(s, "hi\nagain\n")
    first, second = loop.calls
    assert second.prompt[: len(first.prompt)] == first.prompt
    # The cache holds the first prompt and the answer: only what follows is prefilled.
    assert s.last.records[0].prompt_tokens == len(second.prompt) - len(first.prompt) - len("echo: hi")
    assert s.last.prompt_len == len(second.prompt)
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert s.messages[1]["content"] == "echo: hi"  # no EOS text


def test_slash_commands_change_the_next_turn():
    s, loop = session()
    out = piped(s, "/draft 3\na\n/draft off\nb\n/draft auto\n/temp 0.7\nc\n/help\n")
    assert [c.draft for c in loop.calls] == [3, 0, "auto"]
    assert loop.calls[2].sampling.temp == 0.7
    assert "draft length: 3" in out and "draft length: off" in out and "temperature: 0.7" in out
    assert "/save FILE" in out  # the help text


def test_commands_return_actions_and_settings_changes_make_new_values():
    s, _ = session()
    before = s.settings
    assert s.command("/temp 0.5") == Action("temperature: 0.5")
    assert s.settings is not before and before.sampling.temp == 0.0 and s.settings.sampling.temp == 0.5
    assert s.command("/stats") == Action(stats=True)
    assert s.command("/quit") == Action("bye", quit=True)
    assert s.command("/draft 9") == Action("draft tokens must be 0-8, 'auto' or 'off', not '9'", error=True)
    assert s.command("/colour") == Action("drafted tokens coloured: on") and s.options.colour_drafts


def test_temp_that_is_not_a_finite_number_is_refused_and_the_setting_kept():
    s, _ = session(temp=0.3)
    for bad in ("inf", "nan", "-1", "hot"):
        assert s.command(f"/temp {bad}") == Action(f"/temp needs a finite number >= 0, not {bad!r}", error=True)
    assert s.settings.sampling.temp == 0.3


def test_reset_forgets_the_conversation_and_the_cache():
    s, loop = session()
    piped(s, "a\n")
    cache = s.prompt_cache
    assert piped(s, "/reset\n").strip() == "conversation and prompt cache cleared"
    assert s.messages == [] and s.prompt_cache is not cache
    piped(s, "b\n")
    assert s.last.records[0].prompt_tokens == len(loop.calls[-1].prompt)


def test_save_writes_the_conversation_as_json(tmp_path):
    s, _ = session(system="be brief")
    piped(s, f"hi\n/save {tmp_path / 'c.json'}\n")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["model"] == "fake"
    assert data["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "echo: hi"},
    ]
    assert data["settings"]["draft"] == "auto" and data["settings"]["system"] == "be brief"


def test_save_counts_the_messages_it_writes_system_prompt_included(tmp_path):
    s, _ = session(system="be brief")
    piped(s, "hi\n")
    path = tmp_path / "c.json"
    assert s.command(f"/save {path}") == Action(f"saved 3 messages to {path}")
    assert len(json.loads(path.read_text())["messages"]) == 3


def test_save_on_a_full_disk_is_one_error_line_and_leaves_the_old_file_whole(tmp_path, monkeypatch):
    s, _ = session()
    path = tmp_path / "c.json"
    piped(s, "first\n")
    s.command(f"/save {path}")
    piped(s, "second " * 2000 + "\n")  # the next save is longer than the fake disk's room
    old = sha(path)
    real_fdopen, written = os.fdopen, []

    class FullDisk:  # the first 4096 bytes reach the disk, then it is full
        def __init__(self, fd, *args, **kwargs):
            self.f = real_fdopen(fd, *args, **kwargs)

        def write(self, data):
            written.append(self.f.write(data[:4096]))
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", FullDisk)
    action = s.command(f"/save {path}")
    monkeypatch.undo()
    assert action == Action(f"{path}: cannot write (No space left on device)", error=True)
    assert written == [4096]
    assert sha(path) == old and os.listdir(tmp_path) == ["c.json"]  # no cut-off file, no temporary left


def test_save_onto_a_folder_is_one_error_line_and_the_folder_is_untouched(tmp_path):
    s, _ = session()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    folder = tmp_path / "d"
    assert s.command(f"/save {folder}") == Action(f"{folder}: cannot write (Is a directory)", error=True)
    assert os.listdir(tmp_path) == ["d"] and (tmp_path / "d" / "keep.txt").read_text() == "mine"


def test_save_over_an_existing_file_keeps_its_permissions(tmp_path):
    s, _ = session()
    path = tmp_path / "c.json"
    path.write_text("old")
    path.chmod(0o640)
    s.command(f"/save {path}")
    assert path.stat().st_mode & 0o777 == 0o640 and json.loads(path.read_text())["messages"] == []


def test_stopping_an_answer_closes_the_loop_and_keeps_the_partial_answer():
    s, loop = session()
    reply = s.reply("tell me a story")
    pieces = [next(reply).text for _ in range(3)]
    reply.close()  # what Ctrl-C does
    assert loop.closed == 1
    assert s.messages[-1] == {"role": "assistant", "content": "".join(pieces)}
    piped(s, "more\n")  # the chat goes on
    assert s.messages[-1]["content"] == "echo: more"


def test_without_a_drafter_decoding_is_plain_and_draft_cannot_be_turned_on(capsys):
    s, loop = session(drafter=False)
    piped(s, "/draft 4\na\n")
    assert "error: no drafter loaded: plain decoding only" in capsys.readouterr().err
    assert loop.calls[0].draft == 0


def test_plain_turns_give_the_speed_up_baseline():
    s, _ = session()
    piped(s, "/draft off\nplain\n")
    assert s.plain_tokens_per_s and s.plain_tokens_per_s > 0
    out = piped(s, "/draft auto\nspec\n")
    assert "speed-up 1.00x" in out  # the fake runs at one speed


def test_unknown_command_and_bad_arguments_are_error_lines_on_stderr(capsys):
    s, _ = session()
    out = piped(s, "/frobnicate\n/temp hot\n/save\n")
    assert out == ""  # nothing on the answer stream
    assert capsys.readouterr().err.splitlines() == [
        "error: unknown command /frobnicate; /help lists them",
        "error: /temp needs a finite number >= 0, not 'hot'",
        "error: /save needs a file name",
    ]


def test_parse_draft():
    assert parse_draft("auto") == "auto" and parse_draft("off") == 0 and parse_draft("4") == 4
    with pytest.raises(SpecdecError, match=r"^draft tokens must be 0-8, 'auto' or 'off', not 'many'$"):
        parse_draft("many")
    with pytest.raises(SpecdecError, match=r"^draft tokens must be 0-8, 'auto' or 'off', not '9'$"):
        parse_draft("9")


# ---------------------------------------------------------------------------------------------
# Long conversations: a rejected turn is never kept; old turns make room, the system prompt stays.


def test_a_message_too_long_for_the_context_is_refused_and_not_kept():
    s, loop = session(max_context=60, max_tokens=8)
    piped(s, "hi\n")
    history = list(s.messages)
    with pytest.raises(
        SpecdecError,
        match=r"^this message needs 2\d\d tokens and its answer at least one more, but the context holds 60; "
        r"it was not added: shorten it or raise --max-context$",
    ):
        s.reply("x" * 200)
    assert s.messages == history and len(loop.calls) == 1
    list(s.reply("ok"))  # the next turn works
    assert [m["content"] for m in s.messages if m["role"] == "user"] == ["hi", "ok"]


def test_a_turn_the_loop_refuses_leaves_the_history_as_it_was():
    s, _ = session()
    piped(s, "hi\n")
    history = list(s.messages)
    last = s.last
    with pytest.raises(SpecdecError, match="^the loop refuses this prompt$"):
        list(s.reply("REFUSE"))
    assert s.messages == history and s.last is last  # /stats still shows the last real answer


def test_when_the_history_outgrows_the_context_the_oldest_turns_go_and_the_system_prompt_stays():
    s, loop = session(system="sys", max_context=100, max_tokens=20)
    out = piped(s, "one\ntwo\nthree\n").splitlines()
    # Each turn is ~37 tokens with its answer: room for 80 of the 100 means two turns at most.
    users = [m["content"] for m in s.messages if m["role"] == "user"]
    assert users == ["two", "three"] and s.last.dropped == 2
    assert all(len(c.prompt) + 20 <= 100 for c in loop.calls)
    prompt = "".join(chr(t) for t in loop.calls[-1].prompt)
    assert prompt.startswith("\x02\x05system\nsys\x06") and "one" not in prompt
    assert "oldest messages dropped" not in out[1]
    assert out[-1].endswith(" · 2 oldest messages dropped to fit the context")


def test_context_defaults_to_the_models_max_position_embeddings_and_cannot_exceed_it():
    s, _ = session()
    s.bundle.target = type("T", (), {"config": {"max_position_embeddings": 4096}})()
    assert s.context_limit == 4096
    s.settings = replace(s.settings, max_context=256)
    assert s.context_limit == 256
    with pytest.raises(SpecdecError, match=r"^--max-context 5000 is more than the model's 4096 positions; "):
        ChatSession(
            s.bundle,
            replace(s.settings, max_context=5000),
            stream_fn=lambda *a, **k: iter(()),
            cache_factory=lambda b: None,
        )


def test_a_draft_length_without_a_drafter_is_refused_but_auto_means_plain():
    s, _ = session(drafter=False)
    assert s.settings.draft == 0
    with pytest.raises(SpecdecError, match=r"^draft tokens 4 need a drafter; load one, or use --no-draft$"):
        session(drafter=False, draft=4)


# ---------------------------------------------------------------------------------------------
# The real loop on the tiny fixture pair (random weights: the text is noise, the mechanics real).

FIXTURES = Path(__file__).parent / "fixtures"
PAIR = {"target": str(FIXTURES / "target_text"), "drafter": str(FIXTURES / "drafter_dense")}


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b[:-1]):  # the loop always runs the last prompt token again
        if x != y:
            break
        n += 1
    return n


@pytest.mark.slow  # the quick loop keeps a cheaper check of the same idea
def test_real_loop_second_turn_prefills_only_what_the_cache_does_not_hold():
    from mlx_specdec.load import load

    s = ChatSession(load(**PAIR), GenerationSettings(max_tokens=12))
    first = list(s.reply("hello there"))
    assert first[0].prompt_tokens == s.last.prompt_len  # a fresh cache: everything prefilled
    held = list(s.prompt_cache.tokens)
    assert held[: s.last.prompt_len] == s.last.prompt
    second = list(s.reply("and again"))
    reused = common_prefix(held, s.last.prompt)
    assert reused > len(held) // 2
    assert second[0].prompt_tokens == s.last.prompt_len - reused


THOUGHT = "<|channel>thought weighing it up<channel|>the answer"  # one line: piped input


def test_thinking_is_never_printed_raw_and_think_shows_it(monkeypatch):
    s, _ = session()
    out = piped(s, THOUGHT + "\n/think\n")
    assert "<|channel>" not in out and "<channel|>" not in out
    assert "echo: the answer\n" in out  # the answer without its thinking
    assert "weighing it up\n" in out  # /think prints the last answer's thinking
    assert s.messages[-1] == {"role": "assistant", "content": "echo: the answer"}  # history keeps no thinking


def test_think_on_asks_the_template_to_think_and_bad_arguments_are_errors():
    s, _ = session()
    seen = []
    s.bundle.tokenizer.apply_chat_template = lambda messages, add_generation_prompt=True, **kw: (
        seen.append(kw) or [2, 3]
    )
    assert s.command("/think on").message == "thinking: on"
    s.prompt_ids()
    assert seen[-1] == {"enable_thinking": True}
    assert s.command("/think off").message == "thinking: off"
    s.prompt_ids()
    assert "enable_thinking" not in seen[-1] or seen[-1]["enable_thinking"] is False
    bad = s.command("/think maybe")
    assert bad.error and bad.message == "/think takes on, off or nothing, not 'maybe'"
    assert s.command("/think").message == "the last answer did no thinking"
