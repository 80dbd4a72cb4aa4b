"""Energy sources against fake data: a powercap tree in tmp_path, fake IOReport counters that
publish in batches on an injected clock (no sleeps), and the meter over both."""

from collections import namedtuple
from types import SimpleNamespace

import pytest

from mlx_specdec.energy import (
    JOULES_PER_COUNT,
    QUIET_S,
    Battery,
    EnergyCounter,
    EnergyMeter,
    EnergyReading,
    EnergyTimeline,
    IOReportReader,
    IOReportSource,
    NullSource,
    RaplSource,
    Sample,
    ZeusReader,
    _ioreport_probe,
    battery,
    classify_channel,
    detect_energy_source,
    rail_counters,
)


def make_zone(root, zone, name, energy_uj, max_range_uj=1_000_000_000):
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return d


def set_energy(zone_dir, energy_uj):
    (zone_dir / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def powercap(tmp_path):
    """Two packages, each with core/dram subdomains, plus a psys zone and the control dir."""
    (tmp_path / "intel-rapl").mkdir()  # the control type, not a zone
    p0 = make_zone(tmp_path, "intel-rapl:0", "package-0", 5_000_000)
    p1 = make_zone(tmp_path, "intel-rapl:1", "package-1", 7_000_000)
    make_zone(tmp_path, "intel-rapl:0:0", "core", 1_000_000)
    make_zone(tmp_path, "intel-rapl:0:1", "dram", 1_000_000)
    make_zone(tmp_path, "intel-rapl:2", "psys", 90_000_000)
    return tmp_path, p0, p1


def test_rapl_sums_package_domains_only(powercap):
    root, p0, p1 = powercap
    source = RaplSource(root)
    assert source.available and source.name == "RAPL"
    start = source.read()
    set_energy(p0, 6_000_000)  # +1 J
    set_energy(p1, 9_500_000)  # +2.5 J
    # Subdomains and psys moving must not count.
    set_energy(root / "intel-rapl:0:0", 9_000_000)
    set_energy(root / "intel-rapl:2", 99_000_000)
    assert source.read() - start == pytest.approx(3.5)


def test_rapl_wraps_at_max_energy_range(tmp_path):
    p0 = make_zone(tmp_path, "intel-rapl:0", "package-0", 990_000, max_range_uj=1_000_000)
    source = RaplSource(tmp_path)
    start = source.read()
    set_energy(p0, 20_000)  # 10_000 to the wrap + 20_000 after it
    assert source.read() - start == pytest.approx(0.03)
    set_energy(p0, 520_000)
    assert source.read() - start == pytest.approx(0.53)


def test_rapl_unreadable_counter_is_unavailable(tmp_path):
    p0 = make_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    (p0 / "energy_uj").unlink()
    (p0 / "energy_uj").mkdir()  # reading a directory fails like a root-only file does
    source = RaplSource(tmp_path)
    assert not source.available
    assert source.read() is None


def test_rapl_counter_that_becomes_unreadable_reads_none(powercap):
    root, p0, _ = powercap
    source = RaplSource(root)
    assert source.available
    (p0 / "energy_uj").unlink()
    assert source.read() is None


def test_rapl_without_powercap_tree_is_unavailable(tmp_path):
    assert not RaplSource(tmp_path / "missing").available
    make_zone(tmp_path, "intel-rapl:0", "psys", 1)  # no package zone at all
    assert not RaplSource(tmp_path).available


# ---------------------------------------------------------------------------------------------
# IOReport: exact channel names, units, and counters that publish in batches.


@pytest.mark.parametrize(
    "name, rail",
    [
        ("CPU Energy", "CPU"),
        ("DIE_0_CPU Energy", "CPU"),
        ("DIE_1_CPU Energy", "CPU"),
        ("GPU Energy", "GPU"),
        ("ANE", "ANE"),
        ("ANE0", "ANE"),
        ("ANE0_1", "ANE"),
        ("DRAM", "DRAM"),
        ("DRAM0", "DRAM"),
        ("DRAM0_1", "DRAM"),
        # Per-core and cluster channels, SRAM, telemetry, other blocks: never a rail.
        ("PACC_0_CPU", None),
        ("EACC_CPU0", None),
        ("PCPU3", None),
        ("DIE_0_PACC0_CPU1", None),
        ("CPU Energy DTL0", None),
        ("ECPU Energy", None),  # a cluster's share of "CPU Energy" would count twice
        ("GPU SRAM", None),
        ("GPU SRAM0_0", None),
        ("GPUPH", None),
        ("GPU", None),
        ("GPU_0", None),
        ("ANE_SRAM", None),
        ("ANE0_SRAM", None),
        ("DIE_0_ANE", None),
        ("DRAM0_SRAM", None),
        ("AMCC0", None),
        ("apciec0 Energy", None),
    ],
)
def test_classify_channel_matches_whole_names_only(name, rail):
    assert classify_channel(name) == rail
    assert classify_channel(name, has_gpu_energy=True) == rail


@pytest.mark.parametrize("name", ["GPU0", "GPU1", "GPU0_0"])
def test_gpu_parts_count_only_in_a_sample_without_gpu_energy(name):
    assert classify_channel(name, has_gpu_energy=False) == "GPU"
    assert classify_channel(name, has_gpu_energy=True) is None


class Reader:
    """A fake IOReport reader: `samples` in order, the last one repeated."""

    def __init__(self, *samples):
        self.samples = list(samples)

    def sample(self):
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]


