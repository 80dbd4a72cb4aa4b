"""Machine readings for the chat view and the benchmark: energy, battery, memory.

An `EnergySource` exposes one cumulative counter in joules (`read()`), from whatever the machine
offers without sudo:
- macOS: Apple's IOReport "Energy Model" counters through the optional `zeus-apple-silicon`
  package (`pip install 'mlx-specdec[energy]'`): CPU + GPU + GPU SRAM + ANE + DRAM.
- Linux: RAPL under `/sys/class/powercap/intel-rapl:N/energy_uj`, package domains only (the
  `intel-rapl:N:M` subdomains and `psys` overlap them), with wrap-around at
  `max_energy_range_uj`. Recent kernels make `energy_uj` root-only; then RAPL is unavailable.
- otherwise `NullSource`, whose name is "n/a" and which reads None.

Invariants: nothing here raises on a missing or unreadable counter; it reads None and the UI
shows "n/a". Readings are whole-machine (or whole-SoC) energy, not this process's.
`EnergyMeter` turns two counter readings into joules and mean watts over an interval.
`memory()` reads mlx's active and peak allocation the same way: None where the backend cannot
tell (the UI never imports mlx; the loop records its own peak per token).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable

POWERCAP_ROOT = Path("/sys/class/powercap")
# Top-level RAPL zones only: "intel-rapl:0", not the subdomain "intel-rapl:0:1".
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")


@runtime_checkable
class EnergySource(Protocol):
    """A cumulative energy counter: `read()` gives joules since an arbitrary fixed point."""

    name: str

    @property
    def available(self) -> bool: ...

    def read(self) -> Optional[float]: ...


class NullSource:
    """No energy counter on this machine: every reading is None and the UI shows "n/a"."""

    name = "n/a"
    available = False

    def read(self) -> Optional[float]:
        return None


class RaplSource:
    """Linux RAPL package energy, summed over packages (sockets), in joules.

    `root` is the powercap class directory (injectable for tests). The raw counters wrap at
    `max_energy_range_uj`; each `read()` adds the forward difference since the previous read,
    so the returned total stays monotonic as long as reads come more often than one wrap
    (hours at laptop power).
    """

    name = "RAPL"

    def __init__(self, root: Path | str = POWERCAP_ROOT):
        self.root = Path(root)
        self._zones = _package_zones(self.root)
        self._last: dict[Path, int] = {}
        self._total_uj = 0
        self._available = bool(self._zones) and self.read() is not None

    @property
    def available(self) -> bool:
        return self._available

    def read(self) -> Optional[float]:
        raws = {}
        for zone, max_range in self._zones.items():
            raw = _read_int(zone / "energy_uj")
            if raw is None:
                return None
            raws[zone] = (raw, max_range)
        for zone, (raw, max_range) in raws.items():
            last = self._last.get(zone)
            if last is not None:
                delta = raw - last
                if delta < 0:  # the counter wrapped at max_energy_range_uj
                    delta += max_range if max_range else 0
                self._total_uj += max(delta, 0)
            self._last[zone] = raw
        return self._total_uj / 1e6


def _package_zones(root: Path) -> dict[Path, int]:
    """Package zones under `root` -> their wrap range in microjoules (0 when unknown)."""
    zones = {}
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return zones
    for zone in entries:
        if not _PACKAGE_ZONE.match(zone.name):
            continue
        name = _read_text(zone / "name") or ""
        # "psys" (platform) already contains the packages; dram/core zones are subdomains.
        if not name.startswith("package"):
            continue
        zones[zone] = _read_int(zone / "max_energy_range_uj") or 0
    return zones


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> Optional[int]:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class IOReportSource:
    """Apple Silicon SoC energy from IOReport, no sudo, via `zeus_apple_silicon`.

    `reader` is any object with `get_cumulative_energy()` returning fields in millijoules
    (`cpu_total_mj`, `gpu_mj`, `gpu_sram_mj`, `ane_mj`, `dram_mj`; None where the chip lacks
    one); by default a `zeus_apple_silicon.AppleEnergyMonitor`, when that package imports.
    """

    name = "IOReport"
    FIELDS = ("cpu_total_mj", "gpu_mj", "gpu_sram_mj", "ane_mj", "dram_mj")

    def __init__(self, reader=None):
        if reader is None:
            reader = _zeus_monitor()
        self._reader = reader
        self._available = reader is not None and self.read() is not None

    @property
    def available(self) -> bool:
        return self._available

    def read(self) -> Optional[float]:
        if self._reader is None:
            return None
        try:
            metrics = self._reader.get_cumulative_energy()
        except Exception:  # the private framework can fail on an unknown chip
            return None
        values = [getattr(metrics, f, None) for f in self.FIELDS]
        values = [v for v in values if v is not None]
        return sum(values) / 1e3 if values else None


def _zeus_monitor():
    if sys.platform != "darwin":
        return None
    try:
        from zeus_apple_silicon import AppleEnergyMonitor
    except ImportError:
        return None
    try:
        return AppleEnergyMonitor()
    except Exception:
        return None


def detect_energy_source() -> EnergySource:
    """The best available source on this machine: IOReport, RAPL, else `NullSource`."""
    for make in (IOReportSource, RaplSource):
        source = make()
        if source.available:
            return source
    return NullSource()


class EnergyMeter:
    """Joules and mean watts over an interval of one `EnergySource`.

    with EnergyMeter(source) as meter:
        ...                      # meter.joules / meter.watts read live meanwhile
    meter.joules, meter.watts    # frozen at exit; None when the source reads None
    """

    def __init__(self, source: EnergySource | None = None, clock: Callable[[], float] = time.perf_counter):
        self.source = source if source is not None else NullSource()
        self._clock = clock
        self._start: Optional[tuple[float, Optional[float]]] = None
        self._end: Optional[tuple[float, Optional[float]]] = None

    def start(self) -> EnergyMeter:
        self._start = (self._clock(), self.source.read())
        self._end = None
        return self

    def stop(self) -> EnergyMeter:
        self._end = self._now()
        return self

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _now(self) -> tuple[float, Optional[float]]:
        return (self._clock(), self.source.read())

    def _span(self) -> tuple[float, Optional[float]]:
        if self._start is None:
            return 0.0, None
        t1, e1 = self._end if self._end is not None else self._now()
        t0, e0 = self._start
        joules = e1 - e0 if e0 is not None and e1 is not None else None
        return t1 - t0, joules

    @property
    def seconds(self) -> float:
        return self._span()[0]

    @property
    def joules(self) -> Optional[float]:
        return self._span()[1]

    @property
    def watts(self) -> Optional[float]:
        seconds, joules = self._span()
        return joules / seconds if joules is not None and seconds > 0 else None


@dataclass(frozen=True)
class Battery:
    percent: float
    on_battery: Optional[bool]  # None when the OS cannot tell


def battery(sensors: Callable[[], object] | None = None) -> Optional[Battery]:
    """Battery level and whether the machine runs on it; None without a battery (or psutil)."""
    if sensors is None:
        try:
            import psutil

            sensors = psutil.sensors_battery
        except (ImportError, AttributeError):
            return None
    try:
        state = sensors()
    except Exception:  # psutil raises on some platforms instead of returning None
        return None
    if state is None:
        return None
    plugged = getattr(state, "power_plugged", None)
    return Battery(percent=float(state.percent), on_battery=None if plugged is None else not plugged)


def memory() -> tuple[Optional[int], Optional[int]]:
    """(active, peak) bytes from mlx; (None, None) where the backend cannot tell."""
    try:
        import mlx.core as mx

        return int(mx.get_active_memory()), int(mx.get_peak_memory())
    except Exception:
        return None, None


def reset_peak_memory() -> None:
    """Start a new peak (one per chat answer); a no-op where the backend cannot."""
    try:
        import mlx.core as mx

        mx.reset_peak_memory()
    except Exception:
        pass
