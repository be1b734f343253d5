#!/usr/bin/env bash
# Build pycuda from the sdist carried in bench/gpu/wheelhouse for this machine's Python
# and CUDA, with no package index (the lent GPU machine reaches none).
#
#   bench/gpu/build_pycuda.sh PYTHON WORKDIR SITEDIR
#
# The extension is built in place in WORKDIR/src/pycuda-<version> (build_ext -j, all
# cores), its pure-Python dependencies installed from the wheelhouse into SITEDIR, and
# pycuda.driver loaded and initialized once; the last line printed is the PYTHONPATH
# entry list to use: SITEDIR:SOURCE.
set -euo pipefail
py=$1 work=$2 site=$3
wheelhouse=$(cd "$(dirname "$0")" && pwd)/wheelhouse
sdist=$(ls "$wheelhouse"/pycuda-*.tar.gz 2>/dev/null | head -n 1)
[ -n "$sdist" ] || { echo "no pycuda sdist in $wheelhouse" >&2; exit 2; }

# The CUDA toolkit: $CUDA_HOME, /usr/local/cuda, or the folder above nvcc's.
cuda_root=${CUDA_HOME:-}
if [ -z "$cuda_root" ]; then
    if [ -x /usr/local/cuda/bin/nvcc ]; then cuda_root=/usr/local/cuda
    elif command -v nvcc >/dev/null; then cuda_root=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    else echo "no CUDA toolkit: set CUDA_HOME or put nvcc on PATH" >&2; exit 2; fi
fi
[ -f "$cuda_root/include/cuda.h" ] || { echo "no cuda.h under $cuda_root/include" >&2; exit 2; }

# The driver library to link against (-lcuda wants an unversioned libcuda.so): the loader's,
# the driver mount's, or the toolkit's stub ($LIBCUDA overrides).
libdir=$work/libcuda
mkdir -p "$libdir"
driver=${LIBCUDA:-}
[ -n "$driver" ] || driver=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so(\.1)? / {print $NF}'; \
           ls /usr/local/nvidia/lib64/libcuda.so* /usr/lib/x86_64-linux-gnu/libcuda.so* \
              "$cuda_root"/lib64/stubs/libcuda.so "$cuda_root"/targets/*/lib/stubs/libcuda.so 2>/dev/null) | head -n 1)
[ -n "$driver" ] || { echo "no libcuda.so (driver or toolkit stub) found" >&2; exit 2; }
ln -sf "$(readlink -f "$driver")" "$libdir/libcuda.so"
echo "CUDA root $cuda_root; linking against $driver" >&2

mkdir -p "$work/src" "$site"
tar xzf "$sdist" -C "$work/src"
src=$(ls -d "$work"/src/pycuda-*/ | head -n 1)
src=${src%/}
(
    cd "$src"
    "$py" configure.py --cuda-root="$cuda_root" --cudadrv-lib-dir="$libdir" --no-cuda-enable-curand >&2
    # no debug information, light optimization: a wrapper library, built in a fraction of the time
    CFLAGS="${CFLAGS:-} -g0 -O1" "$py" setup.py build_ext --inplace -j "$(nproc)" >&2
)
"$py" -m pip install --quiet --no-index --no-compile --find-links "$wheelhouse" --target "$site" \
    pytools mako platformdirs >&2
# built is not enough: it must load against this machine's driver
PYTHONPATH="$site:$src${PYTHONPATH:+:$PYTHONPATH}" "$py" -c \
    "import pycuda.driver as d; d.init(); print('pycuda', d.get_version(), d.get_driver_version(), d.Device.count(), 'device(s)')" >&2
echo "$site:$src"
