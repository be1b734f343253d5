#!/usr/bin/env bash
# One check of a GPU machine, from a fresh copy of the working tree, every figure in one JSON file.
#
#   bench/gpu_check.sh [--dry-run] [--out FILE] [--python EXE] [--budget SECONDS] [--limit STEP=SECONDS]...
#                      [--work DIR]
#
# Steps, in order of value, each under its own `timeout` and all under --budget (default 450 s):
#   probe          what the machine has (bench/gpu/probe.py): GPU, nvcc, pycuda, TensorRT, ORT's CUDA provider
#   pycuda_build   pycuda from the sdist in bench/gpu/wheelhouse (no package index needed), unless importable
#   gpu_tests      the `gpu`-marked tiling-kernel tests (CUDA kernel against the NumPy reference)
#   tiling_kernel  kernel GB/s against the device's peak, tiles/s against the reference (bench/gpu/kernel_bench.py;
#                  through CuPy if pycuda could not be built)
#   ort_cuda       a slide's engine work on ONNX Runtime's CUDA provider (bench/gpu/ort_cuda.py)
#   tensorrt_tests the TensorRT build and inference tests, if `tensorrt` imports
# A step that cannot run here is recorded as skipped with the reason. --dry-run runs only the probe,
# records every other step as planned (command, time limit, and the reason it would be skipped here,
# if any) and prints the JSON. --limit changes one step's own limit (a slow machine's pycuda build, say).
# The report goes to --out, else $OUT/gpu_check.json where $OUT is set, else ./gpu_check.json.
# Exit status: 0 when no step failed or timed out, 1 otherwise, 2 on bad arguments.
set -u -o pipefail

usage() { sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

dry_run=0 out="" py=${PYTHON:-python3} budget=450 work=""
order="probe pycuda_build gpu_tests tiling_kernel ort_cuda tensorrt_tests"
declare -A limits=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a file name" >&2; exit 2; }; out=$2; shift ;;
        --python) [ $# -ge 2 ] || { echo "gpu_check.sh: --python needs an interpreter" >&2; exit 2; }; py=$2; shift ;;
        --budget) [ $# -ge 2 ] || { echo "gpu_check.sh: --budget needs seconds" >&2; exit 2; }; budget=$2; shift ;;
        --work) [ $# -ge 2 ] || { echo "gpu_check.sh: --work needs a folder" >&2; exit 2; }; work=$2; shift ;;
        --limit)
            [ $# -ge 2 ] || { echo "gpu_check.sh: --limit needs STEP=SECONDS" >&2; exit 2; }
            name=${2%%=*} seconds=${2#*=}
            case " $order " in *" $name "*) ;; *)
                echo "gpu_check.sh: --limit names no step: '$name' (steps: $order)" >&2; exit 2 ;; esac
            case $seconds in ''|*[!0-9]*)
                echo "gpu_check.sh: --limit $name needs whole seconds, got '$seconds'" >&2; exit 2 ;; esac
            limits[$name]=$seconds; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (valid: --dry-run, --out FILE, --python EXE," \
                "--budget SECONDS, --limit STEP=SECONDS, --work DIR, --help)" >&2; exit 2 ;;
    esac
    shift
done
case $budget in ''|*[!0-9]*) echo "gpu_check.sh: --budget must be whole seconds, got '$budget'" >&2; exit 2 ;; esac
command -v "$py" >/dev/null || { echo "gpu_check.sh: no Python interpreter '$py' (use --python EXE)" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${out:-${OUT:+$OUT/gpu_check.json}}
out=${out:-$PWD/gpu_check.json}
if [ -z "$work" ]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
    [ "$dry_run" = 1 ] && trap 'rm -rf "$work"' EXIT  # a real run keeps its logs there
fi
steps=$work/steps logs=$work/logs
mkdir -p "$steps" "$logs"
start=$(date +%s)
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
failed=0

report() { "$py" "$repo/bench/gpu/report.py" "$@"; }

# run_step NAME LIMIT SKIP_REASON -- COMMAND...: run COMMAND under `timeout`, record the step.
run_step() {
    local name=$1 limit=${limits[$1]:-$2} skip=$3
    shift 4
    local cmd left t0 rc status extra=()
    cmd=$(printf '%q ' "$@")
    left=$((budget - ($(date +%s) - start)))
    if [ "$dry_run" = 1 ]; then
        report step --dir "$steps" --name "$name" --status planned --limit "$limit" --command "$cmd" \
            ${skip:+--reason "would be skipped here: $skip"}
        return 0
    fi
    if [ -z "$skip" ] && [ "$left" -lt 20 ]; then
        skip="out of time: ${left} s of the ${budget} s budget left"
    fi
    if [ -n "$skip" ]; then
        echo "[$name] skipped: $skip" >&2
        report step --dir "$steps" --name "$name" --status skipped --reason "$skip" --command "$cmd" --limit "$limit"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "[$name] running, limit ${limit} s: $cmd" >&2
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=timeout; extra=(--reason "stopped at its ${limit} s limit") ;;
        *) status=failed; extra=(--reason "exit status $rc") ;;
    esac
    [ "$status" = ok ] || failed=1
    [ -f "$work/$name.xml" ] && extra+=(--junit "$work/$name.xml")
    [ -f "$work/$name.result.json" ] && extra+=(--result "$work/$name.result.json")
    echo "[$name] $status in $(($(date +%s) - t0)) s" >&2
    report step --dir "$steps" --name "$name" --status "$status" --limit "$limit" --seconds "$(($(date +%s) - t0))" \
        --command "$cmd" --log "$logs/$name.log" "${extra[@]}"
}

