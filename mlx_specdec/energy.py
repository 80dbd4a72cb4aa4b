"""Machine readings for the chat view and the benchmark: energy, battery, memory.

An `EnergySource` exposes one cumulative counter in joules (`read()`), from whatever the machine
offers without sudo:
- macOS: Apple's IOReport "Energy Model" counters (`IOReportSource`): CPU + GPU + ANE + DRAM.
  Channels count by whole name (`classify_channel`: each die's "CPU Energy", never SRAM,
  per-core or telemetry channels, "GPU<n>" only without "GPU Energy"), each in its own unit
  (mJ, uJ, nJ). Read through ctypes (`IOReportReader`, unverified on a Mac: see there), else
  through the optional `zeus-apple-silicon` package (`pip install 'mlx-specdec[energy]'`).
- Linux: RAPL under `/sys/class/powercap/intel-rapl:N/energy_uj`, package domains only (the
  `intel-rapl:N:M` subdomains and `psys` overlap them), with wrap-around at
  `max_energy_range_uj`. Recent kernels make `energy_uj` root-only; then RAPL is unavailable.
- otherwise `NullSource`, whose name is "n/a" and which reads None.

Apple's counters publish in batches (the mJ ones every 2.03-2.23 s), so two readings a quarter
second apart differ by nothing or by a whole batch: watts from them swing between 0 and spikes.
`EnergyIntegrator` dates each counter's publications by the driver's own timestamps (by when its
value was seen to change where those are missing, frozen while it moves, or ahead of the clock)
and gives mean watts over whole publication spans; `EnergyMeter` says "measuring" until every
counter has one. `Sample` and `EnergyCounter` are what a reader returns, so tests feed fake counters.

Invariants: nothing here raises on a missing or unreadable counter; it reads None and the UI
shows "n/a". Readings are whole-machine (or whole-SoC) energy, not this process's.
`EnergyMeter` turns counter readings into joules and mean watts over an interval.
`memory()` reads mlx's active and peak allocation the same way: None where the backend cannot
tell (the UI never imports mlx; the loop records its own peak per token).
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
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


# ---------------------------------------------------------------------------------------------
# Apple's IOReport "Energy Model": which channels count, and how batched counters become watts.

# Whole channel names, as the recorded inventories (M1 Ultra, M5 Max) spell them. [0-9], not \d:
# \d also matches other scripts' digits.
_CPU = re.compile(r"(DIE_[0-9]+_)?CPU Energy")  # one per die on multi-die chips: each counts
_GPU_PARTS = re.compile(r"GPU[0-9]+(_[0-9]+)?")  # the same energy as "GPU Energy"
_ANE = re.compile(r"ANE([0-9]+(_[0-9]+)?)?")
_DRAM = re.compile(r"DRAM([0-9]+(_[0-9]+)?)?")

JOULES_PER_COUNT = {"mJ": 1e-3, "uJ": 1e-6, "µJ": 1e-6, "nJ": 1e-9}  # by unit label

MIN_SPAN_S = 0.05  # a span shorter than this is a split batch's tail, not a period: no watts from it
QUIET_S = 3.0  # no publication for this long: idle or stalled (the mJ batches come 2.03-2.23 s apart)
MAX_STAMP_LEAD_S = 1.0  # a driver timestamp further ahead of the observation is not on its clock


def classify_channel(name: str, has_gpu_energy: bool = False) -> Optional[str]:
    """The rail an IOReport "Energy Model" channel feeds ("CPU", "GPU", "ANE", "DRAM"), or None.

    Whole names only; every other channel of the group (clusters, cores, SRAM, telemetry) is None:
    - CPU: "CPU Energy", or "DIE_<n>_CPU Energy" on multi-die chips (every die counts);
    - GPU: "GPU Energy"; "GPU<n>" and "GPU<n>_<m>" carry the same energy, so they count only in a
      sample without "GPU Energy" (`has_gpu_energy` says whether it has one);
    - ANE and DRAM: "ANE", "ANE<n>", "ANE<n>_<m>" (DRAM likewise), not their SRAM sub-channels.
    """
    if name == "GPU Energy":
        return "GPU"
    if _CPU.fullmatch(name):
        return "CPU"
    if _GPU_PARTS.fullmatch(name):
        return None if has_gpu_energy else "GPU"
    if _ANE.fullmatch(name):
        return "ANE"
    if _DRAM.fullmatch(name):
        return "DRAM"
    return None


@dataclass(frozen=True)
class EnergyCounter:
    """One cumulative energy counter in one sample: an IOReport channel as the driver reports it.

    name:      the channel's name: "CPU Energy", "DIE_1_CPU Energy", "GPU Energy", "ANE0", ...
    unit:      its unit label, "mJ", "uJ" or "nJ" (channels of one chip differ)
    value:     the count since an arbitrary point, in `unit`
    published: when the driver published `value` (its own timestamp), seconds on the clock of
               `Sample.observed`; None where the channel carries none
    """

    name: str
    unit: str
    value: int
    published: Optional[float] = None


@dataclass(frozen=True)
class Sample:
    """The counters of one reading, and when it was taken (seconds, read after the counters)."""

    observed: float
    counters: tuple[EnergyCounter, ...]


def rail_counters(counters: Iterable[EnergyCounter]) -> tuple[EnergyCounter, ...]:
    """The counters that feed a rail, each energy once: whole names (`classify_channel`) in a
    known unit (`JOULES_PER_COUNT`)."""
    counters = tuple(counters)
    has_gpu_energy = any(c.name == "GPU Energy" for c in counters)
    return tuple(c for c in counters if c.unit in JOULES_PER_COUNT and classify_channel(c.name, has_gpu_energy))


class _Channel:
    """One counter inside an `EnergyIntegrator`: values in its own unit, times in seconds.

    A publication is a (value, time) pair: the driver's timestamp moved (the value may not have:
    an idle GPU publishes 0 J), or, on the observation clock, the value was seen to change.
    """

    def __init__(self, value: int, stamp: Optional[float], scale: float, observed: float):
        self.scale = scale
        self.start, self.start_observed = value, observed
        self.last, self.stamp = value, stamp
        self.observation_clock = stamp is None
        # The driver dates the start value, so it opens a span; on the observation clock the start
        # value may be seconds old, and the first change seen opens it instead.
        self.first = self.latest = None if stamp is None else (value, stamp)
        # (value, time) of the start and of every publication since, for `EnergyTimeline`.
        self.history = [(value, observed if stamp is None else stamp)]

    def observe(self, value: int, stamp: Optional[float], observed: float) -> None:
        if not self.observation_clock:
            if stamp is None or stamp < self.stamp or (stamp == self.stamp and value != self.last):
                # Missing, going back, or frozen while the value moves: these timestamps cannot date
                # this counter. Time it by observation from here on, its spans started afresh.
                self.observation_clock = True
                self.first = self.latest = None
                self.history = [(self.last, observed)]
            elif stamp != self.stamp:
                self.latest = (value, stamp)
                self.history.append(self.latest)
        if self.observation_clock and value != self.last:
            self.latest = (value, observed)
            self.first = self.first or self.latest
            self.history.append(self.latest)
        self.last, self.stamp = value, stamp

    def watts(self, now: float) -> Optional[float]:
        """Mean watts between its first and latest publication. Over the whole observation window
        instead once it has gone quiet (idle, stalled) or when, watched for two quiet periods, it
        still has no span (samples too far apart to date a publication); None before either."""
        span = None
        if self.first is not None:
            span = _mean((self.latest[0] - self.first[0]) * self.scale, self.latest[1] - self.first[1])
        quiet = now - (self.latest[1] if self.latest else self.start_observed) >= QUIET_S
        if quiet or (span is None and now - self.start_observed >= 2 * QUIET_S):
            return _mean((self.last - self.start) * self.scale, now - self.start_observed)
        return span


def _mean(joules: float, seconds: float) -> Optional[float]:
    return joules / seconds if seconds >= MIN_SPAN_S else None


class EnergyIntegrator:
    """Joules and mean watts from samples of cumulative counters that publish in batches.

    joules: the sum over counters of each one's increase since the first sample. A counter that
      goes back (a reset) or misses a sample starts afresh when next seen, so no energy is counted
      twice (a gap may lose some: "GPU<n>" may have carried it meanwhile).
    watts: per counter, the energy between its first and latest publication divided by the time
      between them, summed. A counter published every 2 s and polled every 0.25 s so reads a
      steady mean, never 0 W between batches or a whole batch over one poll. None while
      `measuring`: until every counter has a span, or has been quiet long enough to count as idle
      (a counter that reads 0 and is dated still publishes, so it never holds the meter back).
      Once measured, a counter that restarts adds nothing until it has a span again.
    """

    def __init__(self):
        self.joules = 0.0
        self._channels: dict[tuple[str, int], _Channel] = {}
        self._now = 0.0
        self._measured = False

    def add(self, sample: Sample) -> None:
        now, channels, seen = sample.observed, {}, {}
        for c in sample.counters:
            scale = JOULES_PER_COUNT.get(c.unit)
            if scale is None:
                continue
            seen[c.name] = seen.get(c.name, -1) + 1
            key = (c.name, seen[c.name])  # a name listed twice is two counters
            stamp = c.published if c.published and c.published <= now + MAX_STAMP_LEAD_S else None
            channel = self._channels.get(key)
            if channel is None or channel.scale != scale or c.value < channel.last:
                channel = _Channel(c.value, stamp, scale, now)
            else:
                self.joules += (c.value - channel.last) * scale
                channel.observe(c.value, stamp, now)
            channels[key] = channel
        self._channels, self._now = channels, now
        if not self._measured and channels:
            self._measured = all(ch.watts(now) is not None for ch in channels.values())

    @property
    def measuring(self) -> bool:
        return not self._measured

    @property
    def watts(self) -> Optional[float]:
        if not self._measured:
            return None
        return sum(ch.watts(self._now) or 0.0 for ch in self._channels.values())

    def curves(self) -> list[list[tuple[float, float]]]:
        """Per counter, its cumulative energy at each publication: [(seconds, joules)], in time order."""
        return [[(t, v * ch.scale) for v, t in ch.history] for ch in self._channels.values()]


class IOReportSource:
    """Apple Silicon SoC energy (CPU + GPU + ANE + DRAM) from IOReport's "Energy Model", no sudo.

    `reader` is anything whose `sample()` gives a `Sample` of raw counters (or None): by default
    `IOReportReader`, else `ZeusReader` when the optional `zeus_apple_silicon` imports (then the
    name says so). `sample()` keeps the counters that feed a rail (`rail_counters`); `read()` is
    their summed increase since the first read.
    """

    def __init__(self, reader=None, name: str = "IOReport"):
        if reader is None:
            reader, name = _default_reader()
        self.name = name
        self._reader = reader
        self._total = EnergyIntegrator()
        self._available = reader is not None and self.read() is not None

    @property
    def available(self) -> bool:
        return self._available

    def sample(self) -> Optional[Sample]:
        if self._reader is None:
            return None
        try:
            sample = self._reader.sample()
            counters = rail_counters(sample.counters) if sample is not None else ()
        except Exception:  # the private framework can fail on an unknown chip
            return None
        return Sample(sample.observed, counters) if counters else None

    def read(self) -> Optional[float]:
        sample = self.sample()
        if sample is None:
            return None
        self._total.add(sample)
        return self._total.joules


_UTF8 = 0x08000100  # kCFStringEncodingUTF8


class IOReportReader:
    """Raw IOReport "Energy Model" samples through ctypes: libIOReport and CoreFoundation.

    One subscription to the group; each `sample()` copies every channel's name, unit label,
    integer value and the driver's timestamp, and reads the mach clock after it (both in seconds).
    The timestamp is the uint64 at byte 24 of the channel's "RawElements" (an IOReportElement:
    provider_id, channel_id, channel_type, timestamp, values), in mach ticks.

    Verified: nothing on a Mac; this is written blind from the signatures other tools declare for
    the private library and from the IOReportElement layout, and only runs on darwin. Unverified
    in particular: that the timestamp is in mach ticks (not nanoseconds) and dates the value. A
    wrong guess there reads as a timestamp ahead of the observation, or frozen, and those
    counters are timed by observation instead; a unit smaller than a tick would not be caught
    (spans between CPU publications should read 2.0-2.3 s). A wrong signature could crash the process, so
    `detect_energy_source` first samples in a child process (`_ioreport_probe`).
    """

    def __init__(self):
        lib = ctypes.CDLL("/usr/lib/libIOReport.dylib")
        cf = ctypes.CDLL("/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation")
        system = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
        ptr, long, u32, u64 = ctypes.c_void_p, ctypes.c_long, ctypes.c_uint32, ctypes.c_uint64

        def fn(library, name, restype, *argtypes):
            f = getattr(library, name)
            f.restype, f.argtypes = restype, argtypes
            return f

        cfstring = fn(cf, "CFStringCreateWithCString", ptr, ptr, ctypes.c_char_p, u32)
        self._c_string = fn(cf, "CFStringGetCString", ctypes.c_bool, ptr, ctypes.c_char_p, long, u32)
        self._get = fn(cf, "CFDictionaryGetValue", ptr, ptr, ptr)
        self._count = fn(cf, "CFArrayGetCount", long, ptr)
        self._at = fn(cf, "CFArrayGetValueAtIndex", ptr, ptr, long)
        self._type = fn(cf, "CFGetTypeID", ctypes.c_ulong, ptr)
        self._array_type = fn(cf, "CFArrayGetTypeID", ctypes.c_ulong)()
        self._data_type = fn(cf, "CFDataGetTypeID", ctypes.c_ulong)()
        self._length = fn(cf, "CFDataGetLength", long, ptr)
        self._bytes = fn(cf, "CFDataGetBytePtr", ptr, ptr)
        self._release = fn(cf, "CFRelease", None, ptr)
        self._samples = fn(lib, "IOReportCreateSamples", ptr, ptr, ptr, ptr)
        self._name = fn(lib, "IOReportChannelGetChannelName", ptr, ptr)
        self._unit = fn(lib, "IOReportChannelGetUnitLabel", ptr, ptr)
        self._value = fn(lib, "IOReportSimpleGetIntegerValue", ctypes.c_int64, ptr, ctypes.c_int32)
        self._ticks = fn(system, "mach_absolute_time", u64)
        timebase = (u32 * 2)()  # mach_timebase_info: numer, denom
        if fn(system, "mach_timebase_info", ctypes.c_int, ctypes.POINTER(u32))(timebase) or not timebase[1]:
            raise OSError("mach_timebase_info failed")
        self._seconds_per_tick = timebase[0] / timebase[1] / 1e9
        self._channels_key = cfstring(None, b"IOReportChannels", _UTF8)  # kept for the process's life
        self._raw_key = cfstring(None, b"RawElements", _UTF8)
        group = cfstring(None, b"Energy Model", _UTF8)
        channels = fn(lib, "IOReportCopyChannelsInGroup", ptr, ptr, ptr, u64, u64, u64)(group, None, 0, 0, 0)
        self._subscribed = ptr()
        subscribe = fn(lib, "IOReportCreateSubscription", ptr, ptr, ptr, ctypes.POINTER(ptr), u64, ptr)
        self._subscription = subscribe(None, channels, ctypes.byref(self._subscribed), 0, None) if channels else None
        if not self._subscription or not self._subscribed:
            raise OSError("no IOReport Energy Model subscription")
        self._buffer = ctypes.create_string_buffer(256)

    @classmethod
    def open(cls) -> Optional[IOReportReader]:
        try:
            return cls()
        except Exception:  # not a Mac, no such library or symbol, no subscription
            return None

    def sample(self) -> Optional[Sample]:
        samples = self._samples(self._subscription, self._subscribed, None)
        if not samples:
            return None
        try:
            observed = self._ticks() * self._seconds_per_tick
            channels = self._get(samples, self._channels_key)
            if not channels or self._type(channels) != self._array_type:
                return None
            counters = []
            for i in range(self._count(channels)):
                channel = self._at(channels, i)
                name = self._string(self._name(channel)) if channel else None
                if name is None or classify_channel(name) is None:  # most of the group: skip early
                    continue
                value = self._value(channel, 0)
                if value >= 0:  # INT64_MIN is the library's error value
                    counters.append(
                        EnergyCounter(name, self._string(self._unit(channel)) or "", value, self._stamp(channel))
                    )
            return Sample(observed, tuple(counters))
        finally:
            self._release(samples)

    def _string(self, ref) -> Optional[str]:
        if not ref or not self._c_string(ref, self._buffer, len(self._buffer), _UTF8):
            return None
        return self._buffer.value.decode("utf-8", "replace")

    def _stamp(self, channel) -> Optional[float]:
        raw = self._get(channel, self._raw_key)
        if not raw or self._type(raw) != self._data_type or self._length(raw) < 32:
            return None
        ticks = int.from_bytes(ctypes.string_at(self._bytes(raw), 32)[24:32], "little")
        return ticks * self._seconds_per_tick if ticks else None


class ZeusReader:
    """The optional `zeus_apple_silicon` package's rail totals (millijoules) as counters.

    A fallback for when `IOReportReader` does not work: zeus matches channel names by substring
    (on multi-die chips a die can be lost or counted twice) and gives no timestamps, so its
    publications are timed by observation. `monitor` is an `AppleEnergyMonitor` (or a fake).
    """

    FIELDS = {"cpu_total_mj": "CPU Energy", "gpu_mj": "GPU Energy", "ane_mj": "ANE", "dram_mj": "DRAM"}

    def __init__(self, monitor, clock: Callable[[], float] = time.monotonic):
        self._monitor, self._clock = monitor, clock

    def sample(self) -> Sample:
        metrics = self._monitor.get_cumulative_energy()
        values = {name: getattr(metrics, field, None) for field, name in self.FIELDS.items()}
        return Sample(self._clock(), tuple(EnergyCounter(n, "mJ", v) for n, v in values.items() if v is not None))


def _default_reader():
    """(reader, source name): ctypes when it samples in a child process, else zeus, else None."""
    if sys.platform != "darwin":
        return None, "IOReport"
    reader = IOReportReader.open() if _ioreport_probe() else None
    if reader is not None:
        return reader, "IOReport"
    monitor = _zeus_monitor()
    return (ZeusReader(monitor), "IOReport (zeus)") if monitor is not None else (None, "IOReport")


@functools.lru_cache(maxsize=1)
def _ioreport_probe() -> bool:
    """Whether `IOReportReader` samples a rail in a child process. A mistake in a signature of the
    private library would crash the process that makes it; let that be a child."""
    try:
        child = subprocess.run([sys.executable, "-I", __file__], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return child.returncode == 0


def _zeus_monitor():
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


@runtime_checkable
class BatchedSource(EnergySource, Protocol):
    """A source whose counters publish in batches: `sample()` gives them one by one, dated."""

    def sample(self) -> Optional[Sample]: ...


@dataclass(frozen=True)
class EnergyReading:
    """What an `EnergyMeter` says at one moment.

    seconds:   since start (up to stop, once stopped), on the meter's clock
    joules:    energy over that interval; None when the source reads None
    watts:     mean power over it; None when the source reads None, and while measuring
    measuring: the source publishes in batches and not every counter has a full period yet (the
               UI says "measuring": joules so far would read 0 or a whole batch)
    """

    seconds: float
    joules: Optional[float]
    watts: Optional[float]
    measuring: bool = False


class EnergyMeter:
    """Joules and mean watts over an interval of one `EnergySource`.

    with EnergyMeter(source) as meter:
        ...                      # meter.reading() (or .joules, .watts) read live meanwhile
    meter.joules, meter.watts    # frozen at exit; None when the source reads None

    A `BatchedSource` (IOReport) feeds an `EnergyIntegrator`: watts are over its publication
    spans, and None while `measuring`. Other sources (RAPL): joules over the meter's seconds.
    """

    def __init__(self, source: EnergySource | None = None, clock: Callable[[], float] = time.perf_counter):
        self.source = source if source is not None else NullSource()
        self._clock = clock
        self._integrator: Optional[EnergyIntegrator] = None
        self._start: Optional[tuple[float, Optional[float]]] = None
        self._end: Optional[tuple[float, Optional[float]]] = None

    def start(self) -> EnergyMeter:
        self._integrator = EnergyIntegrator() if isinstance(self.source, BatchedSource) else None
        self._start = (self._clock(), self._read())
        self._end = None
        return self

    def stop(self) -> EnergyMeter:
        self._end = self._now()
        return self

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _read(self) -> Optional[float]:
        """The source's counter in joules; a batched source's sample also feeds the integrator."""
        if self._integrator is None:
            return self.source.read()
        sample = self.source.sample()
        if sample is None:
            return None
        self._integrator.add(sample)
        return self._integrator.joules

    def _now(self) -> tuple[float, Optional[float]]:
        return (self._clock(), self._read())

    def reading(self) -> EnergyReading:
        """One read of the source while running (the numbers frozen once stopped)."""
        if self._start is None:
            return EnergyReading(0.0, None, None)
        t1, e1 = self._end if self._end is not None else self._now()
        t0, e0 = self._start
        seconds = t1 - t0
        if e0 is None or e1 is None:
            return EnergyReading(seconds, None, None)
        joules = e1 - e0
        if self._integrator is not None:
            return EnergyReading(seconds, joules, self._integrator.watts, self._integrator.measuring)
        return EnergyReading(seconds, joules, joules / seconds if seconds > 0 else None)

    @property
    def seconds(self) -> float:
        return self.reading().seconds

    @property
    def joules(self) -> Optional[float]:
        return self.reading().joules

    @property
    def watts(self) -> Optional[float]:
        return self.reading().watts

    @property
    def measuring(self) -> bool:
        return self.reading().measuring


class EnergyTimeline:
    """Energy between any two moments of a stretch of work: the source is read in the background
    (a daemon thread, every `every` s), and each counter's cumulative energy, known at its
    publications, is taken as linear between them (its mean power over the span).

        with EnergyTimeline(source) as timeline:
            t0 = time.perf_counter(); ...; t1 = time.perf_counter()
        timeline.joules(t0, t1)      # None when the source reads nothing

    For a counter that publishes every ~2 s (IOReport) this dates energy to within a poll even
    for work shorter than a period, where the difference of two reads would be 0 or a whole
    batch. On leaving, it reads on until every counter has published once more (at most
    `QUIET_S`), so the last moments are bracketed too. Times are on `clock`, the clock of the
    source's samples (perf_counter: mach time on macOS).
    """

    def __init__(self, source: EnergySource, every: float = 0.25, clock: Callable[[], float] = time.perf_counter):
        self.source, self.every, self._clock = source, every, clock
        self._batched = EnergyIntegrator() if isinstance(source, BatchedSource) else None
        self._reads: list[tuple[float, float]] = []  # a plain source's (time, joules) reads
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def poll(self) -> None:
        """One reading of the source (the background thread calls it; tests may too)."""
        with self._lock:
            if self._batched is not None:
                sample = self.source.sample()
                if sample is not None:
                    self._batched.add(sample)
            else:
                joules = self.source.read()
                if joules is not None:
                    self._reads.append((self._clock(), joules))

    def _curves(self) -> list[list[tuple[float, float]]]:
        with self._lock:
            return self._batched.curves() if self._batched is not None else [list(self._reads)]

    def __enter__(self) -> EnergyTimeline:
        self.poll()
        if self.every > 0:
            self._thread = threading.Thread(target=self._run, name="energy-timeline", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._done.wait(self.every):
            self.poll()

    def __exit__(self, *exc) -> None:
        if self._thread is None:  # polled by hand (every <= 0): the caller brackets the end
            return
        end = self._clock()
        while self._clock() - end < QUIET_S and not all(c and c[-1][0] > end for c in self._curves()):
            time.sleep(0.05)
        self._done.set()
        self._thread.join()

    def joules(self, t0: float, t1: float) -> Optional[float]:
        """Energy between t0 and t1 (seconds on `clock`): None when the source gave no reading."""
        curves = [c for c in self._curves() if c]
        if not curves:
            return None
        return sum(_energy_at(c, t1) - _energy_at(c, t0) for c in curves)


def _energy_at(curve: list[tuple[float, float]], t: float) -> float:
    """A counter's cumulative joules at time t, linear between its publications (held outside them)."""
    i = bisect.bisect_right([time_ for time_, _ in curve], t)
    if i == 0:
        return curve[0][1]
    if i == len(curve):
        return curve[-1][1]
    (ta, ea), (tb, eb) = curve[i - 1], curve[i]
    return ea + (eb - ea) * (t - ta) / (tb - ta) if tb > ta else eb


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


if __name__ == "__main__":  # `_ioreport_probe`'s child: exit 0 when the ctypes reader samples a rail
    sample = IOReportReader().sample()
    raise SystemExit(0 if sample is not None and rail_counters(sample.counters) else 1)
