"""One ``appliance demo`` subprocess per test session, shared by the demo and browser tests.

The demo trains the demo engines on its first run (about a minute and a half
on 2 cores); the browser test reuses its data directory, so training happens once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 420


@dataclass(frozen=True)
class DemoRun:
    data_dir: Path
    returncode: int
    stdout: str
    stderr: str


_RUN: DemoRun | None = None


def demo_run(factory: pytest.TempPathFactory) -> DemoRun:
    """Run ``appliance demo --data-dir <tmp>`` once (fresh data directory: trains the engines)."""
    global _RUN
    if _RUN is None:
        data_dir = factory.mktemp("demo") / "var"
        env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_CONFIG"}
        env["PYTHONPATH"] = str(ROOT)
        env["COLUMNS"] = "200"
        proc = subprocess.run(
            [sys.executable, "-c", "from appliance.cli import main; main()", "demo", "--data-dir", str(data_dir),
             "--timeout", "240"],
            cwd=data_dir.parent, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S,
        )
        _RUN = DemoRun(data_dir, proc.returncode, proc.stdout, proc.stderr)
    return _RUN
