"""Exact on every machine: the numerics probe and the loop's matched widths, under simulated backends.

MLX's CPU backend gives a row the same bits whatever the height of its block; Metal does not
(DESIGN.md). These tests make the CPU behave like such a device: a wrapper around one operation
(quantised matmul, attention, float matmul) scales its output by a small per-column factor (about
bf16's rounding step) when the pass has the chosen number of rows: one row alone (as Metal's `qmv`
against `qmv_wide`), or blocks of 4 rows and more (as `qmm` past the batch limit). The probe must
name the operation and find widths that agree, and with them greedy speculative output must equal
plain output token for token; without them, the same simulation must make the outputs differ.
"""

from __future__ import annotations

import dataclasses
import platform

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_specdec import probe
from mlx_specdec.cache import PromptCache
from mlx_specdec.decode import generate
from mlx_specdec.load import load
from mlx_specdec.numerics import Verdict
from mlx_specdec.sampling import SamplingParams
from mlx_specdec.settings import MAX_DRAFT, GenerationSettings

from .helpers.paths import DRAFTERS, FIXTURES, TARGET
from .helpers.stats import chi2_critical, two_sample_chi_square

FAMILY_DIR = FIXTURES / "families"
FAMILIES = ["26b-a4b", "31b", "12b", "e2b"]


def rows_of(x: mx.array) -> int:
    return int(np.prod(x.shape[:-1]))


def perturbed(out: mx.array) -> mx.array:
    """out with every column scaled by 1, 1 + 2^-7 or 1 - 2^-7: a rounding the other widths lack."""
    factor = 1 + 2.0**-7 * ((mx.arange(out.shape[-1]) % 3) - 1)
    return out * factor.astype(out.dtype)


def simulate(monkeypatch, op: str, rows) -> None:
    """Make `op` round differently for passes whose row count satisfies rows(n)."""
    if op == "quantized_matmul":
        real = mx.quantized_matmul

        def fake(x, *args, **kwargs):
            out = real(x, *args, **kwargs)
            return perturbed(out) if rows(rows_of(x)) else out

        monkeypatch.setattr(mx, "quantized_matmul", fake)
    elif op == "attention":
        real = mx.fast.scaled_dot_product_attention

        def fake(q, k, v, *args, **kwargs):
            out = real(q, k, v, *args, **kwargs)
            return perturbed(out) if rows(q.shape[2]) else out

        monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", fake)
    elif op == "matmul":
        real = nn.Linear.__call__

        def fake(self, x):
            out = real(self, x)
            return perturbed(out) if rows(rows_of(x)) else out

        monkeypatch.setattr(nn.Linear, "__call__", fake)
    else:
        raise ValueError(op)


ONE_ROW = lambda n: n == 1  # noqa: E731 - Metal's qmv against qmv_wide
WIDE = lambda n: n >= 4  # noqa: E731 - qmm past the batch limit
SIMULATIONS = {
    # name: (op, rows, quantised, expected plain_width, expected max_draft_tokens)
    "1-row quantized_matmul": ("quantized_matmul", ONE_ROW, True, 2, MAX_DRAFT),
    "4+-row quantized_matmul": ("quantized_matmul", WIDE, True, 1, 2),
    "1-row attention": ("attention", ONE_ROW, True, 2, MAX_DRAFT),
    "1-row matmul": ("matmul", ONE_ROW, False, 2, MAX_DRAFT),
}


def quantise(bundle) -> None:
    """4 bits, group 32, in memory: every linear and embedding whose width allows it (as convert)."""

    def fits(path, module):
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % 32 == 0

    nn.quantize(bundle.target.model, group_size=32, bits=4, class_predicate=fits)
    bundle.target.config["quantization"] = {"group_size": 32, "bits": 4}


def fresh(target=TARGET, drafter=DRAFTERS["dense"], quantised=True):
    b = load(target=target, drafter=drafter)
    b.tokenizer.eos_token_ids = []
    if quantised:
        quantise(b)
    return b


def prompts(vocab: int, n: int = 3, length: int = 12) -> list[list[int]]:
    rng = np.random.default_rng(5)
    return [[int(t) for t in rng.integers(3, vocab, size=length)] for _ in range(n)]


def greedy(bundle, ids, k, max_tokens=40):
    return generate(bundle, ids, GenerationSettings(max_tokens=max_tokens, draft=k)).tokens