def sample(t, **values):
    """Sample(t, counters): keyword names use "_" for " " ("GPU_Energy" -> "GPU Energy"); each
    value is (count, unit), undated."""
    return Sample(t, tuple(EnergyCounter(name.replace("_", " "), unit, v) for name, (v, unit) in values.items()))


def counters_sample(t, counters):
    return Sample(t, tuple(EnergyCounter(name, unit, value, stamp) for name, unit, value, stamp in counters))


def test_multi_die_inventory_counts_every_rail_once():
    """Every counter rises by the same count (1 J in mJ); only the rails add up: both dies, the
    GPU once (not again through GPU0_0), ANE and DRAM per die. Substring or last-match-wins
    matching counts a different number of them."""
    names = [
        "DIE_0_CPU Energy",
        "DIE_1_CPU Energy",
        "DIE_0_PACC_0_CPU",
        "DIE_1_EACC_CPU",
        "CPU Energy DTL7",
        "GPU Energy",
        "GPU0_0",
        "GPU SRAM0_0",
        "ANE0_0",
        "ANE0_1",
        "ANE0_SRAM",
        "DRAM0_0",
        "DRAM0_1",
        "AMCC0_0",
    ]
    first = counters_sample(1.0, [(n, "mJ", 5_000, None) for n in names])
    second = counters_sample(2.0, [(n, "mJ", 6_000, None) for n in names])
    source = IOReportSource(Reader(first, first, second))
    assert source.available
    start = source.read()
    assert source.read() - start == pytest.approx(7.0)  # 2 CPU + 1 GPU + 2 ANE + 2 DRAM


def test_counters_in_mj_uj_and_nj_convert_by_their_own_unit_label():
    first = sample(1.0, CPU_Energy=(1_000, "mJ"), GPU_Energy=(5_000_000_000, "nJ"), ANE=(2_000_000, "uJ"))
    second = sample(2.0, CPU_Energy=(1_500, "mJ"), GPU_Energy=(7_000_000_000, "nJ"), ANE=(3_000_000, "uJ"))
    source = IOReportSource(Reader(first, first, second))
    start = source.read()
    assert source.read() - start == pytest.approx(0.5 + 2.0 + 1.0)
    assert JOULES_PER_COUNT["mJ"] == 1e-3 and JOULES_PER_COUNT["uJ"] == 1e-6 and JOULES_PER_COUNT["nJ"] == 1e-9


def test_counter_in_an_unknown_unit_is_not_counted():
    first = sample(1.0, CPU_Energy=(1_000, "mJ"), DRAM=(1, "kWh"))
    second = sample(2.0, CPU_Energy=(2_000, "mJ"), DRAM=(2, "kWh"))
    source = IOReportSource(Reader(first, first, second))
    start = source.read()
    assert source.read() - start == pytest.approx(1.0)
    assert rail_counters(second.counters) == (EnergyCounter("CPU Energy", "mJ", 2_000),)


