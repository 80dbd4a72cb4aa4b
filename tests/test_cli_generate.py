"""`specdec generate` through typer's CliRunner: JSON schema, trace, one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from mlx_specdec.cli import app
from mlx_specdec.errors import SpecdecError

from .helpers.paths import DRAFTERS, TARGET

runner = CliRunner()
BASE = ["generate", "--target", str(TARGET), "--drafter", str(DRAFTERS["dense"])]


def test_generate_json_has_documented_schema_and_trace():
    r = runner.invoke(app, BASE + ["--prompt-ids", "2,40,41,42", "-m", "12", "-k", "3", "--json", "--trace"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) == {"prompt_ids", "token_ids", "text", "stats", "rounds"}
    assert {
        "prompt_tokens",
        "generated_tokens",
        "rounds",
        "drafted",
        "accepted",
        "mean_accepted_per_round",
        "acceptance_rate",
        "ttft_s",
        "decode_tokens_per_s",
        "peak_memory_bytes",
    } <= set(out["stats"])
    assert out["stats"]["prompt_tokens"] == 4
    assert out["rounds"][0]["position"] == 4 and len(out["rounds"][0]["drafted"]) == 3


def test_generate_no_draft_equals_speculative_output():
    a = runner.invoke(app, BASE + ["--prompt", "Explain lists", "-m", "20", "--no-draft", "--json"])
    b = runner.invoke(app, BASE + ["--prompt", "Explain lists", "-m", "20", "-k", "4", "--json"])
    assert json.loads(a.stdout)["token_ids"] == json.loads(b.stdout)["token_ids"]


def test_generate_bad_folder_is_one_line_error_without_traceback(tmp_path):
    r = runner.invoke(app, ["generate", "--target", str(tmp_path / "nope"), "--prompt", "hi"])
    assert r.exit_code == 2
    assert r.output.strip() == f"error: {tmp_path / 'nope'}: no such folder"


def test_generate_bad_draft_tokens_is_one_line_error():
    r = runner.invoke(app, BASE + ["--prompt", "hi", "-k", "12"])
    assert r.exit_code == 2
    assert r.output.strip() == "error: draft tokens must be 0-8, 'auto' or 'off', not '12'"


def one_line_error(r, exit_code=1):
    """The CLI's failure shape: one `error: ...` line, the exit status, no traceback."""
    assert r.exit_code == exit_code, r.output
    assert "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    return lines[0]


@pytest.mark.parametrize(
    "ids, message",
    [
        ("2,5,999999", "error: token id 999999 is outside the vocabulary (0-511); give ids below 512"),
        ("2,512", "error: token id 512 is outside the vocabulary (0-511); give ids below 512"),
        ("2,-1", "error: token id -1 is outside the vocabulary (0-511); give ids below 512"),
        (
            "2,99999999999999999999",
            "error: token id 99999999999999999999 is outside the vocabulary (0-511); give ids below 512",
        ),
        ("2,x", "error: --prompt-ids must be comma-separated whole numbers, not '2,x'"),
        (",", "error: --prompt-ids is empty; give comma-separated token ids such as 2,100,200"),
        ("2,,40", "error: --prompt-ids has an empty entry in '2,,40'; separate the ids with single commas"),
        ("2,40,", "error: --prompt-ids has an empty entry in '2,40,'; separate the ids with single commas"),
        ("2 40", "error: --prompt-ids must be comma-separated whole numbers, not '2 40'"),
    ],
)
def test_prompt_ids_outside_the_vocabulary_are_refused_in_one_line(ids, message):
    assert one_line_error(runner.invoke(app, BASE + ["--prompt-ids", ids]), exit_code=2) == message