# --- on this CPU, unpatched ------------------------------------------------------------------
def test_probe_on_the_cpu_backend_finds_every_width_exact(bundles):
    b = fresh()
    v = probe.measure(b)
    assert (v.exact, v.plain_width, v.max_draft_tokens) == (True, 1, MAX_DRAFT)
    assert v.agree == list(range(1, MAX_DRAFT + 2)) and v.differs == []
    assert len(v.pass_seconds) == MAX_DRAFT + 1 and v.device.startswith("CPU")


def test_op_probe_finds_no_operation_whose_rows_depend_on_the_width_on_the_cpu():
    assert probe.op_differences(fresh().target) == []


def test_op_probe_names_moe_experts_whose_rows_depend_on_the_width(monkeypatch):
    """The 26B-A4B's experts run mx.gather_mm in float32 here: make it round 1-row passes apart."""
    b = fresh(FAMILY_DIR / "26b-a4b" / "target", FAMILY_DIR / "26b-a4b" / "assistant", quantised=False)
    assert probe.op_differences(b.target) == []
    real = mx.gather_mm

    def fake(x, *args, **kwargs):
        out = real(x, *args, **kwargs)
        return perturbed(out) if x.shape[1] == 1 else out  # x [1, rows, 1, 1, D] after SwitchGLU's expand

    monkeypatch.setattr(mx, "gather_mm", fake)
    found = probe.op_differences(b.target)
    assert [d.op for d in found] == ["gather_mm"] and found[0].widths == list(range(2, MAX_DRAFT + 2))


def test_verdict_is_cached_per_bundle_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_SPECDEC_CACHE", str(tmp_path))
    b = fresh()
    first = probe.verdict(b)
    (saved,) = (tmp_path / "numerics").glob("*.json")
    b.numerics = None
    monkeypatch.setattr(probe, "measure", lambda bundle: pytest.fail("measured again"))
    assert probe.verdict(b) == first and Verdict.from_json(__import__("json").loads(saved.read_text())) == first


def test_a_verdict_measured_on_one_blas_is_not_read_back_on_another(monkeypatch):
    """`specdec` preloads a system OpenBLAS on Linux; pytest and scripts run on the wheel's
    reference BLAS. Their attention rounds 4+-row passes differently, so each has its own verdict."""
    b = fresh()
    keys, names = [], []
    blases = ("OpenBLAS (/usr/lib/x/libopenblas.so.0, preloaded)", "reference BLAS (bundled with the mlx-cpu wheel)")
    for blas in blases:
        monkeypatch.setattr(probe, "describe_blas", lambda blas=blas: blas)
        keys.append(probe.cache_key(b))
        names.append(probe.device_name())
    assert keys[0] != keys[1]
    assert names == [f"CPU ({platform.machine()}, OpenBLAS)", f"CPU ({platform.machine()}, reference BLAS)"]


def test_notes_say_why_the_loop_decodes_plainly_caps_or_drafts_anyway():
    from mlx_specdec.numerics import Difference, notes

    why = [Difference("quantized_matmul", "64->512 4-bit group 32", [2, 3])]
    bad = Verdict(exact=False, plain_width=1, max_draft_tokens=0, agree=[], differs=why, device="M9")
    (line,) = notes(bad, "auto")
    assert line == (
        "not exact on M9: no pass widths agree (quantized_matmul 64->512 4-bit group 32: rows differ at widths "
        "2-3): decoding plainly; --exactness relaxed drafts anyway"
    )
    assert notes(bad, 3, "relaxed")[0].endswith(
        "drafting anyway (same distribution, greedy ties may break differently)"
    )
    assert bad.widths("strict").max_draft == 0 and bad.widths("relaxed").max_draft == MAX_DRAFT
    capped = Verdict(exact=True, plain_width=1, max_draft_tokens=2, agree=[1, 2, 3], differs=why, device="M9")
    assert notes(capped, 5) == ["--draft-tokens 5 is more than the 2 drafts whose verify rounds exactly on M9: using 2"]
    assert notes(capped, 2) == notes(capped, "auto") == notes(bad, 0) == []


