"""What this machine has for bench/gpu_check.sh: GPU, pycuda, TensorRT, ONNX Runtime's CUDA provider.

    python3 bench/gpu/probe.py [--json FILE] [--shell]

Imports nothing that needs a GPU to import; each finding says why when absent.
``--shell`` prints ``NAME=value`` lines (shell-quoted) the script evaluates to
choose and skip its steps; ``--json`` writes the full findings.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

#: what the TensorRT tests import through the project's conftest files, beyond numpy and pytest
PROJECT_TEST_MODULES = ("pydicom", "pynetdicom", "highdicom", "cryptography", "pydantic", "sqlite_utils", "httpx",
                        "onnx", "onnxruntime", "torch", "PIL")


def _run(cmd: list[str], timeout: float = 20.0) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def gpu() -> dict[str, Any]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"present": False, "reason": "nvidia-smi not found: no NVIDIA driver on this machine"}
    rc, out = _run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.memory,pci.bus_id",
                    "--format=csv,noheader"])
    if rc != 0 or not out:
        return {"present": False, "reason": f"nvidia-smi found no GPU (exit {rc}): {out[-300:]}"}
    name, driver, memory, mem_clock, bus = [f.strip() for f in out.splitlines()[0].split(",")]
    return {"present": True, "name": name, "driver": driver, "memory": memory, "max_memory_clock": mem_clock,
            "pci_bus_id": bus, "count": len(out.splitlines())}


def module(name: str, attribute: str = "__version__", *, load: bool = True) -> dict[str, Any]:
    """Whether ``name`` imports here (only whether it is installed, without ``load``), its version, or why not."""
    if importlib.util.find_spec(name) is None:
        return {"present": False, "reason": f"the {name} package is not installed"}
    if not load:
        try:
            return {"present": True, "version": importlib.metadata.version(name)}
        except importlib.metadata.PackageNotFoundError:
            return {"present": True, "version": "unknown"}
    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # a broken install, a missing shared library
        return {"present": False, "reason": f"import {name} failed: {type(exc).__name__}: {exc}"}
    return {"present": True, "version": str(getattr(mod, attribute, "unknown"))}


def onnxruntime_cuda() -> dict[str, Any]:
    found = module("onnxruntime")
    if not found["present"]:
        return found
    import onnxruntime as ort

    providers = ort.get_available_providers()
    found["providers"] = providers
    if "CUDAExecutionProvider" not in providers:
        return {**found, "present": False,
                "reason": f"onnxruntime {found['version']} offers {providers}, no CUDAExecutionProvider "
                          "(install onnxruntime-gpu)"}
    return found


def nvcc() -> dict[str, Any]:
    for candidate in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc", shutil.which("nvcc")):
        if candidate and Path(candidate).is_file():
            rc, out = _run([candidate, "--version"])
            return {"present": rc == 0, "path": candidate, "version": out.splitlines()[-1] if out else ""}
    return {"present": False, "reason": "nvcc not found (/usr/local/cuda/bin, /usr/local/bin, PATH)"}


def findings() -> dict[str, Any]:
    missing = [m for m in PROJECT_TEST_MODULES if importlib.util.find_spec(m) is None]
    return {
        "python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(), "gpu": gpu(), "nvcc": nvcc(), "numpy": module("numpy"),
        "pycuda": module("pycuda.driver") if importlib.util.find_spec("pycuda") else module("pycuda"), "tensorrt": module("tensorrt"), "onnxruntime_cuda": onnxruntime_cuda(),
        "torch": module("torch", load=False), "cupy": module("cupy", load=False),
        "project_test_modules_missing": missing,
    }


def shell(f: dict[str, Any]) -> str:
    """``NAME=value`` lines for the script: HAVE_* flags (1/0) and *_WHY reasons."""
    out = {}
    for key, flag in (("gpu", "GPU"), ("pycuda", "PYCUDA"), ("tensorrt", "TENSORRT"),
                      ("onnxruntime_cuda", "ORT_CUDA"), ("nvcc", "NVCC"), ("cupy", "CUPY")):
        out[f"HAVE_{flag}"] = "1" if f[key]["present"] else "0"
        out[f"{flag}_WHY"] = f[key].get("reason", "")
    out["PROJECT_MISSING"] = " ".join(f["project_test_modules_missing"])
    return "\n".join(f"{k}={shlex.quote(v)}" for k, v in out.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the findings here")
    ap.add_argument("--shell", action="store_true", help="print NAME=value lines for the script")
    args = ap.parse_args()
    f = findings()
    if args.json:
        args.json.write_text(json.dumps(f, indent=2) + "\n")
    print(shell(f) if args.shell else json.dumps(f, indent=2))


if __name__ == "__main__":
    main()