def test_library_refuses_out_of_vocabulary_ids_before_touching_the_model(bundles):
    from mlx_specdec.decode import stream_generate

    with pytest.raises(SpecdecError, match=r"^token id 999999 is outside the vocabulary"):
        next(stream_generate(bundles["dense"], [2, 999999]))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", "-1"], "error: --seed must be a whole number from 0 to 2^64 - 1, not -1"),
        (["--seed", str(2**64)], f"error: --seed must be a whole number from 0 to 2^64 - 1, not {2**64}"),
        (["--temp", "nan"], "error: --temp must be a number >= 0 (0 is greedy), not nan"),
        (["--temp", "inf"], "error: --temp must be a number >= 0 (0 is greedy), not inf"),
        (["--temp", "-1"], "error: --temp must be a number >= 0 (0 is greedy), not -1.0"),
        (["--top-p", "0"], "error: --top-p must be in (0, 1] (1 turns it off), not 0.0"),
        (["--top-p", "2"], "error: --top-p must be in (0, 1] (1 turns it off), not 2.0"),
        (["--min-p", "1.5"], "error: --min-p must be in [0, 1] (0 turns it off), not 1.5"),
        (["--top-k", "-3"], "error: --top-k must be a whole number >= 0 (0 turns it off), not -3"),
        (["-m", "0"], "error: --max-tokens must be a whole number >= 1, not 0"),
        (["-m", "-5"], "error: --max-tokens must be a whole number >= 1, not -5"),
        (
            ["--max-context", "0"],
            "error: --max-context must be a whole number >= 2 (or left out for the model's limit), not 0",
        ),
        (
            ["--max-context", "99999"],
            "error: --max-context 99999 is more than the model's 4096 positions; use at most 4096",
        ),
        (["--trace"], "error: --trace adds the rounds to the JSON output; add --json"),
    ],
)
def test_bad_generation_options_are_one_line_errors(args, message):
    assert one_line_error(runner.invoke(app, BASE + ["--prompt-ids", "2,40,41"] + args), exit_code=2) == message


def test_bad_seed_is_refused_before_the_model_loads(tmp_path):
    # The folder does not exist: the seed's error comes first, so nothing was loaded.
    r = runner.invoke(app, ["generate", "--target", str(tmp_path / "nope"), "--prompt", "hi", "--seed", "-1"])
    assert one_line_error(r, exit_code=2) == "error: --seed must be a whole number from 0 to 2^64 - 1, not -1"


def test_draft_tokens_without_a_drafter_is_an_error_not_silent_plain_decoding():
    r = runner.invoke(app, ["generate", "--target", str(TARGET), "--prompt-ids", "2,40", "-k", "4"])
    assert one_line_error(r) == "error: draft tokens 4 need a drafter; load one, or use --no-draft"


def test_model_and_demo_together_are_refused():
    r = runner.invoke(app, ["generate", str(TARGET), "--demo", "--prompt", "hi"])
    assert (
        one_line_error(r, exit_code=2) == "error: --demo is the bundled pair; give either --demo or a model, not both"
    )


@pytest.mark.slow
def test_non_utf8_prompt_text_is_decoded_with_replacement_not_a_traceback():
    # Python hands undecodable argv bytes over as lone surrogates (surrogateescape).
    r = runner.invoke(app, BASE + ["--prompt", "caf\udce9 \udcff", "-m", "4", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["token_ids"]) == 4


def test_model_that_does_not_fit_memory_is_refused_before_loading(monkeypatch):
    from mlx_specdec import provision

    monkeypatch.setattr(provision, "available_memory", lambda: (1 << 20, "RAM"))
    line = one_line_error(runner.invoke(app, ["generate", str(TARGET), "--prompt-ids", "2,40", "--max-context", "64"]))
    assert line.startswith(f"error: {TARGET} with a 64-token context needs 0.5 GB (weights 0.0 GB + KV cache 0.0 GB")
    assert line.endswith("but this machine has 0.0 GB (RAM); nothing smaller fits")


def test_ctrl_c_while_the_cli_starts_is_one_line_and_exit_130():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'mlx_specdec.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from mlx_specdec.__main__ import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted\n", "")
