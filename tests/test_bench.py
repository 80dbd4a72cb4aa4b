"""`specdec bench`: the JSON result, its figures against each other, prompt files, one-line errors,
output files written whole and checked before the run, the plot, BLAS detection.

No timing asserts: speed figures are ratios measured in one run, not test outcomes.
"""

import dataclasses
import errno
import hashlib
import json
import os
import sys
import tempfile

import pytest
from typer.testing import CliRunner

from mlx_specdec import blas, files
from mlx_specdec.bench import protocol as bench
from mlx_specdec.bench import report as bench_report
from mlx_specdec.bench import result as bench_result
from mlx_specdec.cli import app
from mlx_specdec.errors import SpecdecError
from mlx_specdec.settings import MAX_DRAFT

from .helpers.paths import DRAFTERS, TARGET

runner = CliRunner()
BASE = ["bench", "--target", str(TARGET), "--drafter", str(DRAFTERS["dense"]), "-m", "6", "--trials", "1"]


@pytest.fixture(autouse=True)
def no_blas_reexec(monkeypatch):
    monkeypatch.setenv("SPECDEC_BLAS", "off")


def _prompts(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_bench_json_holds_every_mode_and_figures_that_agree_with_each_other(tmp_path, bundles):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    prompts = _prompts(tmp_path, ['{"prompt": "Hello there", "name": "hi"}'])
    r = runner.invoke(app, BASE + ["--k", "1,3", "--prompts", str(prompts), "--json", str(out), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["schema"] == "specdec-bench/1"
    assert [m["mode"] for m in result["modes"]] == ["plain", "mlx-lm", "k=1", "k=3", "auto"]
    fields = [f.name for f in dataclasses.fields(bench_result.ModeResult)]
    modes = {m["mode"]: m for m in result["modes"]}
    plain_rate = modes["plain"]["decode_tokens_per_s"]
    for m in result["modes"]:
        assert list(m) == fields, m["mode"]
        assert m["generated_tokens"] == 6  # EOS never comes within 6 tokens on this prompt
        assert m["matches_plain"], m["mode"]  # greedy: every mode, same tokens
        assert m["speedup"] == pytest.approx(m["decode_tokens_per_s"] / plain_rate), m["mode"]
    assert modes["k=3"]["draft_tokens_histogram"].get("3", 0) >= 1
    assert sum(modes["k=1"]["accepted_histogram"].values()) == modes["k=1"]["rounds"] > 0
    # k=1 never tries draft 2; plain and mlx-lm try none.
    assert modes["k=1"]["acceptance_by_position"][0] is not None
    assert modes["k=1"]["acceptance_by_position"][1:] == [None] * (MAX_DRAFT - 1)
    assert modes["plain"]["acceptance_by_position"] == modes["mlx-lm"]["acceptance_by_position"] == [None] * 8
    auto = modes["auto"]
    assert auto["loop_efficiency"] == pytest.approx(auto["decode_tokens_per_s"] / auto["ideal_tokens_per_s"])
    assert modes["plain"]["loop_efficiency"] is None
    best = max((modes["k=1"], modes["k=3"]), key=lambda m: m["decode_tokens_per_s"])
    assert result["summary"] == {
        "plain_vs_mlx_lm": pytest.approx(plain_rate / modes["mlx-lm"]["decode_tokens_per_s"]),
        "auto_speedup": auto["speedup"],
        "best_fixed_k": best["draft_tokens"],
        "best_fixed_k_speedup": best["speedup"],
        "loop_efficiency": auto["loop_efficiency"],
    }
    hello = bench.encode_prompt(bundles["dense"], "Hello there")
    assert result["prompts"] == [{"name": "hi", "prompt_tokens": len(hello)}]
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "tokens/s against k" in r.stdout
    assert set(os.listdir(tmp_path)) == {"bench.json", "bench.png", "prompts.jsonl"}  # no temporary file left


@pytest.mark.parametrize("cls", [bench_result.ModeResult, bench_result.BenchSummary, bench_result.BenchResult])
def test_every_result_field_is_described_in_its_docstring(cls):
    described = {line.split(":")[0].strip() for line in cls.__doc__.splitlines() if ":" in line}
    assert [f.name for f in dataclasses.fields(cls) if f.name not in described] == []


@pytest.mark.slow  # the quick loop keeps a cheaper check of the same idea
def test_bench_on_one_short_prompt_runs_every_mode_and_each_matches_plain(bundles):
    """One bench run through the library; the whole suite and the CLI: the other slow tests."""
    import time
    from types import SimpleNamespace

    prompts = [{"name": "hi", "prompt": "Hello there"}]
    ten_watts = SimpleNamespace(name="fake", available=True, read=lambda: 10.0 * time.perf_counter())
    result = bench.run_bench(
        bundles["centroid"], prompts=prompts, ks=[2], max_tokens=4, trials=1, mlx_lm=False, energy=ten_watts
    )
    assert [m.mode for m in result.modes] == ["plain", "k=2", "auto"]
    assert all(m.matches_plain and m.generated_tokens == 4 for m in result.modes)
    # Each run's joules are the counter's over its decoding (runs of ms, read every 0.25 s).
    assert [m.joules_per_token for m in result.modes] == [
        pytest.approx(10.0 / m.decode_tokens_per_s, rel=1e-2) for m in result.modes
    ]
    numerics = result.to_dict()["numerics"]  # this device's verdict, as `specdec check --json` has it
    assert (numerics["exact"], numerics["plain_width"], numerics["max_draft_tokens"]) == (True, 1, 8)


@pytest.mark.slow
def test_bench_runs_the_builtin_suite_through_the_library():
    from mlx_specdec.load import load

    bundle = load(target=TARGET, drafter=DRAFTERS["centroid"])
    result = bench.run_bench(bundle, ks=[2], max_tokens=4, trials=1, mlx_lm=False, ignore_eos=True)
    assert result.prompts == [
        bench_result.PromptResult(p["name"], len(bench.encode_prompt(bundle, p["prompt"]))) for p in bench.SUITE
    ]
    assert [m.mode for m in result.modes] == ["plain", "k=2", "auto"]
    assert all(m.generated_tokens == 4 * len(bench.SUITE) for m in result.modes)
    assert result.summary.plain_vs_mlx_lm is None and result.mode("mlx-lm") is None
    document = json.loads(json.dumps(result.to_dict()))
    assert document["modes"][1]["draft_tokens"] == 2 and document["summary"]["best_fixed_k"] == 2


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"prompt": "ok"}', "not json"],
            '{path}:2: not valid JSON; expected one {{"prompt": "..."}} object per line',
        ),
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
    assert r.exit_code == 2 and r.output.strip() == f"error: {tmp_path / 'none.jsonl'}: no such prompts file"
    r = runner.invoke(app, BASE + ["--k", "1,9"])
    assert r.exit_code == 2 and r.output.strip() == "error: --k values must be between 1 and 8, not '1,9'"
    r = runner.invoke(app, BASE + ["--k", ""])
    assert r.exit_code == 2
    assert r.output.strip() == "error: --k needs draft lengths 1-8, e.g. --k 1,2,4 (or --k none for no fixed k)"


def test_k_list_none_means_no_fixed_k_and_values_are_sorted_once():
    assert bench.parse_k_list("none") == bench.parse_k_list(" None ") == []
    assert bench.parse_k_list("4, 1,4") == [1, 4]
    with pytest.raises(SpecdecError, match="needs draft lengths"):
        bench.parse_k_list(",")


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
        return TokenRecord(
            token=5,
            text="",
            from_draft=False,
            round=rnd,
            draft_tokens=k,
            accepted=acc,
            prompt_tokens=3,
            ttft_s=0.1,
            elapsed_s=t,
        )

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


def _result(tokens_per_joule=None, exact=True) -> bench_result.BenchResult:
    """A hand-made result: plain 10 tok/s, mlx-lm 11, k=1 12, auto 15; tokens/J = rate * tokens_per_joule."""

    def mode(name, dt, rate):
        j = rate * tokens_per_joule if tokens_per_joule else None
        return bench_result.ModeResult(
            mode=name,
            draft_tokens=dt,
            generated_tokens=8,
            ttft_s=0.01,
            decode_tokens_per_s=rate,
            trials_tokens_per_s=[rate],
            speedup=rate / 10,
            rounds=0,
            mean_accepted_per_round=None,
            accepted_histogram={},
            draft_tokens_histogram={"1": 3},
            acceptance_by_position=[None] * 8,
            peak_memory_bytes=2**20,
            joules_per_token=1 / j if j else None,
            tokens_per_joule=j,
            ideal_tokens_per_s=None,
            loop_efficiency=None,
            matches_plain=exact or name == "plain",
        )

    modes = [mode("plain", 0, 10.0), mode("mlx-lm", None, 11.0), mode("k=1", 1, 12.0), mode("auto", "auto", 15.0)]
    return bench_result.BenchResult(
        model="tiny",
        blas="",
        energy_source="none",
        platform="Linux x86_64",
        mlx_version="0",
        mlx_lm_version="0",
        max_tokens=8,
        trials=1,
        ignore_eos=False,
        useless_drafter=False,
        prompts=[bench_result.PromptResult("a", 3)],
        modes=modes,
        summary=bench_result.BenchSummary.from_modes(modes),
    )


def test_summary_picks_the_fastest_fixed_k_and_shouts_when_a_mode_differs_from_plain():
    result = _result(exact=False)
    assert (result.summary.best_fixed_k, result.summary.auto_speedup) == (1, 1.5)
    assert result.summary.plain_vs_mlx_lm == pytest.approx(10 / 11)
    assert "OUTPUT DIFFERS FROM PLAIN: mlx-lm, k=1, auto" in bench_report.summary_line(result)
    assert "OUTPUT DIFFERS" not in bench_report.summary_line(_result())


def test_plot_has_a_bar_per_k_at_its_rate_and_a_tokens_per_joule_panel_only_when_measured(tmp_path):
    fig = bench_report.make_figure(_result())
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "auto"]
    assert [b.get_height() for b in ax.patches] == [10.0, 12.0, 15.0]
    fig = bench_report.make_figure(_result(tokens_per_joule=0.5))
    assert [ax.get_ylabel() for ax in fig.axes] == ["tokens/s", "tokens/J"]
    assert [b.get_height() for b in fig.axes[1].patches] == [5.0, 6.0, 7.5]
    bench_report.write_plot(_result(), tmp_path / "plot.svg")
    assert (tmp_path / "plot.svg").read_text().lstrip().startswith("<?xml")