# --- under simulated backends -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(SIMULATIONS))
def test_probe_names_the_operation_and_derives_the_widths(name, monkeypatch):
    op, rows, quantised, plain_width, max_draft = SIMULATIONS[name]
    b = fresh(quantised=quantised)
    simulate(monkeypatch, op, rows)
    v = probe.measure(b)
    assert (v.exact, v.plain_width, v.max_draft_tokens) == (True, plain_width, max_draft)
    assert v.differs and {d.op for d in v.differs} == {op}
    bad = [1] if rows is ONE_ROW else list(range(4, MAX_DRAFT + 2))
    assert all(d.widths == [w for w in range(2, MAX_DRAFT + 2) if (w in bad) != (1 in bad)] for d in v.differs)
    assert v.widths("strict").plain == plain_width and v.widths().max_draft == max_draft


def check_matched_widths(name, monkeypatch, n_prompts, ks, max_tokens):
    op, rows, quantised, _, _ = SIMULATIONS[name]
    b = fresh(quantised=quantised)
    simulate(monkeypatch, op, rows)
    b.numerics = probe.measure(b)
    for ids in prompts(b.target.vocab_size, n=n_prompts):
        plain = greedy(b, ids, 0, max_tokens=max_tokens)
        for k in ks:  # k above the cap runs capped
            assert greedy(b, ids, k, max_tokens=max_tokens) == plain, (name, k)


@pytest.mark.parametrize(
    "name",
    [n if "quantized" in n else pytest.param(n, marks=pytest.mark.slow) for n in SIMULATIONS],
)
def test_greedy_speculative_equals_plain_at_matched_widths(name, monkeypatch):
    check_matched_widths(name, monkeypatch, 1, (2, MAX_DRAFT), max_tokens=24)  # 36 positions: past the window


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, ks", [("1-row quantized_matmul", range(1, MAX_DRAFT + 1)), ("4+-row quantized_matmul", (1, 2, 3))]
)
def test_greedy_speculative_equals_plain_at_matched_widths_for_every_k(name, ks, monkeypatch):
    """Metal's two quantised-matmul behaviours at every k they run (4+-row caps k at 2: k = 3 shows
    the cap; the float matmul and attention simulations run at k = 2 and 8 above)."""
    check_matched_widths(name, monkeypatch, 1, ks, max_tokens=28)  # 40 positions


def diverges_at_the_usual_widths(name, monkeypatch) -> bool:
    op, rows, quantised, _, _ = SIMULATIONS[name]
    b = fresh(quantised=quantised)
    simulate(monkeypatch, op, rows)
    b.numerics = Verdict(exact=True, plain_width=1, max_draft_tokens=MAX_DRAFT, agree=[])  # the old assumption
    for ids in prompts(b.target.vocab_size, n=4):
        plain = greedy(b, ids, 0, max_tokens=16)
        if any(greedy(b, ids, k, max_tokens=16) != plain for k in (1, 3, 6)):
            return True
    return False


def test_without_matched_widths_a_1_row_rounding_makes_speculative_output_differ(monkeypatch):
    """The simulation can fail the tests above: decoding at the usual widths diverges."""
    assert diverges_at_the_usual_widths("1-row quantized_matmul", monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["4+-row quantized_matmul", "1-row matmul", "1-row attention"])
def test_without_matched_widths_every_simulation_makes_speculative_output_differ(name, monkeypatch):
    assert diverges_at_the_usual_widths(name, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["1-row quantized_matmul", "4+-row quantized_matmul"])
def test_every_family_decodes_exactly_at_matched_widths(family, name, monkeypatch):
    op, rows, _, plain_width, max_draft = SIMULATIONS[name]
    b = fresh(FAMILY_DIR / family / "target", FAMILY_DIR / family / "assistant")
    simulate(monkeypatch, op, rows)
    b.numerics = probe.measure(b)
    assert (b.numerics.plain_width, b.numerics.max_draft_tokens) == (plain_width, max_draft)
    window = b.target.config["sliding_window"]
    for ids in prompts(b.target.vocab_size, n=1, length=window + 4):  # past the window
        plain = greedy(b, ids, 0, max_tokens=window + 8)
        for k in (1, 3, MAX_DRAFT) if name.startswith("1-row") else (MAX_DRAFT,):  # 4+-row: capped at 2
            assert greedy(b, ids, k, max_tokens=window + 8) == plain, (family, name, k)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["1-row quantized_matmul"])  # 4+-row caps k = 3 at 2: no verify is simulated
