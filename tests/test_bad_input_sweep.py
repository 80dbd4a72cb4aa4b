"""Bad-input sweep: odd values given to the Python API and the commands give one line, a
`SpecdecError` from the library (never a raw TypeError/AttributeError from deep inside) or
`error: ...` with exit status 1 from the CLI, and never a traceback.
"""

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlx_specdec import provision
from mlx_specdec.cli import app
from mlx_specdec.decode import stream_generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.files import check_output, write_atomically
from mlx_specdec.load import load
from mlx_specdec.settings import GenerationSettings, SamplingParams

from .helpers.paths import DRAFTERS, TARGET

runner = CliRunner()


def one_line_error(result, progress: bool = False, code: int = 1) -> str:
    """The CLI's stderr, asserted to be one `error:` line with exit status `code` (2: a usage
    error) and no traceback (with `progress`, the last line after the command's progress lines)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert (progress or len(lines) == 1) and "Traceback" not in result.output, result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1]


def refused(fn) -> str:
    with pytest.raises(SpecdecError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


# --- settings and sampling values ------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stop": [1, 2]}, "--stop takes text (one string or a list of strings), not 1"),
        ({"battery": "yes"}, "battery must be True, False or None (decide by power source), not 'yes'"),
        ({"sampling": None}, "sampling must be a SamplingParams, not NoneType"),
        ({"sampling": {"temp": 1}}, "sampling must be a SamplingParams, not dict"),
    ],
)
def test_generation_settings_refuse_values_of_the_wrong_type(kwargs, message):
    assert refused(lambda: GenerationSettings(**kwargs)) == message


@pytest.mark.parametrize("stop, held", [(None, ()), ("END", ("END",)), (["a", "", "b"], ("a", "b"))])
def test_stop_none_is_none_and_one_string_is_one_stop_string_not_its_characters(stop, held):
    assert GenerationSettings(stop=stop).stop == held


def test_an_int_too_large_for_a_float_is_refused_not_an_overflow_error():
    assert refused(lambda: SamplingParams(temp=10**400)) == (
        "--temp must be a number >= 0 (0 is greedy), not 1000000000000000000000000000000000000..."
    )


# --- load(): folder arguments ------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": 123}, "MODEL must be a folder path, not int 123"),
        ({"model": ""}, "MODEL is an empty path; give a model folder"),
        ({"target": ""}, "--target is an empty path; give a model folder"),
        ({"target": TARGET, "drafter": ""}, "--drafter is an empty path; give a model folder"),
    ],
)
def test_load_refuses_a_folder_argument_that_is_no_path_or_empty(kwargs, message):
    # "" used to load the current folder and report "config.json: missing"; 123 was a TypeError.
    assert refused(lambda: load(**kwargs)) == message


def test_load_takes_a_folder_name_given_as_bytes(tmp_path):
    assert refused(lambda: load(target=bytes(tmp_path))) == (
        f"{tmp_path}/config.json: missing; expected a Hugging Face or converted model folder"
    )


# --- stream_generate(): arguments of the wrong kind ---------------------------------------------
@pytest.mark.parametrize(
    "ids, settings, message",
    [
        (None, GenerationSettings(), "the prompt must be a list of token ids, not NoneType"),
        ("2,3", GenerationSettings(), "the prompt must be a list of token ids, not str"),
        ([2, 3], None, "settings must be a GenerationSettings, not NoneType"),
        ([2, 3], {"max_tokens": 3}, "settings must be a GenerationSettings, not dict"),
    ],
)
def test_stream_generate_refuses_a_prompt_or_settings_of_the_wrong_kind(bundles, ids, settings, message):
    assert refused(lambda: next(stream_generate(bundles["dense"], ids, settings))) == message


def test_stream_generate_refuses_something_that_is_not_a_bundle():
    message = refused(lambda: next(stream_generate(None, [2, 3])))
    assert message == "stream_generate needs a Bundle from load(), not NoneType"


# --- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["generate", "chat", "serve"])
def test_no_draft_with_a_k_that_drafts_is_refused_not_silently_plain(command):
    args = [command, "--demo", "--no-draft", "-k", "4"] + (["-p", "hi"] if command == "generate" else [])
    r = runner.invoke(app, args)
    assert one_line_error(r, code=2) == "error: --no-draft and -k 4 contradict each other; give one of them"


@pytest.mark.parametrize(
    "args",
    [
        ["chat", "--demo", "--temp", "-1"],
        ["chat", "--demo", "--max-context", "1"],
        ["serve", "--demo", "--top-p", "2"],
        ["bench", "--demo", "--k", "9"],
        ["bench", "--synthetic", "no-such-family"],
        ["generate", "--demo", "-p", "hi", "--parallel", "pipes"],
        ["generate", "--demo", "-p", "hi", "--exactness", "loose"],
        ["generate", "no-such-model", "-p", "hi"],
        ["convert", "--target", str(TARGET), "-o", "out", "--group-size", "48"],
    ],
    ids=lambda a: " ".join(a[:1] + a[-2:]),
)
def test_an_option_value_out_of_range_is_a_usage_error_exit_2_on_every_command(args, tmp_path, monkeypatch):
    """Typer's convention: a value the command line cannot take exits 2, whether typer or the library finds it."""
    monkeypatch.chdir(tmp_path)  # convert's -o out, were it ever written
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.output.strip(), r.output