def test_gpu_parts_carry_the_gpu_only_while_gpu_energy_is_missing_and_nothing_is_counted_twice():
    both = [sample(t, GPU_Energy=(v, "mJ"), GPU0=(v, "mJ")) for t, v in [(1.0, 1_000), (2.0, 2_000)]]
    parts_only = sample(3.0, GPU0=(3_000, "mJ"))  # "GPU Energy" missing from one sample
    back = sample(4.0, GPU_Energy=(4_000, "mJ"), GPU0=(4_000, "mJ"))
    source = IOReportSource(Reader(both[0], *both, parts_only, back))
    start = source.read()
    assert source.read() - start == pytest.approx(1.0)  # GPU Energy only
    assert source.read() - start == pytest.approx(1.0)  # GPU0 starts counting from its own first value
    # GPU Energy comes back and starts afresh: its 2 J across the gap were GPU0's, already counted.
    assert source.read() - start == pytest.approx(1.0)


def test_counter_that_goes_back_starts_afresh_without_negative_energy():
    source = IOReportSource(
        Reader(*(sample(t, CPU_Energy=(v, "mJ")) for t, v in [(1, 5_000), (1, 5_000), (2, 6_000), (3, 10), (4, 510)]))
    )
    start = source.read()
    assert [source.read() - start for _ in range(3)] == pytest.approx([1.0, 1.0, 1.5])


class FakeChannel:
    """One fake counter that publishes like Apple's: its count moves only at its publication
    times (`spans` apart, cycled, from `first`), by `watts` over each span, rounded to its unit."""

    def __init__(self, name, unit, watts, spans=(2.0,), first=0.0, stamps="driver"):
        self.name, self.unit, self.watts, self.stamps = name, unit, watts, stamps
        self.times, t, i = [first], first, 0
        while t < 1_000:
            t += spans[i % len(spans)]
            self.times.append(t)
            i += 1
        self.frozen = None

    def published(self, now):
        return max(p for p in self.times if p <= now)

    def count(self, at):
        return 10**9 + round(self.watts * (at - self.times[0]) / JOULES_PER_COUNT[self.unit])

    def counter(self, now):
        at = self.published(now)
        stamp = {"driver": at, "missing": None, "ahead": now + 100.0}.get(self.stamps)
        if self.stamps == "frozen":  # the first timestamp, forever
            self.frozen = stamp = self.frozen if self.frozen is not None else at
        return EnergyCounter(self.name, self.unit, self.count(at), stamp)


class FakeMachine:
    """Fake counters and their clock: `sample()` reads every channel at `t`."""

    def __init__(self, *channels, t=100.0):
        self.channels, self.t = channels, t

    def clock(self):
        return self.t

    def sample(self):
        return Sample(self.t, tuple(c.counter(self.t) for c in self.channels))


def poll(machine, seconds, every=0.25):
    """An EnergyMeter on the fake machine, read every `every` s for `seconds`: [(t, reading)]."""
    meter = EnergyMeter(IOReportSource(machine), clock=machine.clock).start()
    out, start = [], machine.t
    for i in range(1, round(seconds / every) + 1):
        machine.t = start + i * every
        out.append((machine.t, meter.reading()))
    return out


def published_joules(channel, t0, t1):
    """The energy `channel` published between the reads at t0 and t1."""
    counts = channel.count(channel.published(t1)) - channel.count(channel.published(t0))
    return counts * JOULES_PER_COUNT[channel.unit]


def test_counters_published_every_2s_polled_every_quarter_second_read_steady_watts_and_exact_joules():
    """CPU and DRAM publish in one batch every 2 s (the first at 101.9 s, after the start at 100 s),
    the GPU every 0.125 s. Watts: within 0.1% of 34 W at every poll once measuring ends, which is
    at the first CPU publication; joules: exactly what was published between the first and last read."""
    cpu = FakeChannel("CPU Energy", "mJ", 20.0, first=-0.1)
    dram = FakeChannel("DRAM0", "mJ", 3.0, first=-0.1)
    gpu = FakeChannel("GPU Energy", "nJ", 11.0, spans=(0.125,), first=0.0)
    machine = FakeMachine(cpu, dram, gpu)
    readings = poll(machine, 10.0)
    # The fake batches as the hardware does: between most polls the CPU counter does not move.
    assert sum(cpu.published(t) == cpu.published(t - 0.25) for t, _ in readings) >= 30
    for t, r in readings:
        assert r.measuring == (t < 101.9), t
        expected = None if t < 101.9 else pytest.approx(34.0, rel=1e-3)
        assert r.watts == expected, (t, r)
    total = sum(published_joules(c, 100.0, 110.0) for c in (cpu, dram, gpu))
    assert readings[-1][1].joules == pytest.approx(total, rel=1e-12)