def test_speculative_sampling_keeps_the_target_distribution_under_simulation(name, monkeypatch):
    """Two-sample chi-square at p = 0.001 on tokens 2 and 3 (made by speculative rounds), plain
    (padded to 2-row passes) against k = 3, at the matched widths, as test_sampling checks it unpatched."""
    op, rows, _, _, _ = SIMULATIONS[name]
    b = fresh()
    simulate(monkeypatch, op, rows)
    b.numerics = probe.measure(b)
    ids, runs = [2, 40, 41, 42, 43, 44, 45], 100

    def outputs(k):
        def settings(seed):
            return GenerationSettings(
                max_tokens=3, draft=k, sampling=SamplingParams(seed=10_000 * k + seed, temp=1.0, top_k=3)
            )

        pc = PromptCache(b)  # the prompt is prefilled once per k
        return np.array([generate(b, ids, settings(seed), prompt_cache=pc).tokens for seed in range(runs)])

    plain, spec = outputs(0), outputs(3)
    for col in (1, 2):
        stat, n = two_sample_chi_square(plain[:, col], spec[:, col])
        assert n >= 3
        assert stat < chi2_critical(n - 1), (name, col)


# --- specdec check ----------------------------------------------------------------------------
@pytest.mark.slow  # the quick loop checks the probe's widths under every simulation above
@pytest.mark.parametrize("name", ["1-row quantized_matmul", "4+-row quantized_matmul"])
def test_check_reports_exact_with_the_fitting_widths_under_simulation(name, monkeypatch, tmp_path):
    from mlx_specdec.check import run_check

    monkeypatch.setenv("MLX_SPECDEC_CACHE", str(tmp_path))  # measured under this simulation, not read back
    op, rows, _, plain_width, max_draft = SIMULATIONS[name]
    b = fresh()
    simulate(monkeypatch, op, rows)
    out = run_check(b, fresh=True, tokens=48).to_json()
    assert (out["exact"], out["plain_width"], out["max_draft_tokens"]) == (True, plain_width, max_draft)
    assert [d["op"] for d in out["differs"]] and {d["op"] for d in out["differs"]} == {op}
    assert out["end_to_end"] == {"tokens": 48, "k": max_draft, "identical": True, "first_difference": None}


@pytest.mark.slow
def test_specdec_check_json_drafts_only_as_wide_as_this_cpu_agrees_and_is_then_identical(tmp_path):
    """Whatever this CPU's kernels give (every width agrees on some x86 machines; on others attention
    at 4+ rows rounds differently), the verdict follows from the measurement and the run it allows is
    identical to plain decoding."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLX_SPECDEC_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "mlx_specdec", "check", "--demo", "--json", "--tokens", "64"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    k, plain = out["max_draft_tokens"], out["plain_width"]
    differing = {w for d in out["differs"] for w in d["widths"]}
    assert out["exact"] and k >= 1
    assert set(range(plain, k + 2)) <= set(out["agree"]) and not differing & set(range(plain, k + 2))
    assert k == MAX_DRAFT or k + 2 in differing  # the cap is the widest verify that still agrees
    assert (plain, k) == (1, MAX_DRAFT) or differing  # a cap below the maximum names what differs
    assert out["end_to_end"]["identical"] and out["end_to_end"]["tokens"] == 64
    assert list((tmp_path / "numerics").glob("*.json"))  # the verdict is cached for the next run


def test_models_shows_the_cached_verdict_of_a_converted_bundle(tmp_path, monkeypatch, capsys):
    import json

    from mlx_specdec import listing

    monkeypatch.setenv("MLX_SPECDEC_CACHE", str(tmp_path))
    local = tmp_path / "gemma-4-E2B-it-4bit"
    rows = [{"name": "e2b", "local": {"4": str(local)}, "local_mlx": {}}]
    monkeypatch.setattr(listing, "model_rows", lambda **_: rows)
    verdict = Verdict(exact=True, plain_width=2, max_draft_tokens=5, agree=[2, 3, 4, 5, 6], bundle=local.name)
    verdict = dataclasses.replace(verdict, device=probe.device_name(), mlx=mx.__version__)
    (tmp_path / "numerics").mkdir()
    (tmp_path / "numerics" / "x.json").write_text(json.dumps(verdict.to_json()))
    listing.print_models(as_json=True)
    out = json.loads(capsys.readouterr().out)
    assert out["models"][0]["numerics"] == {local.name: verdict.to_json()}
    assert listing._exact_here(verdict) == "yes (k <= 5, plain width 2)"