def checksums(root: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def convert_cli(output, *extra):
    args = ["convert", "--target", str(TARGET), "--drafter", str(DRAFTERS["dense"]), "-o", str(output), *extra]
    return runner.invoke(app, args)


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_convert_onto_a_file_or_a_foreign_folder_never_advises_a_force_that_would_refuse(tmp_path, force):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.js").write_text("mine")
    before = checksums(tmp_path)
    assert one_line_error(convert_cli(tmp_path / "notes.txt", *force)) == (
        f"error: {tmp_path / 'notes.txt'} is a file, not a bundle; refusing to replace it, choose another -o"
    )
    assert one_line_error(convert_cli(tmp_path / "app", *force)) == (
        f"error: {tmp_path / 'app'} exists and is not a bundle; refusing to replace it, choose another -o"
    )
    assert checksums(tmp_path) == before


def test_convert_with_an_empty_output_name_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("mine")
    before = checksums(tmp_path)
    for force in ([], ["--force"]):
        assert one_line_error(convert_cli("", *force), code=2) == "error: -o is empty; give the bundle folder to create"
    assert checksums(tmp_path) == before


@pytest.mark.slow  # a subprocess loading the demo pair
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) for a stdout that is full")
@pytest.mark.parametrize("json_out", [[], ["--json"]])
def test_generate_onto_a_full_stdout_is_one_line_not_a_traceback(json_out):
    # Was `OSError: [Errno 28] No space left on device` with a traceback, and another at exit.
    code = "from mlx_specdec.__main__ import main; main()"
    args = ["generate", "--demo", "--prompt-ids", "2,40,41", "-m", "3", "--draft-tokens", "2", *json_out]
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-c", code, *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120
        )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1:] == [
        "error: cannot write the output (No space left on device); free space or send it elsewhere"
    ]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": "big"}, 'hidden_size must be a whole number >= 0, not "big"; fix or re-download it'),
        ({"hidden_size": None}, "missing config key 'hidden_size'"),
    ],
)
def test_synthetic_config_file_with_a_bad_or_missing_key_names_the_file(tmp_path, change, message):
    # A string was a TypeError traceback from inside the model; a missing key did not name the file.
    config = json.loads((TARGET / "config.json").read_text())
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(config))
    r = runner.invoke(app, ["bench", "--synthetic", str(path), "--no-auto", "--k", "2", "--bits", "16"])
    assert one_line_error(r, progress=True) == f"error: {path}: {message}"


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_port_out_of_range_is_one_line_before_loading(port):
    # Was `OverflowError: bind(): port must be 0-65535.` with a traceback.
    r = runner.invoke(app, ["serve", "--demo", "--port", port])
    assert one_line_error(r, code=2) == f"error: --port must be 0-65535 (0: any free port), not {port}"


def test_a_client_gone_before_its_request_body_arrived_is_a_499_not_an_unexpected_error():
    # Was "unexpected error" with a ClientDisconnect traceback in the server log (and a 500).
    from starlette.requests import ClientDisconnect

    from mlx_specdec.serve.api import ApiError
    from mlx_specdec.serve.app import _read_json

    class GoneRequest:
        headers = {"content-length": "100"}

        async def stream(self):
            yield b'{"messa'
            raise ClientDisconnect()

    with pytest.raises(ApiError) as e:
        asyncio.run(_read_json(GoneRequest(), limit=1000))
    assert (e.value.status, e.value.message) == (
        499,
        "the client closed the connection before the whole request body arrived",
    )


# --- writing the user's files: links and special files ------------------------------------------
def test_writing_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    # The rename used to replace the link itself with a regular file (the user's link lost).
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "results.json"
    real.write_text("old")
    link = tmp_path / "results.json"
    link.symlink_to(real)
    check_output(link, "--json")
    write_atomically(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["results.json"]  # no temporary left


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_writing_to_a_fifo_writes_into_it_instead_of_renaming_a_file_over_it(tmp_path):
    # `--json /dev/stdout` is the same case: renaming over it replaced /dev/stdout (as root) or was
    # refused as "cannot write in /dev".
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    check_output(fifo, "--json")
    write_atomically(fifo, lambda f: f.write(b'{"ok": 1}'))
    reader.join(timeout=10)
    assert got == [b'{"ok": 1}']
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_cache_folder_name_that_is_not_utf8_is_shown_escaped(tmp_path, monkeypatch):
    # Was printed as a lone surrogate ('\udcff'), which a terminal or log cannot show.
    cache = os.fsdecode(bytes(tmp_path) + b"/cache\xff")
    monkeypatch.setenv("MLX_SPECDEC_CACHE", cache)
    monkeypatch.setattr(provision, "check_memory_fit", lambda *a, **k: None)  # any machine's memory
    r = runner.invoke(app, ["generate", "e2b", "-p", "hi"])
    assert one_line_error(r) == (
        f"error: no google/gemma-4-E2B-it bundle in {tmp_path}/cache\\xff and the Hugging Face hub is "
        "unreachable (offline?); try `specdec chat --demo`, or pass a converted bundle folder"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-tokens", "0"], "error: --max-tokens must be a whole number >= 1, not 0"),
        (["--body-timeout", "0"], "error: --body-timeout must be more than 0 seconds, not 0.0"),
    ],
)
def test_serve_bad_limits_are_one_line_before_loading(args, message):
    r = runner.invoke(app, ["serve", "--demo", "--port", "0", *args])
    assert one_line_error(r, code=2) == message