def test_calibration_on_a_batched_counter_prices_the_timed_rounds_at_the_power_metered_meanwhile(monkeypatch):
    """auto's battery objective on Apple's counters: the rounds are timed (faked here: 0.3 s in all,
    costs of 10 and 20 ms) while a 10 W counter publishes; their joules are 10 W times their seconds."""
    import time

    from mlx_specdec import calibrate as cal

    class TenWatts:  # publishes every 50 ms on the real clock, dated by the driver
        def sample(self):
            now = time.perf_counter()
            at = now - now % 0.05
            return Sample(now, (EnergyCounter("CPU Energy", "mJ", round(10.0 * at * 1e3), at),))

    real = cal.calibrate

    def timed(bundle, max_k, repeats=5, context=32, energy=None, clock=None):
        assert energy is None  # the rounds themselves are only timed
        time.sleep(0.3)
        return [0.01, 0.02]

    monkeypatch.setattr(cal, "calibrate", timed)
    assert real(None, 1, energy=IOReportSource(TenWatts())) == [
        pytest.approx(0.1, rel=0.05),
        pytest.approx(0.2, rel=0.05),
    ]


def test_timeline_dates_energy_within_a_counter_period_for_runs_shorter_than_one():
    """Bench runs of 0.8 s on a 10 W counter that publishes every 2 s: two reads around a run would
    say 0 J or 20 J; the timeline says 8 J for each, wherever the run falls in the period."""
    machine = FakeMachine(FakeChannel("CPU Energy", "mJ", 10.0, first=-0.1), t=100.0)
    runs = [(100.3, 101.1), (101.5, 102.3), (104.05, 104.85)]
    with EnergyTimeline(IOReportSource(machine), every=0, clock=machine.clock) as timeline:
        while machine.t < 107.0:
            machine.t += 0.25
            timeline.poll()
    assert [timeline.joules(t0, t1) for t0, t1 in runs] == [pytest.approx(8.0, rel=1e-3)] * 3
    diffs = {published_joules(machine.channels[0], t0, t1) for t0, t1 in runs}
    assert diffs == {0.0, 20.0}  # what the difference of two reads would have said


def test_timeline_over_a_plain_counter_is_its_difference_and_none_without_a_counter():
    clock = SimpleNamespace(t=10.0)
    source = SimpleNamespace(name="fake", available=True, read=lambda: 5.0 * clock.t)
    with EnergyTimeline(source, every=0, clock=lambda: clock.t) as timeline:
        for _ in range(8):
            clock.t += 0.5
            timeline.poll()
    assert timeline.joules(11.0, 12.5) == pytest.approx(7.5)
    with EnergyTimeline(NullSource(), every=0) as empty:
        empty.poll()
    assert empty.joules(0.0, 1.0) is None


def test_timeline_reads_in_the_background_and_brackets_the_end_before_it_returns():
    import time

    source = SimpleNamespace(name="fake", available=True, read=lambda: 10.0 * time.perf_counter())
    with EnergyTimeline(source, every=0.01) as timeline:
        t0 = time.perf_counter()
        time.sleep(0.1)
        t1 = time.perf_counter()
    assert timeline.joules(t0, t1) == pytest.approx(10.0 * (t1 - t0), rel=1e-3)  # a read is not instantaneous


def test_uneven_publication_periods_still_read_steady_watts():
    """The mJ batches come 2.03-2.23 s apart: watts stay within 0.1% once measuring ends."""
    cpu = FakeChannel("CPU Energy", "mJ", 25.0, spans=(2.03, 2.23, 2.11, 2.17), first=0.05)
    readings = poll(FakeMachine(cpu), 12.0)
    measured = [r.watts for _, r in readings if not r.measuring]
    assert len(measured) >= 36 and measured == pytest.approx([25.0] * len(measured), rel=1e-3)