def test_plot_without_matplotlib_says_how_to_install_it_before_the_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    r = runner.invoke(app, BASE + ["--plot", str(tmp_path / "plot.png")])
    assert r.exit_code == 1
    assert r.output.strip() == "error: --plot needs matplotlib: pip install 'mlx-specdec[plot]'"


def test_plot_format_it_cannot_draw_is_refused_before_the_run(tmp_path):
    r = runner.invoke(app, BASE + ["--plot", str(tmp_path / "plot.xyz")])
    assert r.exit_code == 1
    assert r.output.strip() == f"error: {tmp_path / 'plot.xyz'}: cannot draw a .xyz plot; use .png, .svg or .pdf"


def test_write_failing_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("old result\n")

    def disk_full(f):
        f.write(b'{"schema": "specdec-be')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SpecdecError) as e:
        files.write_atomically(path, disk_full)
    assert str(e.value) == f"{path}: cannot write (No space left on device)"
    assert path.read_text() == "old result\n"
    assert os.listdir(tmp_path) == ["bench.json"]


@pytest.mark.slow
def test_bench_disk_full_at_the_end_is_one_line_and_keeps_the_old_json(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    out.write_text('{"schema": "specdec-bench/1", "previous": "run"}\n')
    before = hashlib.sha256(out.read_bytes()).hexdigest()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    r = runner.invoke(app, BASE + ["--k", "1", "--no-mlx-lm", "-m", "3", "--json", str(out)])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == f"error: {out}: cannot write (No space left on device)"
    assert "Traceback" not in r.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    assert os.listdir(tmp_path) == ["bench.json"]


def test_json_written_whole_with_the_old_mode_or_the_umask(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text("{}")
    old.chmod(0o640)
    umask = os.umask(0o027)
    try:
        bench_report.write_json(_result(), old)
        bench_report.write_json({"bench": _result()}, new)
    finally:
        os.umask(umask)
    assert json.loads(old.read_text()) == _result().to_dict()
    assert json.loads(new.read_text())["bench"]["modes"][3]["speedup"] == 1.5
    assert (old.stat().st_mode & 0o777, new.stat().st_mode & 0o777) == (0o640, 0o640)
    assert sorted(os.listdir(tmp_path)) == ["new.json", "old.json"]


# --- BLAS detection -------------------------------------------------------------------------
def test_blas_finds_first_existing_candidate(tmp_path):
    a, b = tmp_path / "a" / "libopenblas.so.0", tmp_path / "libopenblas.so.0"
    b.write_bytes(b"")
    assert blas.find_optimised_blas([a, b]) == b
    assert blas.find_optimised_blas([a]) is None


def test_blas_reexec_plan_only_on_linux_cli_once(tmp_path):
    lib = tmp_path / "libopenblas.so.0"
    lib.write_bytes(b"")
    cli = {
        "argv": ["/venv/bin/specdec", "bench"],
        "orig_argv": ["/venv/bin/python", "/venv/bin/specdec", "bench"],
        "candidates": [lib],
    }
    env = blas.reexec_plan({"LD_PRELOAD": "/x.so"}, system="Linux", **cli)
    assert env["LD_PRELOAD"] == f"{lib}:/x.so" and env["SPECDEC_BLAS_ACTIVE"] == str(lib)
    assert blas.reexec_plan(env, system="Linux", **cli) is None  # the guard: never twice
    assert blas.reexec_plan({}, system="Darwin", **cli) is None
    assert blas.reexec_plan({"SPECDEC_BLAS": "off"}, system="Linux", **cli) is None
    assert (
        blas.reexec_plan({}, system="Linux", argv=["pytest"], orig_argv=["python", "-m", "pytest"], candidates=[lib])
        is None
    )
    assert (
        blas.reexec_plan(
            {}, system="Linux", argv=["x"], orig_argv=["python", "-m", "mlx_specdec.cli", "bench"], candidates=[lib]
        )
        is not None
    )
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
    script = {
        "argv": ["scripts/measure/bench_sweep.py"],
        "orig_argv": ["python", "scripts/measure/bench_sweep.py"],
        "candidates": [lib],
    }
    assert blas.reexec_plan({}, system="Linux", **script) is None
    assert blas.reexec_plan({}, system="Linux", any_program=True, **script)["LD_PRELOAD"] == str(lib)


@pytest.mark.parametrize("option", ["--json", "--plot"])
@pytest.mark.parametrize("case", ["missing folder", "a folder", "read-only folder"])
def test_bench_unwritable_output_is_one_line_error_before_the_run(tmp_path, monkeypatch, option, case):
    target = tmp_path / "out.png"
    if case == "missing folder":
        target = tmp_path / "no" / "such" / "dir" / "out.png"
        message = f"{target}: cannot write (no folder {target.parent})"
    elif case == "a folder":
        target.mkdir()
        message = f"{target}: is a folder; give {option} a file name"
    else:  # as root a chmod does not stop a write: refuse the probe file the check makes, as a read-only mount would

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
        message = f"{target}: cannot write in {tmp_path} (Read-only file system)"
    r = runner.invoke(app, BASE + ["--k", "1", "--no-mlx-lm", "-m", "3", option, str(target)])
    assert r.exit_code == 1
    assert r.output.strip() == f"error: {message}"  # nothing else: the run (BLAS line, warm-up) never started


def test_mlx_lm_baseline_runs_the_model_as_mlx_lm_ships_it_and_restores_issuing_early(bundles, monkeypatch):
    """bench's mlx-lm mode must not time our early hand-offs (models/target.py) as mlx-lm's."""
    import importlib

    lm_generate = importlib.import_module("mlx_lm.generate")  # the module: the package's name is a function

    target = bundles["dense"].target
    hooked_before = [type(layer).__name__ for layer in target.model.model.layers]
    assert any(name != "DecoderLayer" for name in hooked_before)  # the default issues early
    seen = []
    real = lm_generate.stream_generate

    def spy(model, *args, **kwargs):
        seen.append({type(layer).__name__ for layer in model.model.layers})
        yield from real(model, *args, **kwargs)

    monkeypatch.setattr(lm_generate, "stream_generate", spy)
    run = bench.run_mlx_lm(bundles["dense"], [2, 40, 41], 4)
    assert run.generated == 4 and seen == [{"DecoderLayer"}]
    assert [type(layer).__name__ for layer in target.model.model.layers] == hooked_before
