"""scripts/setup/device_wheels.sh splits wheels into per-call carries under the device tool's limit,
and device_bench.sh (WHEELS=DIR) joins them back byte for byte."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def run(script, *args, env=None):
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup" / script), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_wheels_are_split_into_carries_under_the_limit_and_join_back_exactly(tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    big = os.urandom(25_000)
    (wheels / "mlx_cuda_13-0.1-py3-none-any.whl").write_bytes(big)
    (wheels / "mlx-0.1-cp312-none-any.whl").write_bytes(os.urandom(3_000))
    (wheels / "mlx_lm-0.1-py3-none-any.whl").write_bytes(os.urandom(2_000))
    res = run("device_wheels.sh", str(wheels), env={"SKIP_DOWNLOAD": "1", "PART_BYTES": "10000"})
    assert res.returncode == 0, res.stderr
    carries = sorted(wheels.glob("carry*"))
    sizes = [sum(f.stat().st_size for f in c.iterdir()) for c in carries]
    assert all(s <= 10_000 for s in sizes), sizes
    pieces = sorted(p.name for c in carries for p in c.iterdir())
    assert pieces.count("mlx-0.1-cp312-none-any.whl") == 1 and pieces.count("mlx_lm-0.1-py3-none-any.whl") == 1
    assert [p for p in pieces if ".part" in p] == [f"mlx_cuda_13-0.1-py3-none-any.whl.part{i}" for i in (1, 2, 3)]

    stash = tmp_path / "stash"  # what the device machine holds after the calls
    stash.mkdir()
    for c in carries:
        for f in c.iterdir():
            (stash / f.name).write_bytes(f.read_bytes())
    res = run("device_bench.sh", "--dry-run", str(tmp_path / "out"), env={"WHEELS": str(stash)})
    assert res.returncode == 0, res.stderr
    join = [line[2:] for line in res.stdout.splitlines() if line.startswith("+ cat ")]
    assert len(join) == 1
    subprocess.run(["bash", "-c", join[0]], check=True)
    assert (stash / "mlx_cuda_13-0.1-py3-none-any.whl").read_bytes() == big
    assert not list(stash.glob("*.part*"))
    install = f"--no-index --no-deps --no-compile --no-cache-dir --upgrade --target '/tmp/specdec-site' '{stash}'/*.whl"
    assert install in res.stdout


def test_device_scripts_refuse_bad_settings_in_one_line(tmp_path):
    res = run("device_wheels.sh", str(tmp_path), env={"CUDA": "11"})
    assert res.returncode == 1 and res.stderr.strip() == "device_wheels.sh: CUDA must be 12 or 13, not '11'"
    res = run("device_wheels.sh", str(tmp_path / "empty"), env={"SKIP_DOWNLOAD": "1"})
    assert res.returncode == 1 and res.stderr.strip().startswith("device_wheels.sh: no wheels in ")
    res = run("device_bench.sh", "--dry-run", env={"WHEELS": str(tmp_path / "missing")})
    assert res.returncode == 1 and res.stderr.strip() == (
        f"device_bench.sh: WHEELS={tmp_path / 'missing'} is not a folder; make it with scripts/setup/device_wheels.sh"
    )
