"""Run the CLI on an optimised BLAS where MLX's Linux CPU wheel would use reference BLAS.

The `mlx[cpu]` wheel links its own copy of reference BLAS (`mlx_cpu.libs/libblas-*.so`,
~4 GFLOP/s for a 1024x1024 sgemm). Its `cblas_*` symbols are unversioned, so a system
OpenBLAS (Debian/Ubuntu: `apt install libopenblas0-pthread`) loaded with `LD_PRELOAD`
interposes them: measured here, 1024^3 sgemm went from 548 ms to 33 ms (3.9 -> 65 GFLOP/s).
`LD_PRELOAD` only acts at exec time, so `use_optimised_blas` re-executes the process once,
with the library preloaded and the guard `SPECDEC_BLAS_ACTIVE` set to its path.

Invariants:
- only on Linux, only when the library file exists, only once (the guard), and only when the
  process was started as the `specdec` command (never inside pytest or another host program);
- `SPECDEC_BLAS=off` (or `0`, `none`) disables it; `SPECDEC_BLAS=/path/lib.so` picks a library;
- `describe_blas` reports what the running process actually has mapped, not what we hoped.
Nothing here applies to macOS, where MLX uses Accelerate (and Metal).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

ENV_GUARD = "SPECDEC_BLAS"
_OFF = {"off", "0", "none", "no", "false"}


def candidate_paths(machine: Optional[str] = None) -> list[Path]:
    """Optimised BLAS libraries to look for, best first (Debian/Ubuntu multiarch, then Fedora/Arch)."""
    machine = machine or platform.machine()
    triplet = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "arm64": "aarch64-linux-gnu"}.get(
        machine, f"{machine}-linux-gnu"
    )
    lib = Path("/usr/lib") / triplet
    return [
        lib / "openblas-pthread" / "libopenblas.so.0",
        lib / "libopenblas.so.0",
        lib / "openblas-openmp" / "libopenblas.so.0",
        Path("/usr/lib64/libopenblas.so.0"),
        Path("/usr/lib64/libopenblasp.so.0"),
        Path("/usr/lib/libopenblas.so.0"),
        lib / "blis-pthread" / "libblis.so.4",
        lib / "blis-openmp" / "libblis.so.4",
    ]


def find_optimised_blas(candidates: Optional[Iterable[Path]] = None) -> Optional[Path]:
    """The first existing library among `candidates` (default: `candidate_paths()`), else None."""
    for path in candidates if candidates is not None else candidate_paths():
        if Path(path).is_file():
            return Path(path)
    return None


def started_as_cli(argv: Sequence[str], orig_argv: Sequence[str]) -> bool:
    """True when this process is the `specdec` console script or `python -m mlx_specdec[.cli]`."""
    if argv and Path(argv[0]).name == "specdec":
        return True
    args = list(orig_argv)
    return any(a == "-m" and i + 1 < len(args) and args[i + 1].startswith("mlx_specdec") for i, a in enumerate(args))


def reexec_plan(
    env: dict,
    *,
    system: Optional[str] = None,
    argv: Optional[Sequence[str]] = None,
    orig_argv: Optional[Sequence[str]] = None,
    candidates: Optional[Iterable[Path]] = None,
    any_program: bool = False,
) -> Optional[dict]:
    """The environment to re-exec with (LD_PRELOAD and the guard set), or None to stay as we are.

    Pure apart from checking that files exist; `use_optimised_blas` does the exec.
    """
    system = system or platform.system()
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", sys.argv) if orig_argv is None else orig_argv
    guard = env.get(ENV_GUARD, "")
    if system != "Linux" or guard.lower() in _OFF or env.get(f"{ENV_GUARD}_ACTIVE"):
        return None
    if not any_program and not started_as_cli(argv, orig_argv):
        return None
    lib = Path(guard) if guard else find_optimised_blas(candidates)
    if lib is None or not lib.is_file():
        return None
    preload = env.get("LD_PRELOAD", "")
    if str(lib) in preload.split(":"):
        return None  # already preloaded by the user
    new = dict(env)
    new["LD_PRELOAD"] = f"{lib}:{preload}" if preload else str(lib)
    new[f"{ENV_GUARD}_ACTIVE"] = str(lib)  # the guard: the re-executed process never re-execs
    return new


def use_optimised_blas(any_program: bool = False) -> None:
    """Re-exec this process once with an optimised BLAS preloaded, when the plan says so.

    any_program: also when not started as `specdec` (for scripts that call this first thing).
    """
    new_env = reexec_plan(dict(os.environ), any_program=any_program)
    if new_env is None:
        return
    orig = list(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable] + orig[1:], new_env)
    except OSError:
        return  # cannot exec (odd sandbox): carry on with whatever BLAS we have


def mapped_libraries(maps: Optional[str] = None) -> list[str]:
    """Shared-object paths mapped into this process (Linux /proc/self/maps), in load order."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return []
    seen: list[str] = []
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and ".so" in parts[5] and parts[5] not in seen:
            seen.append(parts[5].strip())
    return seen


def describe_blas(system: Optional[str] = None, maps: Optional[str] = None, env: Optional[dict] = None) -> str:
    """One line naming the BLAS that serves MLX's CPU matmuls in this process.

    A library counts only if it is in LD_PRELOAD *and* mapped (other OpenBLAS copies, such as
    numpy's `libscipy_openblas64_`, use suffixed symbols and do not serve MLX).
    """
    system = system or platform.system()
    env = os.environ if env is None else env
    if system == "Darwin":
        return "Accelerate (macOS)"
    libs = mapped_libraries(maps)
    mapped = {os.path.realpath(p) for p in libs} | set(libs)
    for pre in (p for p in env.get("LD_PRELOAD", "").split(":") if p):
        if pre in mapped or os.path.realpath(pre) in mapped:
            name = Path(pre).name.lower()
            label = "OpenBLAS" if "openblas" in name else "BLIS" if "blis" in name else "MKL" if "mkl" in name else name
            return f"{label} ({pre}, preloaded)"
    if any("mlx_cpu.libs" in p and Path(p).name.startswith("libblas") for p in libs):
        return (
            "reference BLAS (bundled with the mlx-cpu wheel; apt install libopenblas0-pthread for ~15x faster matmuls)"
        )
    return "unknown BLAS"
