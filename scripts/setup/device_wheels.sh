#!/usr/bin/env bash
# The wheels scripts/setup/device_bench.sh needs on a GPU machine that has no network (WHEELS=DIR there):
# mlx, mlx-cuda-NN and mlx-lm at this checkout's versions, for CPython PYVER (default 3.12) on
# manylinux x86_64, fetched here with pip. The device tool carries at most 64 MiB a call, the
# working tree included, and the CUDA wheel alone is larger: it is split into NAME.whl.part1,
# part2, ... and DIR/carry1, DIR/carry2, ... each hold what one call carries (the small wheels go
# in the last). device_bench.sh joins the parts again.
#
#   scripts/setup/device_wheels.sh [DIR]       DIR default .whl (ignored by git: add /.whl/ to .git/info/exclude)
#
# CUDA=13 (default: the H200 image's libraries are CUDA 13) or 12. PART_BYTES overrides what one
# call may carry (default: what fits beside the working tree). SKIP_DOWNLOAD=1 only splits what DIR holds.
# Then, with the device tool, two calls in a row (the machine stays warm for 30 s after a call):
#   1. carry DIR/carry1:  mkdir -p /tmp/wheels && cp DIR/carry1/* /tmp/wheels/
#   2. carry DIR/carry2:  cp DIR/carry2/* /tmp/wheels/ && WHEELS=/tmp/wheels scripts/setup/device_bench.sh \
#                         device_bench_out; tar czf $OUT/device_bench.tgz device_bench_out
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${1:-$ROOT/.whl}"
CUDA="${CUDA:-13}"
PYVER="${PYVER:-3.12}"
PYTHON="${PYTHON:-python3}"
if [[ $CUDA != 12 && $CUDA != 13 ]]; then
    echo "device_wheels.sh: CUDA must be 12 or 13, not '$CUDA'" >&2
    exit 1
fi
mkdir -p "$DIR"
if [[ "${SKIP_DOWNLOAD:-0}" != 1 ]]; then
    MLX_VERSION="$(sed -n 's/.*"mlx\[cpu\]>=\([0-9.]*\).*/\1/p' "$ROOT/pyproject.toml" | head -n1)"
    LM_VERSION="$("$PYTHON" -c 'import mlx_lm; print(mlx_lm.__version__)' 2>/dev/null)" || {
        echo "device_wheels.sh: $PYTHON has no mlx_lm; run it from the project's venv" >&2
        exit 1
    }
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        -d "$DIR" "mlx==$MLX_VERSION" "mlx-cuda-$CUDA==$MLX_VERSION" "mlx-lm==$LM_VERSION"
fi

# What one call may carry: 62 MiB (the limit is 64) less the working tree (tracked and
# untracked-not-ignored files). A wheel larger than that is split into equal parts.
tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -n1 | cut -f1)
room=${PART_BYTES:-$(( 62 * 1024 * 1024 - ${tree:-0} ))}
rm -rf "$DIR"/carry[0-9]*
n=0
small=()
for whl in "$DIR"/*.whl; do
    [[ -e $whl ]] || continue
    size=$(stat -c %s "$whl")
    if (( size <= room )); then small+=("$whl"); continue; fi
    parts=$(( (size + room - 1) / room ))
    split -n "$parts" -d -a 2 "$whl" "$whl.tmp."
    i=0
    for piece in "$whl".tmp.*; do
        i=$((i + 1)); n=$((n + 1))
        mkdir -p "$DIR/carry$n"
        mv "$piece" "$DIR/carry$n/$(basename "$whl").part$i"
    done
done
if (( ${#small[@]} == 0 && n == 0 )); then
    echo "device_wheels.sh: no wheels in $DIR" >&2
    exit 1
fi
# Each small wheel goes in the first call with room for it, else in a call of its own.
for whl in "${small[@]}"; do
    size=$(stat -c %s "$whl")
    placed=0
    for c in $(seq 1 "$n"); do
        used=$(du -cb "$DIR/carry$c" | tail -n1 | cut -f1)
        if (( used + size <= room )); then cp "$whl" "$DIR/carry$c/"; placed=1; break; fi
    done
    if (( placed == 0 )); then n=$((n + 1)); mkdir -p "$DIR/carry$n"; cp "$whl" "$DIR/carry$n/"; fi
done
for c in "$DIR"/carry[0-9]*; do
    echo "$(basename "$c"): $(du -sm "$c" | cut -f1) MiB: $(ls "$c" | tr '\n' ' ')"
done
