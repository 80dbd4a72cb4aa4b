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
        p.observe(k, 0)  # nothing ever accepted
    assert ks[0] > 0  # the prior lets it try
    assert ks[-50:].count(0) >= 45  # then it mostly decodes plainly
    assert 0 < sum(1 for k in ks[-50:] if k) <= 5  # with rare probes


def test_auto_policy_learns_a_perfect_drafter():
    p = AutoPolicy([1.0, 1.1, 1.2, 1.3, 1.4])
    for _ in range(30):
        k = p.choose(4)
        p.observe(k, k)
    assert p.choose(4) == 4


class WattMeter:
    """A fake energy counter: a constant 10 W machine (joules = 10 * seconds)."""

    available = True
    name = "fake"
    reads = 0

    def read(self):
        import time

        self.reads += 1
        return 10.0 * time.perf_counter()


@pytest.mark.slow  # the quick loop keeps a cheaper check of the same idea
def test_calibration_in_joules_uses_the_energy_counter(bundles):
    from mlx_specdec.calibrate import calibrate

    meter = WattMeter()
    joules = calibrate(bundles["dense"], 2, repeats=1, energy=meter)
    assert len(joules) == 3 and all(0 < j < 10.0 for j in joules)  # each pass well under a second
    # One counter span each: a lone plain pass, queued plain steps, rounds of 1 and 2 drafts (a
    # drafter step alone is not timed: no cost uses it).
    assert meter.reads == 2 * 4


def test_auto_policy_optimises_per_joule_on_battery_and_is_kept_per_objective(bundles, monkeypatch):
    from mlx_specdec import calibrate, energy

    calls = []
    monkeypatch.setattr(calibrate, "calibrate", lambda bundle, k, energy=None: calls.append(energy) or [1.0] * (k + 1))
    monkeypatch.setattr(energy, "detect_energy_source", lambda: WattMeter())
    monkeypatch.setattr(energy, "battery", lambda: energy.Battery(percent=50.0, on_battery=True))
    policies = calibrate.Policies(bundles["dense"])  # owned by whoever runs the requests
    first = policies.get("auto")  # on battery -> joules
    assert policies.get("auto", battery=True) is first  # kept for the next request
    policies.get("auto", battery=False)  # mains -> seconds
    assert set(policies.objectives) == {"joules", "seconds"}
    assert isinstance(calls[0], WattMeter) and calls[1] is None and len(calls) == 2


def test_battery_mode_without_an_energy_counter_falls_back_to_seconds(monkeypatch):
    from mlx_specdec import calibrate, energy

    monkeypatch.setattr(energy, "detect_energy_source", lambda: energy.NullSource())
    assert calibrate.objective(True) == ("seconds", None)


def test_calibrated_costs_never_fall_as_k_grows(bundles):
    """Noise must not make a longer round look cheaper (the policy would draft forever)."""
    from mlx_specdec.calibrate import calibrate

    costs = calibrate(bundles["dense"], 4, repeats=2)
    assert all(b >= a for a, b in zip(costs, costs[1:]))  # a running maximum: equal under noise
    assert costs[-1] > costs[0]  # four drafts and a 5-token verify cost more than a plain step


def test_auto_policy_forgets_old_acceptance_when_the_drafter_stops_agreeing():
    p = AutoPolicy([1.0, 1.5, 2.0, 2.5, 3.0])  # CPU-like: drafting pays only when accepted
    for _ in range(60):
        k = p.choose(4)
        p.observe(k, k)  # everything accepted
    assert p.choose(4) == 4
    ks = []
    for _ in range(60):
        k = p.choose(4)
        ks.append(k)
        p.observe(k, 0)  # now nothing is
    assert ks[0] == 4 and ks.index(0) <= 20  # back to plain decoding within 20 rounds
    assert ks[-30:].count(0) >= 28  # and it stays there, but for rare probes


def test_probes_of_a_useless_drafter_back_off():
    p = AutoPolicy([1.0, 1.5, 2.0], probe_every=8, max_probe_gap=64)
    ks = []
    for _ in range(1000):
        k = p.choose(2)
        ks.append(k)
        p.observe(k, 0)
    probes = [i for i, k in enumerate(ks) if k]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps[:3] == [17, 33, 65] and max(gaps) == 65  # 8, 16, 32, 64 plain rounds between probes
    assert len(probes) < 25  # 2.5% of rounds, not 1 in 8
