"""Odd files and paths where a model, a config or a prompts file belongs: one line and exit status
1 (or 2 for a path that cannot be typed like that), never a hang, a traceback or a segfault.

A FIFO would block the reader forever, so every test that makes one runs under an alarm: a
regression fails the test instead of hanging the suite.
"""

import os
import signal
from contextlib import contextmanager

import mlx.core as mx
import pytest

from .helpers.bad_input import convert_args, fails, generate_args
from .helpers.convert import copy
from .helpers.paths import DRAFTERS, TARGET


@contextmanager
def no_hang(seconds: int = 20):
    def hung(signum, frame):
        raise AssertionError(f"hung for {seconds} s (a blocking open of a special file?)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def replace_with(path, kind: str) -> str:
    """Put something that is not a regular file at `path` -> what the message calls it."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
        return "a named pipe (FIFO), not a regular file"
    if kind == "folder":
        path.mkdir()
        return "a folder, not a regular file"
    if kind == "dangling link":
        path.symlink_to(path.parent / "gone.safetensors")
        return f"a symbolic link to {path.parent / 'gone.safetensors'}, which does not exist"
    path.symlink_to(path.name)  # a link to itself
    return "a loop of symbolic links, not a file"


KINDS = ["fifo", "folder", "dangling link", "link loop"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["generate", "convert"])
def test_weights_that_are_not_a_regular_file_are_refused_before_opening(tmp_path, kind, command):
    t = copy(TARGET, tmp_path / "t")
    what = replace_with(t / "model.safetensors", kind)
    args = generate_args(t) if command == "generate" else convert_args(tmp_path / "out", t)
    with no_hang():
        fails(tmp_path, args, f"{t / 'model.safetensors'}: {what}; re-download or re-convert it")


@pytest.mark.parametrize("kind", KINDS)
def test_a_config_json_that_is_not_a_regular_file_is_refused_before_opening(tmp_path, kind):
    t = copy(TARGET, tmp_path / "t")
    what = replace_with(t / "config.json", kind)
    with no_hang():
        fails(tmp_path, generate_args(t), f"{t / 'config.json'}: {what}; fix or re-download it")


def test_a_tokenizer_file_that_is_a_fifo_is_refused_before_opening(tmp_path):
    t = copy(TARGET, tmp_path / "t")
    what = replace_with(t / "tokenizer.json", "fifo")
    with no_hang():
        fails(tmp_path, generate_args(t), f"{t / 'tokenizer.json'}: {what}; re-download or re-convert it")


def test_a_prompts_file_that_is_a_fifo_is_refused_before_opening(tmp_path):
    os.mkfifo(tmp_path / "p.jsonl")
    with no_hang():
        fails(
            tmp_path,
            ["bench", "--demo", "--prompts", tmp_path / "p.jsonl"],
            f"{tmp_path / 'p.jsonl'}: a named pipe (FIFO), not a regular file; give a JSONL prompts file",
        )


DEEP = "[" * 100_000 + "]" * 100_000


def test_a_config_nested_100000_deep_is_one_line(tmp_path):
    t = copy(TARGET, tmp_path / "t")
    (t / "config.json").write_text('{"a": ' + DEEP + "}")
    fails(tmp_path, generate_args(t), f"{t / 'config.json'}: JSON nested too deeply to read; fix or re-download it")


def test_a_prompts_line_nested_100000_deep_is_one_line(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": ' + DEEP + "}\n")
    fails(
        tmp_path,
        ["bench", "--demo", "--prompts", tmp_path / "p.jsonl"],
        f'{tmp_path / "p.jsonl"}:1: not valid JSON; expected one {{"prompt": "..."}} object per line',
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["generate", "~nosuchuser-specdec/b", "--prompt-ids", "2"],
            "MODEL ~nosuchuser-specdec/b: there is no user 'nosuchuser-specdec' on this machine, so "
            "~nosuchuser-specdec cannot be expanded; give a full path",
        ),
        (
            ["convert", "--target", "~nosuchuser-specdec/t", "--drafter", DRAFTERS["dense"], "-o", "b"],
            "--target ~nosuchuser-specdec/t: there is no user 'nosuchuser-specdec' on this machine, so "
            "~nosuchuser-specdec cannot be expanded; give a full path",
        ),
        (
            ["convert", "--target", TARGET, "--drafter", DRAFTERS["dense"], "-o", "b" * 300],
            f"-o: the name '{'b' * 24}...' is 300 bytes long, more than the 255 this file system allows; "
            "choose a shorter name",
        ),
        (
            ["bench", "--demo", "--json", "x" * 300 + ".json"],
            f"--json: the name '{'x' * 24}...' is 305 bytes long, more than the 255 this file system allows; "
            "choose a shorter name",
        ),
    ],
)
def test_paths_that_cannot_name_a_file_here_are_usage_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("this file system's name limit is not 255 bytes")
    fails(tmp_path, args, message, code=2)


def test_a_drafter_whose_token_ordering_points_outside_the_vocabulary_is_one_line_not_a_segfault(tmp_path):
    d = copy(DRAFTERS["centroid"], tmp_path / "d")
    weights = mx.load(str(d / "model.safetensors"))
    order = weights["masked_embedding.token_ordering"]
    weights["masked_embedding.token_ordering"] = mx.where(mx.arange(order.size) == 7, 10**6, order).astype(order.dtype)
    mx.save_safetensors(str(d / "model.safetensors"), weights)
    fails(
        tmp_path,
        ["generate", "--target", TARGET, "--drafter", d, "--prompt-ids", "2,5", "-m", "4"],
        f"{d}: masked_embedding.token_ordering holds token id 1000000, outside the vocabulary (0-{order.size - 1}); "
        "re-convert or re-download the drafter",
    )