# probe: always run; its findings choose and skip the other steps (defaults if it fails).
HAVE_GPU=0 HAVE_PYCUDA=0 HAVE_TENSORRT=0 HAVE_ORT_CUDA=0 HAVE_NVCC=0 HAVE_CUPY=0 PROJECT_MISSING=""
GPU_WHY="the probe failed" PYCUDA_WHY="the probe failed" TENSORRT_WHY="the probe failed" ORT_CUDA_WHY="the probe failed"
NVCC_WHY="the probe failed"
if ! findings=$(timeout 120 "$py" "$repo/bench/gpu/probe.py" --shell --json "$work/probe.result.json" 2>"$logs/probe.log"); then
    echo "gpu_check.sh: the probe failed: $(tail -c 2000 "$logs/probe.log")" >&2
    failed=1
fi
eval "$findings"
report step --dir "$steps" --name probe --status "$([ -s "$work/probe.result.json" ] && echo ok || echo failed)" \
    --log "$logs/probe.log" --command "bench/gpu/probe.py --shell --json FILE"  # findings: the report's "machine"
no_gpu=""
[ "${HAVE_GPU:-0}" = 1 ] || no_gpu="no GPU: ${GPU_WHY:-the probe failed}"

# pycuda_build
skip=$no_gpu
[ -z "$skip" ] && [ "$HAVE_PYCUDA" = 1 ] && skip="pycuda is importable already"
[ -z "$skip" ] && [ "$HAVE_NVCC" = 0 ] && skip="no CUDA compiler: $NVCC_WHY"
run_step pycuda_build 240 "$skip" -- bash "$repo/bench/gpu/build_pycuda.sh" "$py" "$work/pycuda" "$work/site"
if [ "$dry_run" = 0 ] && [ -z "$skip" ] && [ -f "$logs/pycuda_build.log" ] && grep -q '"status": "ok"' "$steps/pycuda_build.json"; then
    export PYTHONPATH="$PYTHONPATH:$(tail -n 1 "$logs/pycuda_build.log")"
    if "$py" -c "import pycuda.driver" 2>"$logs/pycuda_import.log"; then
        HAVE_PYCUDA=1
    else
        PYCUDA_WHY="built, but import pycuda.driver failed: $(tail -n 1 "$logs/pycuda_import.log")"
    fi
elif [ "$dry_run" = 0 ] && [ -z "$skip" ]; then
    PYCUDA_WHY="the pycuda_build step did not succeed (its log_tail says why)"
fi
no_pycuda=$no_gpu
[ -z "$no_pycuda" ] && [ "$HAVE_PYCUDA" = 0 ] && [ "$dry_run" = 0 ] && no_pycuda="pycuda unavailable: $PYCUDA_WHY"

# the kernel tests need none of the project's DICOM stack: no conftest (it starts peers), numpy and Pillow only
run_step gpu_tests 120 "$no_pycuda" -- "$py" -m pytest -m gpu --noconftest -q -rs --junitxml="$work/gpu_tests.xml" \
    tests/engines/test_kernels.py
# the kernel's figures through the appliance's launcher (pycuda), else through CuPy where pycuda would not build
backend=pycuda skip=$no_pycuda
if [ -n "$no_pycuda" ] && [ -z "$no_gpu" ] && [ "${HAVE_CUPY:-0}" = 1 ]; then backend=cupy skip=""; fi
run_step tiling_kernel 150 "$skip" -- "$py" bench/gpu/kernel_bench.py --backend "$backend" \
    --json "$work/tiling_kernel.result.json"

skip=$no_gpu
[ -z "$skip" ] && [ "$HAVE_ORT_CUDA" = 0 ] && skip=$ORT_CUDA_WHY
run_step ort_cuda 120 "$skip" -- "$py" bench/gpu/ort_cuda.py --json "$work/ort_cuda.result.json"

skip=$no_gpu
[ -z "$skip" ] && [ "$HAVE_TENSORRT" = 0 ] && skip=$TENSORRT_WHY
[ -z "$skip" ] && [ "$HAVE_PYCUDA" = 0 ] && [ "$dry_run" = 0 ] && skip="pycuda unavailable: $PYCUDA_WHY"
[ -z "$skip" ] && [ -n "$PROJECT_MISSING" ] && \
    skip="tensorrt imports, but the tests' project dependencies do not: $PROJECT_MISSING (pip install '.[dev,gpu]')"
run_step tensorrt_tests 180 "$skip" -- "$py" -m pytest -m gpu -q -rs --junitxml="$work/tensorrt_tests.xml" \
    tests/engines/test_tensorrt.py tests/export/test_tensorrt_build.py

dry=()
[ "$dry_run" = 1 ] && dry=(--dry-run)
report merge --dir "$steps" --probe "$work/probe.result.json" --order "$order" --out "$out" --budget "$budget" "${dry[@]}"
if [ "$dry_run" = 1 ]; then
    cat "$out"
else
    echo "gpu_check.sh: report in $out ($(($(date +%s) - start)) s)" >&2
fi
exit "$failed"