@pytest.mark.parametrize("stamps", ["driver", "missing"])
def test_channel_reading_zero_contributes_zero_watts_and_does_not_hold_the_meter_back(stamps):
    """An idle GPU reads 0 J: with timestamps it still publishes (its spans close at once, yet the
    meter waits for the CPU's first full period); without, it counts as idle after QUIET_S."""
    cpu = FakeChannel("CPU Energy", "mJ", 20.0, first=-0.1)
    gpu = FakeChannel("GPU Energy", "nJ", 0.0, spans=(0.125,), stamps=stamps)
    readings = poll(FakeMachine(cpu, gpu), 8.0)
    ends = 101.9 if stamps == "driver" else 100.0 + QUIET_S
    for t, r in readings:
        assert r.measuring == (t < ends), t
        if not r.measuring:
            assert r.watts == pytest.approx(20.0, rel=1e-3), (t, r)
    assert readings[-1][1].joules == pytest.approx(published_joules(cpu, 100.0, 108.0), rel=1e-12)


@pytest.mark.parametrize("stamps", ["missing", "frozen", "ahead"])
def test_unusable_driver_timestamps_fall_back_to_observation_time(stamps):
    """Timestamps missing, frozen while the value moves, or ahead of the clock: publications are
    dated by the poll that saw the value change, so watts need two of them (here at 101.9 and
    103.9 s, seen at 102.0 and 104.0) and then read 20 W at every poll."""
    cpu = FakeChannel("CPU Energy", "mJ", 20.0, first=-0.1, stamps=stamps)
    readings = poll(FakeMachine(cpu), 10.0)
    for t, r in readings:
        assert r.measuring == (t < 104.0), t
        if not r.measuring:
            assert r.watts == pytest.approx(20.0, rel=1e-3), (t, r)


def test_split_batch_tail_under_50ms_is_not_a_counter_period():
    """A batch is sometimes followed ~20 ms later by a small second publication: a tail. Over its
    own span it would read 200 W; the meter waits for the next batch instead."""
    stamps_values = [(99.99, 1_000_000), (100.01, 1_004_000), (102.09, 1_040_000)]  # mJ: 4 J tail, 36 J batch
    samples = [
        counters_sample(t, [("CPU Energy", "mJ", v, s)]) for t, (s, v) in zip((100.0, 100.25, 102.25), stamps_values)
    ]
    meter = EnergyMeter(IOReportSource(Reader(samples[0], *samples)), clock=iter([100.0, 100.25, 102.25]).__next__)
    meter.start()
    assert meter.reading().measuring  # the tail, 20 ms after the batch
    assert meter.reading().watts == pytest.approx(40.0 / 2.1)  # the next batch: 2.1 s after the first


def test_meter_with_only_two_reads_gives_the_mean_over_the_driver_dated_spans():
    """Piped chat and the benchmark read at the start and the end only."""
    cpu = FakeChannel("CPU Energy", "mJ", 20.0, first=-0.1)
    gpu = FakeChannel("GPU Energy", "nJ", 4.0, spans=(0.125,))
    machine = FakeMachine(cpu, gpu)
    with EnergyMeter(IOReportSource(machine), clock=machine.clock) as meter:
        machine.t += 7.0
    assert not meter.measuring
    assert meter.watts == pytest.approx(24.0, rel=1e-3)
    assert meter.seconds == pytest.approx(7.0)


def test_undated_counter_read_only_at_start_and_end_gives_the_mean_over_the_interval():
    """Without timestamps two reads cannot date a publication: after two quiet periods the meter
    falls back to the energy seen over the observation window (the zeus fallback, piped)."""
    cpu = FakeChannel("CPU Energy", "mJ", 20.0, first=-0.1, stamps="missing")
    machine = FakeMachine(cpu)
    with EnergyMeter(IOReportSource(machine), clock=machine.clock) as meter:
        machine.t += 7.0
    assert not meter.measuring
    assert meter.watts == pytest.approx(published_joules(cpu, 100.0, 107.0) / 7.0)


def test_meter_under_one_counter_period_says_measuring_not_zero():
    cpu = FakeChannel("CPU Energy", "mJ", 20.0, first=-0.1)  # publishes at 101.9 s
    machine = FakeMachine(cpu)
    with EnergyMeter(IOReportSource(machine), clock=machine.clock) as meter:
        machine.t += 1.5
    reading = meter.reading()
    assert reading.measuring and reading.watts is None and reading.joules == 0.0


