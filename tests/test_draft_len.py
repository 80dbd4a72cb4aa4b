"""The k-chooser picks the k with the best expected rate, and 0 when drafting cannot pay."""

import pytest

from mlx_specdec.draft_len import AutoPolicy, choose_k, expected_tokens


def test_expected_tokens_is_one_plus_sum_of_prefix_products():
    assert expected_tokens([0.5, 0.5, 0.5], 0) == 1.0
    assert expected_tokens([0.5, 0.5, 0.5], 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens([1.0] * 4, 4) == 5.0


def test_chooser_maximises_expected_rate():
    # Verify costs ~1 per round plus 0.1 per draft: high acceptance pays for long drafts.
    cost = [1.0 + 0.1 * k for k in range(9)]
    assert choose_k([0.95] * 8, cost) == 8
    # Brute force agrees for a mixed acceptance profile.
    acc = [0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1]
    rates = [expected_tokens(acc, k) / cost[k] for k in range(9)]
    assert choose_k(acc, cost) == max(range(9), key=rates.__getitem__)


def test_chooser_returns_zero_when_drafting_cannot_pay():
    # CPU-like costs: a verify of k+1 tokens costs k+1 passes; no acceptance can pay for that.
    cost = [1.0 + 1.05 * k for k in range(9)]
    assert choose_k([0.99] * 8, cost) == 0
    # A useless drafter never pays, even when verification is free.
    assert choose_k([0.0] * 8, [1.0] * 9) == 0


def test_auto_policy_learns_a_useless_drafter_and_probes_occasionally():
    p = AutoPolicy([1.0, 1.1, 1.2, 1.3], probe_every=10)
    ks = []
    for _ in range(100):
        k = p.choose(3)
        ks.append(k)
        p.observe(k, 0, 0.0)  # nothing ever accepted
    assert ks[0] > 0  # the prior lets it try
    assert ks[-50:].count(0) >= 45  # then it mostly decodes plainly
    assert 0 < sum(1 for k in ks[-50:] if k) <= 5  # with rare probes


def test_auto_policy_learns_a_perfect_drafter():
    p = AutoPolicy([1.0, 1.1, 1.2, 1.3, 1.4])
    for _ in range(30):
        k = p.choose(4)
        p.observe(k, k, 0.0)
    assert p.choose(4) == 4
