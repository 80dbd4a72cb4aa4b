"""`specdec generate` through typer's CliRunner: JSON schema, trace, one-line errors."""

import json

from typer.testing import CliRunner

from mlx_specdec.cli import app

from .conftest import DRAFTERS, TARGET

runner = CliRunner()
BASE = ["generate", "--target", str(TARGET), "--drafter", str(DRAFTERS["dense"])]


def test_generate_json_has_documented_schema_and_trace():
    r = runner.invoke(app, BASE + ["--prompt-ids", "2,40,41,42", "-m", "12", "-k", "3", "--json", "--trace"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) == {"token_ids", "text", "stats", "rounds"}
    assert {"prompt_tokens", "generated_tokens", "rounds", "drafted", "accepted", "mean_accepted_per_round",
            "acceptance_rate", "ttft_s", "decode_tokens_per_s", "peak_memory_bytes"} <= set(out["stats"])
    assert out["stats"]["prompt_tokens"] == 4
    assert out["rounds"][0]["position"] == 4 and len(out["rounds"][0]["drafted"]) == 3


def test_generate_no_draft_equals_speculative_output():
    a = runner.invoke(app, BASE + ["--prompt", "Explain lists", "-m", "20", "--no-draft", "--json"])
    b = runner.invoke(app, BASE + ["--prompt", "Explain lists", "-m", "20", "-k", "4", "--json"])
    assert json.loads(a.stdout)["token_ids"] == json.loads(b.stdout)["token_ids"]


def test_generate_bad_folder_is_one_line_error_without_traceback(tmp_path):
    r = runner.invoke(app, ["generate", "--target", str(tmp_path / "nope"), "--prompt", "hi"])
    assert r.exit_code == 1
    assert r.output.strip() == f"error: {tmp_path / 'nope'}: no such folder"


def test_generate_bad_draft_tokens_is_one_line_error():
    r = runner.invoke(app, BASE + ["--prompt", "hi", "-k", "12"])
    assert r.exit_code == 1
    assert r.output.strip() == "error: draft tokens must be 0-8, 'auto' or 'off', not '12'"
