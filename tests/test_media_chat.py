"""Images in `specdec chat`: `/image PATH` or a pasted image path attaches the image to the next
message, which then answers as `generate --image` does; a bad image is one error line and the
chat goes on. On the tiny multimodal fixture (tests/fixtures/media)."""

import io
import shutil

import pytest

from mlx_specdec.chat.session import ChatSession, pasted_path
from mlx_specdec.chat.terminal import run_piped
from mlx_specdec.decode import generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load
from mlx_specdec.media import attach_images, image_placeholders
from mlx_specdec.prompt import chat_ids
from mlx_specdec.settings import GenerationSettings, SamplingParams

from .helpers.paths import FIXTURES, TARGET

MEDIA = FIXTURES / "media"
IMAGE = MEDIA / "image.png"
PROMPT = "Describe it."
GREEDY = GenerationSettings(max_tokens=8, draft=3, sampling=SamplingParams(temp=0.0))


@pytest.fixture(scope="module")
def bundle():
    return load(target=MEDIA / "target", drafter=MEDIA / "assistant")


def generated_with_image(bundle, draft):
    ids = chat_ids(bundle.tokenizer, [{"role": "user", "content": image_placeholders(bundle, 1) + PROMPT}])
    ids, media = attach_images(bundle, ids, [IMAGE])
    return ids, generate(bundle, ids, GenerationSettings(max_tokens=8, draft=draft), media=media).tokens


def test_image_command_then_a_message_equals_generate_with_that_image(bundle):
    session = ChatSession(bundle, GREEDY)
    action = session.command(f"/image {IMAGE}")
    assert not action.error and "attached" in action.message and "60 image tokens" in action.message
    tokens = [r.token for r in session.reply(PROMPT)]
    ids, plain = generated_with_image(bundle, draft=0)
    assert session.last.prompt == ids
    assert tokens == plain
    assert session.images == [] and session.messages[0]["images"] == [str(IMAGE)]
    # The next turn still sees the image (run through the tower again, never from the cache).
    follow = [r for r in session.reply("And now?")]
    assert follow and session.last.prompt[: len(ids)] == ids


def test_pasted_image_path_is_attached_quoted_or_with_escaped_spaces(bundle, tmp_path):
    spaced = tmp_path / "screen shot.png"
    shutil.copy(IMAGE, spaced)
    for line in (f"'{spaced}'", f'"{spaced}"', str(spaced).replace(" ", "\\ ") + "  "):
        assert pasted_path(line) == spaced
    assert pasted_path("what is in this picture.png?") is None and pasted_path(str(tmp_path / "gone.png")) is None
    session = ChatSession(bundle, GREEDY)
    action = session.line_action(str(spaced).replace(" ", "\\ "))
    assert action is not None and not action.error and session.images == [str(spaced)]
    assert session.line_action(PROMPT) is None  # a message


def test_bad_image_in_chat_is_one_error_line_and_the_chat_goes_on(bundle, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    out = io.StringIO()
    run_piped(
        ChatSession(bundle, GenerationSettings(max_tokens=2, draft=0)),
        [f"/image {tmp_path / 'nope.png'}", str(bad), PROMPT],
        out,
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        f"error: {tmp_path / 'nope.png'}: no such image file",
        f"error: {bad}: not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP...)",
    ]
    assert "tokens" in out.getvalue()  # the message after them was answered


def test_image_in_chat_with_a_text_only_target_says_so():
    session = ChatSession(load(target=TARGET), GenerationSettings(draft=0))
    action = session.command(f"/image {IMAGE}")
    assert action.error and "has no vision tower" in action.message and session.images == []


class Relay:
    """Spmd.first between two sessions run one after the other: what the leader (rank 0) read,
    in order, replayed to the follower (another rank), errors included."""

    def __init__(self):
        self.sent = []

    def lead(self, fn):
        try:
            self.sent.append((True, fn()))
        except SpecdecError as e:
            self.sent.append((False, str(e)))
        ok, value = self.sent[-1]
        if not ok:
            raise SpecdecError(value)
        return value

    def follow(self, fn):
        ok, value = self.sent.pop(0)
        if not ok:
            raise SpecdecError(value)
        return value


def test_a_follower_rank_reads_no_file_and_answers_as_rank_0(bundle, tmp_path):
    """Under mlx.launch only rank 0 reads attached files: another rank, whose machine lacks them,
    takes the same branches and answers the same turn from rank 0's reads."""
    pasted = tmp_path / "on rank 0 only.png"
    shutil.copy(IMAGE, pasted)
    relay, answers, actions = Relay(), [], []
    lines = [f"/image {tmp_path / 'missing.png'}", str(pasted).replace(" ", "\\ "), f"/audio {IMAGE}"]
    for first in (relay.lead, relay.follow):
        session = ChatSession(bundle, GREEDY, first=first)
        actions.append([(a.error, a.message) for a in map(session.line_action, lines)])
        answers.append([r.token for r in session.reply(PROMPT)])
        pasted.unlink(missing_ok=True)  # gone before the follower runs, as on another machine
    assert relay.sent == []
    assert actions[0] == actions[1] and [error for error, _ in actions[0]] == [True, False, True]
    assert answers[0] == answers[1] == generated_with_image(bundle, draft=0)[1]
