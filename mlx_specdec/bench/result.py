"""The result of `specdec bench`: these dataclasses are its JSON schema, "specdec-bench/1".

`bench.py` measures and builds a `BenchResult`; `bench_report.py` shows and writes it. The JSON
document is `BenchResult.to_dict()`: keys in field order, each field described in its class's
docstring (a test holds every field to that).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

SCHEMA = "specdec-bench/1"


@dataclass
class ModeResult:
    """One mode's figures (one entry of "modes" in the JSON, in run order).

    mode:                    "plain", "mlx-lm", "k=N" or "auto".
    draft_tokens:            0 (plain), N, "auto", or None for mlx-lm.
    generated_tokens:        tokens per trial over all prompts (first tokens included).
    ttft_s:                  seconds to the first token: mean over prompts, median over trials.
    decode_tokens_per_s:     decode tokens / decode seconds (first token excluded), median over trials.
    trials_tokens_per_s:     the same figure for each trial.
    speedup:                 decode_tokens_per_s / plain's (None when plain's is 0).
    rounds:                  rounds with k >= 1 per trial (0 for plain and mlx-lm).
    mean_accepted_per_round: accepted drafts per round with k >= 1; None if there is none.
    accepted_histogram:      {"n": rounds (k >= 1) that accepted n drafts}, all trials.
    draft_tokens_histogram:  {"k": rounds that drafted k} (auto: what it chose), all trials.
    acceptance_by_position:  MAX_DRAFT entries: P(draft i accepted | draft i tried); None if never tried.
    peak_memory_bytes:       the largest peak memory of any run.
    joules_per_token:        decode joules / decode tokens, median over trials; None without a counter.
    tokens_per_joule:        1 / joules_per_token.
    ideal_tokens_per_s:      auto only: the best fixed schedule's rate (module docstring).
    loop_efficiency:         auto only: decode_tokens_per_s / ideal_tokens_per_s.
    matches_plain:           True when every prompt of every trial gave plain's token ids.
    """

    mode: str
    draft_tokens: int | str | None
    generated_tokens: int
    ttft_s: float | None
    decode_tokens_per_s: float | None
    trials_tokens_per_s: list[float]
    speedup: float | None
    rounds: int
    mean_accepted_per_round: float | None
    accepted_histogram: dict[str, int]
    draft_tokens_histogram: dict[str, int]
    acceptance_by_position: list[float | None]
    peak_memory_bytes: int
    joules_per_token: float | None
    tokens_per_joule: float | None
    ideal_tokens_per_s: float | None
    loop_efficiency: float | None
    matches_plain: bool


@dataclass
class PromptResult:
    """One prompt of the suite: its name and its length in tokens (chat template applied)."""

    name: str
    prompt_tokens: int


@dataclass
class BenchSummary:
    """The headline ratios, each None when its modes did not run.

    plain_vs_mlx_lm:      plain's decode tokens/s / mlx-lm's.
    auto_speedup:         auto's speedup over plain.
    best_fixed_k:         the fixed k with the highest decode tokens/s.
    best_fixed_k_speedup: that k's speedup over plain.
    loop_efficiency:      auto's loop efficiency.
    """

    plain_vs_mlx_lm: float | None
    auto_speedup: float | None
    best_fixed_k: int | None
    best_fixed_k_speedup: float | None
    loop_efficiency: float | None

    @classmethod
    def from_modes(cls, modes: list[ModeResult]) -> BenchSummary:
        by_mode = {m.mode: m for m in modes}
        plain, lm, auto = by_mode["plain"], by_mode.get("mlx-lm"), by_mode.get("auto")
        fixed = [m for m in modes if m.mode.startswith("k=")]
        best = max(fixed, key=lambda m: m.decode_tokens_per_s) if fixed else None
        lm_rate = lm.decode_tokens_per_s if lm else None
        return cls(
            plain_vs_mlx_lm=plain.decode_tokens_per_s / lm_rate if lm_rate else None,
            auto_speedup=auto.speedup if auto else None,
            best_fixed_k=best.draft_tokens if best else None,
            best_fixed_k_speedup=best.speedup if best else None,
            loop_efficiency=auto.loop_efficiency if auto else None,
        )


@dataclass(kw_only=True)
class BenchResult:
    """A whole benchmark: what ran and where, its settings, the prompts, each mode's figures, the summary.

    schema:          "specdec-bench/1"; a consumer checks it before reading the rest.
    model:           the bundle's name.
    blas:            the BLAS the CPU backend used ("" where not detected).
    energy_source:   the energy counter read (energy.py), "none" when there is none.
    platform:        "System machine", e.g. "Darwin arm64".
    mlx_version:     mlx's version.
    mlx_lm_version:  mlx-lm's version.
    max_tokens:      tokens per prompt (fewer when EOS comes first, unless ignore_eos).
    trials:          trials after the warm-up; the figures are their median.
    ignore_eos:      True when every run generated max_tokens tokens.
    useless_drafter: True when the drafter's weights were shuffled first (bench.make_useless).
    prompts:         one PromptResult per prompt, in run order.
    modes:           one ModeResult per mode, in run order (plain first).
    summary:         the BenchSummary.
    numerics:        this device's verdict on the bundle's pass widths (numerics.Verdict's fields,
                     as `specdec check --json` gives them), or None where it was not measured.
    media_prefill:   `bench --image/--audio`: one prompt with those files, its towers' and prefill's
                     milliseconds (media_prefill.MediaPrefill's fields); None without them.
    """

    schema: str = SCHEMA
    model: str
    blas: str
    energy_source: str
    platform: str
    mlx_version: str
    mlx_lm_version: str
    max_tokens: int
    trials: int
    ignore_eos: bool
    useless_drafter: bool
    prompts: list[PromptResult]
    modes: list[ModeResult]
    summary: BenchSummary
    numerics: Optional[dict] = None
    media_prefill: Optional[dict] = None

    def mode(self, name: str) -> ModeResult | None:
        return next((m for m in self.modes if m.mode == name), None)

    def to_dict(self) -> dict:
        """The JSON document (`--json FILE`), keys in field order."""
        return asdict(self)


def run_info(model: str, blas: str, energy_source: str) -> dict:
    """The BenchResult fields that say what ran where: model, BLAS, energy source, platform and
    the mlx / mlx-lm versions (every bench result starts with them)."""
    import platform

    import mlx.core as mx
    from mlx_lm import __version__ as mlx_lm_version

    return {
        "model": model,
        "blas": blas,
        "energy_source": energy_source,
        "platform": f"{platform.system()} {platform.machine()}",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm_version,
    }
