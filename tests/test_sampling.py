"""Sampling: rejection sampling reproduces the target's distribution exactly, and beats exact match."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec.cache import PromptCache
from mlx_specdec.decode import generate
from mlx_specdec.sampling import accept_rejection, probs
from mlx_specdec.settings import GenerationSettings, SamplingParams

from .helpers.stats import chi2_critical, chi_square, two_sample_chi_square


def fixed_pq(V=6, k=2, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(V), size=k + 1).astype(np.float32)
    q = rng.dirichlet(np.ones(V), size=k).astype(np.float32)
    return mx.array(p), mx.array(q)


def first_tokens(p, q, trials, rule):
    """Run one round `trials` times; return the first emitted token each time."""
    out = np.zeros(trials, dtype=np.int64)
    mx.random.seed(1234)
    for t in range(trials):
        drafts = mx.random.categorical(mx.log(q))  # d_i ~ q_i
        n, nxt = rule(p, q, drafts)
        mx.eval(n, nxt, drafts)
        out[t] = drafts[0].item() if n.item() > 0 else nxt.item()
    return out


def biased_accept_all(p, q, drafts):
    """A wrong rule (accept every draft): its output follows q, not p."""
    return mx.array(drafts.shape[0]), mx.argmax(p[-1])


def resample_from_p_after_a_rejection(p, q, drafts):
    """A wrong rule (the right acceptance test, but a rejected draft is replaced by a draw from p
    instead of from the residual max(p - q, 0)): its output over-weights where q and p agree."""
    k = drafts.shape[0]
    rows = mx.arange(k)
    n = mx.cumprod((mx.random.uniform(shape=(k,)) * q[rows, drafts] < p[rows, drafts]).astype(mx.int32)).sum()
    return n, mx.random.categorical(mx.log(mx.take(p, n, axis=0)))


def test_rejection_sampling_first_token_follows_target_distribution():
    p, q = fixed_pq()
    tokens = first_tokens(p, q, 3000, accept_rejection)
    counts = np.bincount(tokens, minlength=6)
    assert chi_square(counts, np.array(p[0])) < chi2_critical(5)


@pytest.mark.parametrize("rule", [biased_accept_all, resample_from_p_after_a_rejection])
def test_chi_square_check_rejects_a_biased_acceptance_rule(rule):
    p, q = fixed_pq()
    tokens = first_tokens(p, q, 3000, rule)
    counts = np.bincount(tokens, minlength=6)
    assert chi_square(counts, np.array(p[0])) > chi2_critical(5)


@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_rejection_sampling_accepts_more_than_exact_match_at_temperature_one():
    p, q = fixed_pq(V=8, k=1, seed=3)
    mx.random.seed(7)
    rej = exact = 0
    trials = 2000
    for _ in range(trials):
        d = mx.random.categorical(mx.log(q))
        n, _ = accept_rejection(p, q, d)
        target_tok = mx.random.categorical(mx.log(p[0]))  # exact-match verification
        mx.eval(n, target_tok)
        rej += n.item()
        exact += int(target_tok.item() == d[0].item())
    pn, qn = np.array(p[0]), np.array(q[0])
    # Expected: sum(min(p, q)) vs sum(p * q); both measured, and the gap is large here.
    assert abs(rej / trials - np.minimum(pn, qn).sum()) < 0.05
    assert abs(exact / trials - (pn * qn).sum()) < 0.05
    assert rej > exact * 1.3


def test_filters_keep_the_expected_tokens():
    logits = mx.array([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert (np.array(probs(logits, SamplingParams(temp=1.0, top_k=2))) > 0).sum() == 2
    p = np.array(probs(logits, SamplingParams(temp=1.0, top_p=0.7)))
    assert (p > 0).tolist() == [[True, True, False, False, False]]  # 0.64 < 0.7 <= 0.88
    p = np.array(probs(logits, SamplingParams(temp=1.0, min_p=0.3)))
    assert (p > 0).tolist() == [[True, True, False, False, False]]  # e^-1 = 0.37 >= 0.3 > e^-2
    assert np.allclose(p.sum(), 1.0)


@pytest.mark.slow
def test_speculative_sampling_matches_plain_sampling_of_the_target(bundles):
    """Two-sample chi-square on tokens 2 and 3 (made by speculative rounds) over many seeds."""
    b = bundles["dense"]
    params = dict(temp=1.0, top_k=3)
    ids = [2, 40, 41, 42, 43, 44, 45]
    runs = 100

    def outputs(k):
        pc = PromptCache(b)
        return np.array(
            [
                generate(
                    b,
                    ids,
                    GenerationSettings(
                        max_tokens=3, draft=k, sampling=SamplingParams(seed=10_000 * k + seed, **params)
                    ),
                    prompt_cache=pc,
                )[1]
                for seed in range(runs)
            ]
        )

    plain, spec = outputs(0), outputs(3)
    for col in (1, 2):
        stat, n = two_sample_chi_square(plain[:, col], spec[:, col])
        assert n >= 3
        assert stat < chi2_critical(n - 1), f"token {col}: chi2 {stat:.1f} over {n} categories"
