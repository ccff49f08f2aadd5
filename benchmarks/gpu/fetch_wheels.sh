#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that benchmarks/train_gpu.py needs on an offline GPU
# machine that has JAX but lacks keras and the two of keras' requirements it does not hold
# (namex, optree). The rest of keras' requirements (absl-py, h5py, ml-dtypes, numpy, packaging,
# rich) and JAX with its CUDA plugin are already there. The versions are requirements.lock's; the
# wheels are for that machine: CPython 3.12, manylinux x86-64. Nothing is installed here.
#
#     benchmarks/gpu/fetch_wheels.sh        # from anywhere; then copy .whl/ to the GPU machine
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-python3}"
packages=(keras namex optree)

pins=()
for name in "${packages[@]}"; do
    pin="$(grep -E "^${name}==" requirements.lock | awk '{print $1}')"
    if [[ -z "$pin" ]]; then
        echo "fetch_wheels: $name is not pinned in requirements.lock" >&2
        exit 1
    fi
    pins+=("$pin")
done

# One version of each package: pip refuses to install two, so older wheels of these go first.
mkdir -p .whl
for name in "${packages[@]}"; do
    rm -f .whl/"${name}"-*.whl
done

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "${pins[@]}"

ls -l .whl/*.whl
echo "fetch_wheels: $(du -ch .whl/*.whl | tail -1 | cut -f1) in .whl/ (${pins[*]})"
