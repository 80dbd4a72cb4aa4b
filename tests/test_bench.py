"""`specdec bench`: JSON schema with every mode, prompt files, one-line errors, PNG, BLAS detection.

No timing asserts: speed figures are ratios measured in one run, not test outcomes.
"""

import json
import struct
import zlib

import pytest
from typer.testing import CliRunner

from mlx_specdec import bench, blas
from mlx_specdec.cli import app

from .conftest import DRAFTERS, TARGET

runner = CliRunner()
BASE = ["bench", "--target", str(TARGET), "--drafter", str(DRAFTERS["dense"]), "-m", "6", "--trials", "1"]


@pytest.fixture(autouse=True)
def no_blas_reexec(monkeypatch):
    monkeypatch.setenv("SPECDEC_BLAS", "off")


def _prompts(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bench_json_has_every_mode_with_documented_keys(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    prompts = _prompts(tmp_path, ['{"prompt": "Hello there", "name": "hi"}'])
    r = runner.invoke(app, BASE + ["--k", "1,3", "--prompts", str(prompts), "--json", str(out), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["schema"] == bench.SCHEMA
    assert [m["mode"] for m in result["modes"]] == ["plain", "mlx-lm", "k=1", "k=3", "auto"]
    for m in result["modes"]:
        assert set(m) == set(bench.MODE_KEYS), m["mode"]
        assert len(m["acceptance_by_position"]) == bench.MAX_K
        assert m["generated_tokens"] == 6  # EOS never comes within 6 tokens on this prompt
    modes = {m["mode"]: m for m in result["modes"]}
    assert all(m["matches_plain"] for m in result["modes"])  # greedy: every mode, same tokens
    assert modes["plain"]["speedup"] == 1.0
    assert modes["k=3"]["draft_tokens_histogram"].get("3", 0) >= 1
    assert sum(modes["k=1"]["accepted_histogram"].values()) == modes["k=1"]["rounds"]
    assert modes["auto"]["loop_efficiency"] is not None and modes["plain"]["loop_efficiency"] is None
    assert set(result["summary"]) == {"plain_vs_mlx_lm", "auto_speedup", "best_fixed_k", "best_fixed_k_speedup",
                                      "loop_efficiency"}
    assert result["summary"]["best_fixed_k"] in (1, 3)
    assert result["prompts"] == [{"name": "hi", "prompt_tokens": result["prompts"][0]["prompt_tokens"]}]
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "tokens/s against k" in r.stdout


def test_bench_runs_the_builtin_suite_through_the_library():
    from mlx_specdec.load import load

    bundle = load(target=TARGET, drafter=DRAFTERS["centroid"])
    result = bench.run_bench(bundle, ks=[2], max_tokens=4, trials=1, mlx_lm=False, ignore_eos=True)
    assert [p["name"] for p in result["prompts"]] == ["chat", "code", "json", "summarise"]
    assert [m["mode"] for m in result["modes"]] == ["plain", "k=2", "auto"]
    assert all(m["generated_tokens"] == 4 * 4 for m in result["modes"])
    assert result["summary"]["plain_vs_mlx_lm"] is None


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "ok"}', "not json"], "{path}:2: not valid JSON; expected one {{\"prompt\": \"...\"}} object per line"),
        (['{"text": "no prompt key"}'], '{path}:1: expected an object with a non-empty string "prompt"'),
        ([""], '{path}: no prompts (expected JSONL lines like {{"prompt": "..."}})'),
    ],
)
def test_bench_bad_prompts_file_is_one_line_error(tmp_path, lines, message):
    path = _prompts(tmp_path, lines)
    r = runner.invoke(app, BASE + ["--prompts", str(path)])
    assert r.exit_code == 1
    assert r.output.strip() == "error: " + message.format(path=path)


def test_bench_missing_prompts_file_and_bad_k_are_one_line_errors(tmp_path):
    r = runner.invoke(app, BASE + ["--prompts", str(tmp_path / "none.jsonl")])
    assert r.output.strip() == f"error: {tmp_path / 'none.jsonl'}: no such prompts file"
    r = runner.invoke(app, BASE + ["--k", "1,9"])
    assert r.exit_code == 1 and r.output.strip() == "error: --k values must be between 1 and 8, not '1,9'"


def test_ideal_rate_uses_own_acceptance_and_costs_then_the_other_modes():
    # auto: draft 1 accepted half the time, draft 2 never tried, rounds of k=0 and k=1 timed.
    own = [(1, 1, 1.0), (1, 0, 1.0), (0, 0, 1.0)]
    # other modes: k=2 saw a_2 = 1 and costs 2 s; their k=0 rounds (3 s) lose to auto's own.
    others = [(2, 2, 2.0), (0, 0, 3.0)]
    # E(0)/C(0) = 1, E(1)/C(1) = 1.5, E(2)/C(2) = (1 + .5 + .5)/2 = 1
    assert bench.ideal_rate(own, others) == pytest.approx(1.5)
    assert bench.ideal_rate([(0, 0, 1.0)], [(4, 4, 1.0)]) == pytest.approx(5.0)  # untried k: others' figures


def test_rounds_from_records_times_each_round_from_its_last_token():
    from mlx_specdec.stats import TokenRecord

    def rec(rnd, k, acc, t):
        return TokenRecord(token=5, text="", from_draft=False, round=rnd, draft_tokens=k, accepted=acc,
                           prompt_tokens=3, ttft_s=0.1, elapsed_s=t)

    records = [rec(0, 0, 0, 0.0), rec(1, 2, 1, 0.4), rec(1, 2, 1, 0.5), rec(2, 2, 0, 0.75)]
    assert bench.rounds_from_records(records) == [(2, 1, 0.5), (2, 0, 0.25)]


def test_useless_drafter_keeps_shapes_and_changes_weights():
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_specdec.load import load

    drafter = load(target=TARGET, drafter=DRAFTERS["centroid"]).drafter
    before = dict(tree_flatten(drafter.parameters()))
    bench.make_useless(drafter, seed=1)
    after = dict(tree_flatten(drafter.parameters()))
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert not mx.array_equal(before["pre_projection.weight"], after["pre_projection.weight"])
    order = after["masked_embedding.token_ordering"]
    assert sorted(order.tolist()) == sorted(before["masked_embedding.token_ordering"].tolist())


def test_png_canvas_writes_a_decodable_image():
    c = bench.Canvas(5, 3)
    c.rect(1, 1, 2, 1, (255, 0, 0))
    data = c.png()
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (5, 3)
    idat = data.index(b"IDAT")
    (n,) = struct.unpack(">I", data[idat - 4 : idat])
    raw = zlib.decompress(data[idat + 4 : idat + 4 + n])
    row1 = raw[1 + 15 + 1 : 1 + 15 + 1 + 15]
    assert row1[3:6] == b"\xff\x00\x00" and row1[0:3] == b"\xff\xff\xff"


# --- BLAS detection -------------------------------------------------------------------------
def test_blas_finds_first_existing_candidate(tmp_path):
    a, b = tmp_path / "a" / "libopenblas.so.0", tmp_path / "libopenblas.so.0"
    b.write_bytes(b"")
    assert blas.find_optimised_blas([a, b]) == b
    assert blas.find_optimised_blas([a]) is None


def test_blas_reexec_plan_only_on_linux_cli_once(tmp_path):
    lib = tmp_path / "libopenblas.so.0"
    lib.write_bytes(b"")
    cli = dict(argv=["/venv/bin/specdec", "bench"], orig_argv=["/venv/bin/python", "/venv/bin/specdec", "bench"],
               candidates=[lib])
    env = blas.reexec_plan({"LD_PRELOAD": "/x.so"}, system="Linux", **cli)
    assert env["LD_PRELOAD"] == f"{lib}:/x.so" and env["SPECDEC_BLAS_ACTIVE"] == str(lib)
    assert blas.reexec_plan(env, system="Linux", **cli) is None  # the guard: never twice
    assert blas.reexec_plan({}, system="Darwin", **cli) is None
    assert blas.reexec_plan({"SPECDEC_BLAS": "off"}, system="Linux", **cli) is None
    assert blas.reexec_plan({}, system="Linux", argv=["pytest"], orig_argv=["python", "-m", "pytest"],
                            candidates=[lib]) is None
    assert blas.reexec_plan({}, system="Linux", argv=["x"], orig_argv=["python", "-m", "mlx_specdec.cli", "bench"],
                            candidates=[lib]) is not None
    assert blas.reexec_plan({}, system="Linux", **{**cli, "candidates": [tmp_path / "missing.so"]}) is None
    explicit = blas.reexec_plan({"SPECDEC_BLAS": str(lib)}, system="Linux", **{**cli, "candidates": []})
    assert explicit["LD_PRELOAD"] == str(lib)


def test_describe_blas_reports_what_is_mapped():
    mlx_ref = "7f00-7f01 r-xp 0 08:01 1 /venv/lib/site-packages/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0\n"
    numpy_ob = "7f02-7f03 r-xp 0 08:01 2 /venv/lib/site-packages/numpy.libs/libscipy_openblas64_-32a4b2a6.so\n"
    system_ob = "7f04-7f05 r-xp 0 08:01 3 /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0\n"
    assert blas.describe_blas("Linux", mlx_ref + numpy_ob, {}).startswith("reference BLAS")
    pre = {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"}
    assert blas.describe_blas("Linux", system_ob + mlx_ref, pre) == (
        "OpenBLAS (/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0, preloaded)"
    )
    assert blas.describe_blas("Darwin", "", {}) == "Accelerate (macOS)"


def test_blas_reexec_plan_for_scripts_that_ask(tmp_path):
    lib = tmp_path / "libopenblas.so.0"
    lib.write_bytes(b"")
    script = dict(argv=["scripts/bench_sweep.py"], orig_argv=["python", "scripts/bench_sweep.py"], candidates=[lib])
    assert blas.reexec_plan({}, system="Linux", **script) is None
    assert blas.reexec_plan({}, system="Linux", any_program=True, **script)["LD_PRELOAD"] == str(lib)


def test_bench_unwritable_json_path_is_one_line_error(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "out.json"
    r = runner.invoke(app, BASE + ["--k", "1", "--no-mlx-lm", "-m", "3", "--json", str(target)])
    assert r.exit_code == 1
    assert r.output.strip() == f"error: {target}: cannot write (no folder {target.parent})"
