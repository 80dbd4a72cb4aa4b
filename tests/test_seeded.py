"""Seeded sampling: the same seed gives the same text whatever the draft schedule, and each token
is still an exact sample of the target's distribution (sampling.py: Gumbel-coupled picks)."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec import sampling
from mlx_specdec.cache import PromptCache
from mlx_specdec.decode import generate
from mlx_specdec.sampling import SamplingParams, coupled, probs
from mlx_specdec.settings import GenerationSettings

from .helpers.stats import chi2_critical, chi_square, two_sample_chi_square


def seeded(b, ids, seed, k, **params):
    sampling = SamplingParams(seed=seed, **params)
    return generate(b, ids, GenerationSettings(max_tokens=28, draft=k, sampling=sampling)).tokens


def test_seeded_speculative_output_equals_seeded_plain_output_whatever_the_draft_schedule(bundles):
    b, ids = bundles["centroid"], [2, 40, 41, 42, 43, 44]
    plain = seeded(b, ids, 1, 0, temp=1.0)
    assert all(seeded(b, ids, 1, k, temp=1.0) == plain for k in (1, 8))  # auto too: the slow test below
    assert seeded(b, ids, 100, 0, temp=1.0) != plain  # the seed matters


@pytest.mark.slow
@pytest.mark.parametrize("head", ["dense"])  # the centroid head: k = 1 and 8 in the quick test above
def test_seeded_output_is_the_same_for_every_draft_length_and_filter(bundles, head):
    b, ids = bundles[head], [2, 40, 41, 42, 43, 44]
    for seed, params in ((2, dict(temp=0.7, top_k=20)), (3, dict(temp=1.3, top_p=0.9))):  # plain temp: above
        plain = seeded(b, ids, seed, 0, **params)
        for k in (3, "auto"):  # k = 1 and 8: the quick test above; auto's schedule depends on timing
            assert seeded(b, ids, seed, k, **params) == plain, (seed, k)


def coupled_counts(logits, runs, params):
    counts = np.zeros(logits.shape[-1])
    for seed in range(runs):
        counts[int(coupled(logits[None], SamplingParams(seed=seed, **params), 7)[0].item())] += 1
    return counts


def test_coupled_picks_follow_the_target_distribution_and_a_mutant_noise_fails(monkeypatch):
    logits = mx.array([2.0, 1.5, 0.3, 0.0, -1.0, 1.0])
    params = dict(temp=1.0)
    p = np.array(probs(logits, SamplingParams(**params)))
    counts = coupled_counts(logits, 3000, params)
    assert chi_square(counts, p) < chi2_critical(5)
    real = sampling.noise
    monkeypatch.setattr(sampling, "noise", lambda *a: 0.5 * real(*a))  # the wrong noise scale: too peaked
    assert chi_square(coupled_counts(logits, 3000, params), p) > chi2_critical(5)


def test_coupled_noise_depends_on_seed_and_position_only():
    a = sampling.noise(5, 10, 3, 16)
    assert mx.array_equal(a[1:], sampling.noise(5, 11, 2, 16))  # the same position, another pass
    assert not mx.array_equal(a[0], sampling.noise(6, 10, 1, 16)[0]) and not mx.array_equal(a[0], a[1])


@pytest.mark.slow
def test_unseeded_rejection_sampling_still_matches_plain_sampling_of_the_target(bundles):
    """Two-sample chi-square on tokens 2 and 3 (made by speculative rounds): unseeded requests keep
    rejection sampling (it accepts more: scripts/measure/coupled_acceptance.py)."""
    b, ids, runs = bundles["dense"], [2, 40, 41, 42, 43, 44, 45], 100

    def outputs(k):
        out, pc = [], PromptCache(b)  # the prompt is prefilled once per k
        for seed in range(runs):
            mx.random.seed(10_000 * k + seed)  # reproducible, but the request carries no seed
            settings = GenerationSettings(max_tokens=3, draft=k, sampling=SamplingParams(temp=1.0, top_k=3))
            out.append(generate(b, ids, settings, prompt_cache=pc).tokens)
        return np.array(out)

    plain, spec = outputs(0), outputs(3)
    for col in (1, 2):
        stat, n = two_sample_chi_square(plain[:, col], spec[:, col])
        assert n >= 3
        assert stat < chi2_critical(n - 1), col