def test_meter_on_a_source_that_reads_nothing_is_na_not_measuring():
    with EnergyMeter(IOReportSource(Reader(None)), clock=lambda: 5.0) as meter:
        pass
    assert meter.reading() == EnergyReading(0.0, None, None, measuring=False)


def test_ioreport_reader_that_fails_or_has_no_rail_reads_none():
    class Broken:
        def sample(self):
            raise RuntimeError("IOReport channel not found")

    assert not IOReportSource(Broken()).available
    assert IOReportSource(Reader(sample(1.0, PCPU3=(5, "mJ")))).read() is None
    assert IOReportSource(Reader(None)).read() is None


def test_ioreport_reader_probe_fails_cleanly_without_libioreport():
    assert IOReportReader.open() is None
    assert _ioreport_probe.__wrapped__() is False


Metrics = namedtuple("Metrics", "cpu_total_mj gpu_mj gpu_sram_mj ane_mj dram_mj")


class FakeZeus:
    """Stands in for zeus_apple_silicon.AppleEnergyMonitor: cumulative millijoules."""

    def __init__(self, *samples):
        self.samples = list(samples)

    def get_cumulative_energy(self):
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]


def test_zeus_fallback_counts_rail_fields_in_millijoules_and_not_gpu_sram():
    monitor = FakeZeus(Metrics(1000, 2000, 50, 0, None), Metrics(4000, 2500, 900, 500, None))
    source = IOReportSource(ZeusReader(monitor, clock=lambda: 1.0), name="IOReport (zeus)")
    assert source.available and source.name == "IOReport (zeus)"
    assert source.read() == pytest.approx(3.0 + 0.5 + 0.5)  # from the probe's read: GPU SRAM left out
    assert source.sample().counters == (
        EnergyCounter("CPU Energy", "mJ", 4000),
        EnergyCounter("GPU Energy", "mJ", 2500),
        EnergyCounter("ANE", "mJ", 500),
    )


def test_null_source_says_na():
    source = NullSource()
    assert source.name == "n/a" and not source.available and source.read() is None


@pytest.mark.parametrize(
    "ioreport, rapl, want",
    [(True, True, "IOReport"), (False, True, "RAPL"), (False, False, "n/a")],
)
def test_detect_prefers_ioreport_then_rapl_then_null(monkeypatch, ioreport, rapl, want):
    from mlx_specdec import energy

    monkeypatch.setattr(energy, "IOReportSource", lambda: SimpleNamespace(name="IOReport", available=ioreport))
    monkeypatch.setattr(energy, "RaplSource", lambda: SimpleNamespace(name="RAPL", available=rapl))
    source = detect_energy_source()
    assert source.name == want
    assert isinstance(source, NullSource) == (want == "n/a")


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class PlainCounter:
    name, available = "fake", True

    def __init__(self):
        self.j = 50.0

    def read(self):
        return self.j


def test_energy_meter_gives_joules_and_mean_watts_live_and_frozen_at_exit():
    clock, counter = Clock(), PlainCounter()
    with EnergyMeter(counter, clock=clock) as meter:
        clock.t += 2.0
        counter.j += 10.0
        assert meter.joules == pytest.approx(10.0) and meter.watts == pytest.approx(5.0)
        clock.t += 2.0
        counter.j += 30.0
    clock.t += 100.0
    counter.j += 100.0  # after exit: frozen
    assert meter.joules == pytest.approx(40.0)
    assert meter.seconds == pytest.approx(4.0)
    assert meter.watts == pytest.approx(10.0)


def test_energy_meter_on_null_source_reads_none():
    with EnergyMeter(NullSource()) as meter:
        pass
    assert meter.joules is None and meter.watts is None


Sensors = namedtuple("Sensors", "percent secsleft power_plugged")


def test_battery_reports_level_and_power_source():
    assert battery(lambda: Sensors(81.5, 3600, False)) == Battery(81.5, True)
    assert battery(lambda: Sensors(100, -2, True)) == Battery(100.0, False)
    assert battery(lambda: Sensors(50, -1, None)) == Battery(50.0, None)


def test_battery_absent_or_failing_is_none():
    assert battery(lambda: None) is None

    def boom():
        raise NotImplementedError

    assert battery(boom) is None
