"""Sampling after media: every token the speculative rounds make is an exact sample of the
target's own distribution given an image, an audio clip and the tokens before them, and wrong
rules fail (the E2B-shaped fixture with both towers, tests/fixtures/media_audio).

The check is the randomised probability integral transform: for a token t drawn from p (tokens
ordered by p, most likely first), u = P(tokens before t) + U * p(t), with U uniform, is uniform
on [0, 1); and the u of each token given the ones before it are independent (Rosenblatt). So the
u of tokens 2-5 of every run pool into one sample, whose counts in equal bins must pass a
chi-square against uniform. p comes from the target's plain prefill of the media and a pass
over the run's own tokens, never from the rounds under test.

Temperature 2, no filter: the fixture's random drafter then agrees with the target on about one
draft in four, so the accept/reject rule really runs (one in fifteen at temperature 1: a wrong
rule there has little to act on). Unseeded sampling: the seeded path (exact match on coupled picks)
equals plain token for token, checked in the quick test below.
"""

import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec import round as round_module
from mlx_specdec import sampling
from mlx_specdec.cache import PromptCache
from mlx_specdec.decode import generate
from mlx_specdec.settings import GenerationSettings, SamplingParams

from .conftest import FIXTURES
from .helpers.media import media_turn, reference_pair
from .helpers.stats import chi2_critical, chi_square

AUDIO = FIXTURES / "media_audio"
PARAMS = SamplingParams(temp=2.0)
BINS = 5


@pytest.fixture(scope="module")
def bundle():
    return reference_pair(AUDIO)  # no end token: every run makes its five tokens


@pytest.fixture(scope="module")
def prompt(bundle):
    return media_turn(bundle, "Say what you see and hear.", [FIXTURES / "media" / "image.png"], [AUDIO / "clip.wav"])


def uniforms(bundle, prompt, runs: int) -> tuple[np.ndarray, int, int]:
    """`runs` speculative runs (k = 3) after the media -> (the u of tokens 2-5 of every run,
    drafts accepted, drafts made)."""
    ids, media = prompt
    base = PromptCache(bundle)
    media.prefill(bundle.target, ids, 0, base.cache)  # the plain path: the media's K/V once
    base.tokens = list(ids)
    rng = np.random.default_rng(0)
    us, accepted, drafted = [], 0, 0
    for run in range(runs):
        mx.random.seed(run)
        out = generate(bundle, ids, GenerationSettings(max_tokens=5, draft=3, sampling=PARAMS), media=media)
        accepted, drafted = accepted + out.stats.accepted, drafted + out.stats.drafted
        logits, _ = bundle.target(mx.array([out.tokens[:-1]]), base.copy(len(ids)).cache)
        p = np.array(sampling.probs(logits[0], PARAMS), np.float64)  # row j: token j + 2, given those before
        for row, tok in zip(p, out.tokens[1:], strict=True):
            order = np.argsort(-row, kind="stable")
            before = row[order[: int(np.nonzero(order == tok)[0][0])]].sum()
            us.append(before + rng.uniform() * row[tok])
    return np.array(us), accepted, drafted


def chi2_uniform(us: np.ndarray) -> float:
    counts = np.bincount(np.minimum((us * BINS).astype(int), BINS - 1), minlength=BINS).astype(float)
    return chi_square(counts, np.full(BINS, 1 / BINS))


@pytest.mark.slow
def test_speculative_sampling_after_media_follows_the_targets_distribution(bundle, prompt):
    us, accepted, drafted = uniforms(bundle, prompt, 200)
    assert 0.1 < accepted / drafted < 0.9  # the rule both accepts and rejects here
    assert chi2_uniform(us) < chi2_critical(BINS - 1)


def accept_every_draft(p, q, drafts):
    """Wrong: the drafts go out unchecked, so tokens follow the drafter."""
    return mx.array(drafts.shape[0]), mx.random.categorical(mx.log(p[-1]))


def drafter_reports_a_sharper_q(draft):
    """Wrong: the drafter draws from q but reports q squared (renormalised) to the accept rule."""

    def wrong(*args, **kwargs):
        drafts, q = draft(*args, **kwargs)
        return drafts, q * q / (q * q).sum(axis=-1, keepdims=True)

    return wrong


@pytest.mark.slow
@pytest.mark.parametrize("mutant, runs", [("accept_every_draft", 50), ("sharper_q", 200)])
def test_the_check_after_media_fails_a_wrong_accept_rule(bundle, prompt, monkeypatch, mutant, runs):
    if mutant == "accept_every_draft":
        monkeypatch.setattr(sampling, "accept_rejection", accept_every_draft)
    else:
        monkeypatch.setattr(round_module, "draft", drafter_reports_a_sharper_q(round_module.draft))
    us, _, _ = uniforms(bundle, prompt, runs)
    assert chi2_uniform(us) > chi2_critical(BINS - 1)


def test_seeded_speculative_sampling_after_media_equals_seeded_plain(bundle, prompt):
    ids, media = prompt

    def run(seed, k):
        settings = GenerationSettings(max_tokens=12, draft=k, sampling=SamplingParams(temp=2.0, seed=seed))
        return generate(bundle, ids, settings, media=media)

    for seed in (1, 2):
        plain, spec = run(seed, 0), run(seed, 3)
        assert spec.tokens == plain.tokens and spec.stats.drafted > 0
    assert run(3, 0).tokens != plain.tokens  # the seed matters
