#!/usr/bin/env bash
# Synthetic sweep on an NVIDIA GPU: every family at 4 bits, oracle acceptance 0, 0.5, 0.8 and
# 0.92,0.79,0.68,0.59 (per position), one JSON per run, then OUT/summary.md and a plot per family.
#
#   scripts/setup/device_bench.sh [--dry-run] [OUT]        (OUT default: device_bench_out)
#
# Makes a fresh venv (VENV, default .venv-cuda), installs MLX's CUDA backend `mlx[cuda]` (CUDA 12
# wheels, mlx-cuda-12) of the MLX version pyproject.toml pins, then the project itself with its
# other dependencies but not `mlx[cpu]` (the two backends must not share one environment).
# PIP_ARGS is passed to every pip install (e.g. "--no-index --find-links WHEELS" offline); when the
# system python already runs mlx on the GPU, the venv reuses its site-packages instead.
# WHEELS=DIR (a machine with no network, whose python has the other packages): installs the wheels
# in DIR (mlx, mlx-cuda-NN, mlx-lm, as scripts/setup/device_wheels.sh makes them; a wheel split into
# NAME.whl.part* is joined first) with --no-index --no-deps into SITE (default /tmp/specdec-site)
# and runs the system python with it on PYTHONPATH: no venv.
# Budget: each family gets at most FAMILY_TIMEOUT s (default 150), the sweep stops starting new
# families after BUDGET s (default 390); then the loop overheads (60 s) and the A/B of issuing
# early (scripts/measure/measure_issue_early.py, 90 s) at E2B: the whole run fits in 10 minutes.
# Refuses in one line (exit 1) without a working nvidia-smi. --dry-run prints what it would run.
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-device_bench_out}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-cuda}"
FAMILIES="${FAMILIES:-e2b 31b 26b-a4b e4b 12b}"  # the issue's headline figures first
ACCEPTANCE="${ACCEPTANCE:-0.92,0.79,0.68,0.59 0 0.8 0.5}"
FAMILY_TIMEOUT="${FAMILY_TIMEOUT:-150}"
BUDGET="${BUDGET:-390}"
PYTHON="${PYTHON:-python3}"
PIP_ARGS="${PIP_ARGS:-}"
MLX_CUDA="${MLX_CUDA:-cuda}"  # the mlx extra: cuda (CUDA 12 wheels) or cuda13
WHEELS="${WHEELS:-}"
SITE="${SITE:-/tmp/specdec-site}"

gpu=1
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then gpu=0; fi
if [[ $gpu == 0 && $DRY == 0 ]]; then
    echo "device_bench.sh: no NVIDIA GPU here (nvidia-smi is missing or fails); run it on a machine with one" >&2
    exit 1
fi

if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' >/dev/null 2>&1; then
    echo "device_bench.sh: $PYTHON does not run Python >= 3.10; set PYTHON=/path/to/python3" >&2
    exit 1
fi
MLX_VERSION="${MLX_VERSION:-$(sed -n 's/.*"mlx\[cpu\]>=\([0-9.]*\).*/\1/p' "$ROOT/pyproject.toml" | head -n1)}"
# The project's dependencies except the MLX backend lines (mlx-lm stays).
DEPS="$("$PYTHON" - "$ROOT/pyproject.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
deps = [d.split(";")[0].strip() for d in re.findall(r'"([^"]+)"', block)]
print(" ".join(repr(d) for d in deps if not re.match(r"mlx(\[|>|=|<|$)", d)) + " 'matplotlib>=3.8'")
PY
)"

run() {  # print, then run unless --dry-run
    echo "+ $*"
    if [[ $DRY == 0 ]]; then eval "$@"; fi
}
if [[ -n $WHEELS && ! -d $WHEELS ]]; then
    echo "device_bench.sh: WHEELS=$WHEELS is not a folder; make it with scripts/setup/device_wheels.sh" >&2
    exit 1
fi

