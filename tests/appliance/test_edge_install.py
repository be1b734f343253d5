"""Packaging for an edge box: ``appliance serve`` imports no torch; the export commands say what they need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: export-only modules the running appliance must never load
EXPORT_ONLY = ("torch", "onnxscript", "safetensors", "export")

# Everything `appliance serve` runs: the CLI, the service and its components built from a configuration,
# plus the modules its pipelines and backends import lazily when a job runs.
SERVE_GRAPH = f"""
import sys
from pathlib import Path
from appliance.cli import app
from appliance.config import parse_config
from appliance.service import Service
import appliance.pathology._wsi, appliance.pathology._openslide, appliance.mri.pipeline, appliance.reports.build
import engines.backends.onnxruntime, engines.backends.triton, engines.registry
config = parse_config({{"node": {{"data_dir": sys.argv[1]}},
                        "destinations": [{{"name": "pacs", "ae_title": "PACS", "port": 4242}}]}})
service = Service(config)
names = [c.name for c in service._build()]
service.stop()
loaded = sorted(m for m in {EXPORT_ONLY!r} if m in sys.modules)
print(names, loaded)
sys.exit(1 if loaded else 0)
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_serve_import_graph_has_no_torch(tmp_path: Path) -> None:
    proc = _run(SERVE_GRAPH, str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'worker'" in proc.stdout and "[]" in proc.stdout.split("]", 1)[1], proc.stdout


@pytest.mark.parametrize("command", [["export", "--quick"], ["engines", "install-demo", "--quick"], ["demo"]])
def test_export_commands_without_the_extra_name_it(tmp_path: Path, command: list[str]) -> None:
    """Without torch (blocked here as if not installed) the command stops with one line naming the extra."""
    blocked = "import sys; sys.modules['torch'] = None; from appliance.cli import main; main()"
    args = [*command, "--data-dir", str(tmp_path)] if command == ["demo"] else [*command]
    if command[0] == "export":
        args += ["--out", str(tmp_path / "out")]
    proc = _run(blocked, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "needs the export extra (torch not installed)" in proc.stderr and "[export]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
