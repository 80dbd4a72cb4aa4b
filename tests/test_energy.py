"""Energy sources against fake data: a powercap tree in tmp_path and a fake IOReport reader."""

from collections import namedtuple
from types import SimpleNamespace

import pytest

from mlx_specdec.energy import (
    Battery,
    EnergyMeter,
    IOReportSource,
    NullSource,
    RaplSource,
    battery,
    detect_energy_source,
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


Metrics = namedtuple("Metrics", "cpu_total_mj gpu_mj gpu_sram_mj ane_mj dram_mj")


class FakeIOReport:
    """Stands in for zeus_apple_silicon.AppleEnergyMonitor: cumulative millijoules."""

    def __init__(self, samples):
        self.samples = list(samples)

    def get_cumulative_energy(self):
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]


def test_ioreport_sums_fields_in_millijoules_and_skips_missing():
    reader = FakeIOReport(
        [
            Metrics(1000, 2000, None, 0, None),  # consumed by the availability probe
            Metrics(1000, 2000, None, 0, None),
            Metrics(4000, 2500, None, 500, None),
        ]
    )
    source = IOReportSource(reader)
    assert source.available and source.name == "IOReport"
    assert source.read() == pytest.approx(3.0)
    assert source.read() == pytest.approx(7.0)


def test_ioreport_reader_that_fails_reads_none():
    class Broken:
        def get_cumulative_energy(self):
            raise RuntimeError("IOReport channel not found")

    assert not IOReportSource(Broken()).available
    assert IOReportSource(SimpleNamespace(get_cumulative_energy=lambda: Metrics(*[None] * 5))).read() is None


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


class Counter:
    name, available = "fake", True

    def __init__(self):
        self.j = 50.0

    def read(self):
        return self.j


def test_energy_meter_gives_joules_and_mean_watts_live_and_frozen_at_exit():
    clock, counter = Clock(), Counter()
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