if [[ $DRY == 1 ]]; then
    [[ $gpu == 1 ]] && echo "# GPU: $(nvidia-smi -L | head -n1)" || echo "# dry run: no GPU here (a real run refuses)"
fi
# A machine without a route to PyPI can still run this when its python already has mlx[cuda] (and
# the other packages): the venv then sees the system's site-packages and pip finds them installed.
if [[ -n $WHEELS ]]; then
    # Offline: join split wheels, install the wheels into SITE, run the system python with it.
    for first in "$WHEELS"/*.whl.part1; do
        [[ -e $first ]] || continue
        whole="${first%.part1}"
        run "cat \$(ls '$whole'.part* | sort -V) > '$whole' && rm -f '$whole'.part*"
    done
    run "'$PYTHON' -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target '$SITE' '$WHEELS'/*.whl"
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    PY="$PYTHON"
    run "'$PY' -c 'import typer, rich, huggingface_hub, sentencepiece, mlx_lm' || { echo 'device_bench.sh: the python lacks a package above; add its wheel to WHEELS' >&2; exit 1; }"
else
    if "$PYTHON" -c 'import mlx.core as mx; assert mx.default_device() == mx.gpu' >/dev/null 2>&1; then
        SYSTEM_MLX=1; VENV_ARGS="--system-site-packages"
    else
        SYSTEM_MLX=0; VENV_ARGS=""
    fi
    run "rm -rf '$VENV' && '$PYTHON' -m venv $VENV_ARGS '$VENV'"
    if [[ $SYSTEM_MLX == 0 ]]; then
        run "'$VENV/bin/pip' install -q $PIP_ARGS 'mlx[$MLX_CUDA]==$MLX_VERSION'"
    else
        echo "# the system python's mlx already runs on the GPU: using it"
    fi
    run "'$VENV/bin/pip' install -q $PIP_ARGS $DEPS"
    # The project runs from this checkout (PYTHONPATH), installed or not (an editable install needs setuptools).
    run "'$VENV/bin/pip' install -q $PIP_ARGS --no-deps -e '$ROOT' || echo 'editable install failed: running from $ROOT' >&2"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    PY="$VENV/bin/python"
fi
run "'$PY' -c 'import mlx.core as mx; assert mx.default_device() == mx.gpu, mx.default_device(); print(\"mlx\", mx.__version__, mx.default_device())'"
run "mkdir -p '$OUT' && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > '$OUT/gpu.csv'"

start=$SECONDS
for fam in $FAMILIES; do
    if (( SECONDS - start > BUDGET )); then echo "budget of ${BUDGET} s spent: skipping $fam" >&2; continue; fi
    left=$(( BUDGET - (SECONDS - start) ))
    limit=$(( left < FAMILY_TIMEOUT ? left : FAMILY_TIMEOUT ))
    (( limit < 30 )) && limit=30
    run "timeout -k 10 $limit '$PY' '$ROOT/scripts/measure/synthetic_sweep.py' --family $fam --bits 4 \
--acceptance $ACCEPTANCE --out '$OUT' --budget-s $(( limit - 40 > 10 ? limit - 40 : 10 )) \
|| echo '$fam: failed or timed out (limit $limit s)' >&2"
done
run "'$PY' '$ROOT/scripts/measure/synthetic_sweep.py' --summarise '$OUT'"
# Loop overheads (compile candidates, argmax dtype) and prefill chunk sizes at E2B, if time is left.
if (( SECONDS - start < BUDGET + 60 )); then
    run "timeout -k 5 60 '$PY' '$ROOT/scripts/measure/measure_loop_overheads.py' --family e2b --prefill 2048 \
> '$OUT/overheads-e2b.txt' 2>&1 || echo 'overheads: failed or timed out' >&2"
    run "timeout -k 5 90 '$PY' '$ROOT/scripts/measure/measure_issue_early.py' --model e2b --dtype bfloat16 --every 0,4,2 \
--k 0,3 --trials 3 > '$OUT/issue-early-e2b.txt' 2>&1 || echo 'issue early: failed or timed out' >&2"
fi
