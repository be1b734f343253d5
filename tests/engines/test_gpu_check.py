"""bench/gpu_check.sh on a machine without a GPU: arguments, the JSON report, the skip paths.

The script's GPU steps run only on a GPU machine; here they are planned (--dry-run)
or skipped with their reason. A stand-in ``nvidia-smi`` on PATH makes the probe
see a GPU, so the paths taken on a GPU machine without pycuda, TensorRT or
onnxruntime-gpu are checked too (the pycuda build then stops at its first check,
a CUDA_HOME without cuda.h).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
GPU_STEPS = ("pycuda_build", "gpu_tests", "tiling_kernel", "ort_cuda", "tensorrt_tests")

#: the tests that expect what a machine without a GPU (or with a stand-in one) has
without_gpu = pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU driver")


def run(tmp_path: Path, *args: str, fake_gpu: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    path = os.environ["PATH"]
    if fake_gpu:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 580.159.04, 143771 MiB, 3201 MHz, 00000000:00:05.0'\n")
        smi.chmod(0o755)
        path = f"{bin_dir}:{path}"
    full_env = {**os.environ, "PATH": path, "TMPDIR": str(tmp_path), **env}
    full_env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, *args], capture_output=True, text=True,
                          timeout=120, env=full_env, cwd=tmp_path)


def steps(report: dict[str, Any]) -> dict[str, Any]:
    assert list(report["steps"]) == ["probe", *GPU_STEPS]
    assert report["steps"]["probe"]["status"] == "ok"
    return dict(report["steps"])


@without_gpu
def test_dry_run_prints_the_plan_with_why_each_step_would_be_skipped(tmp_path: Path) -> None:
    proc = run(tmp_path, "--dry-run", "--out", str(tmp_path / "plan.json"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == json.loads((tmp_path / "plan.json").read_text())
    assert report["dry_run"] is True and report["budget_s"] == 450
    assert report["machine"]["gpu"]["present"] is False
    for name in GPU_STEPS:
        step = steps(report)[name]
        assert step["status"] == "planned" and step["limit_s"] > 0 and step["command"]
        assert step["reason"].startswith("would be skipped here: no GPU: nvidia-smi not found")
    assert "kernel_bench.py" in report["steps"]["tiling_kernel"]["command"]
    assert not list(tmp_path.glob("gpu_check.*")), "a dry run leaves no work folder behind"


@without_gpu
def test_dry_run_with_a_gpu_plans_the_kernel_steps_and_names_missing_runtimes(tmp_path: Path) -> None:
    proc = run(tmp_path, "--dry-run", "--out", str(tmp_path / "plan.json"), "--limit", "pycuda_build=600",
               fake_gpu=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["machine"]["gpu"]["name"] == "NVIDIA H200"
    s = steps(report)
    assert s["pycuda_build"]["limit_s"] == 600 and s["gpu_tests"]["limit_s"] == 120
    for name in ("pycuda_build", "gpu_tests", "tiling_kernel"):
        assert s[name]["status"] == "planned" and "reason" not in s[name], s[name]
    assert "no CUDAExecutionProvider (install onnxruntime-gpu)" in s["ort_cuda"]["reason"]
    assert "the tensorrt package is not installed" in s["tensorrt_tests"]["reason"]


@without_gpu
def test_run_without_a_gpu_skips_every_gpu_step_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out" / "gpu_check.json"
    proc = run(tmp_path, "--out", str(out), "--budget", "60")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["dry_run"] is False
    assert report["summary"]["skipped"] == sorted(GPU_STEPS)
    for name in GPU_STEPS:
        assert steps(report)[name]["reason"].startswith("no GPU: nvidia-smi not found")


@without_gpu
def test_a_failed_step_is_recorded_with_its_log_and_its_dependents_skipped(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    empty_cuda = tmp_path / "cuda"
    empty_cuda.mkdir()
    proc = run(tmp_path, "--out", str(out), fake_gpu=True, CUDA_HOME=str(empty_cuda))
    assert proc.returncode == 1, proc.stderr
    s = steps(json.loads(out.read_text()))
    assert s["pycuda_build"]["status"] == "failed" and s["pycuda_build"]["reason"] == "exit status 2"
    assert f"no cuda.h under {empty_cuda}/include" in s["pycuda_build"]["log_tail"]
    for name in ("gpu_tests", "tiling_kernel"):
        assert s[name]["status"] == "skipped", s[name]
        assert s[name]["reason"] == "pycuda unavailable: the pycuda_build step did not succeed (its log_tail says why)"
    assert s["tensorrt_tests"]["status"] == "skipped"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "soon"], "--budget must be whole seconds, got 'soon'"),
        (["--fast"], "unknown argument '--fast' (valid: --dry-run, --out FILE"),
        (["--out"], "--out needs a file name"),
        (["--python", "/nonexistent/python"], "no Python interpreter '/nonexistent/python'"),
        (["--limit", "compile=60"], "--limit names no step: 'compile' (steps: probe pycuda_build"),
        (["--limit", "gpu_tests=1m"], "--limit gpu_tests needs whole seconds, got '1m'"),
    ],
)
def test_bad_arguments_are_refused_by_name(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_help_describes_every_step() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for name in GPU_STEPS:
        assert name in proc.stdout


def test_junit_summary_counts_a_real_pytest_run(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    try:
        from report import junit_summary
    finally:
        sys.path.remove(str(ROOT / "bench" / "gpu"))
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'one is not two'\n"
        "def test_skip(): pytest.skip('no device here')\n")
    xml = tmp_path / "r.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_sample.py")],
                   capture_output=True, timeout=120, cwd=tmp_path)
    got = junit_summary(xml)
    assert (got["tests"], got["passed"], got["failures"], got["skipped"]) == (3, 1, 1, 1)
    assert got["failing"][0]["test"].endswith("test_bad") and "one is not two" in got["failing"][0]["message"]
    assert got["skip_reasons"] == {"no device here": 1}


def test_kernel_bench_runs_its_cases_on_the_kernels_host_build(tmp_path: Path) -> None:
    """The script's figures and its comparison with the reference, through the CPU build of the kernel."""
    out = tmp_path / "kernel.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "kernel_bench.py"), "--backend", "host",
                           "--side", "512", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert [c["case"] for c in result["cases"]] == ["256->224 float32", "256->224 float16", "448->224 float16",
                                                    "224->224 float16", "512->224 float16"]
    for c in result["cases"]:
        assert c["kernel_tiles_per_s"] > 0 and c["reference_tiles_per_s"] > 0 and c["fraction_of_peak"] is None
        assert c["vs_reference"]["tissue_count_mismatches"] == 0
        assert c["vs_reference"].get("max_abs_diff", 0.0) <= 1e-5 and c["vs_reference"].get("max_ulps", 0) <= 1
    assert result["cases"][0]["bytes_moved"] == 4 * (256 * 256 * 3 + 16 + 3 * 224 * 224 * 4 + 4)
