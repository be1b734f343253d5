"""Session fixtures of the export tests: tiny demo models trained once, exported, gated, signed, installed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from export.demo import QUICK_GATE, install_demo, task_specs
from export.pipeline import TaskExport
from export.train import QUICK_SIZES, DemoModels, train_demo_models


@dataclass
class Exported:
    models: DemoModels
    specs: dict[str, TaskExport]
    data_dir: Path
    trusted_keys_dir: Path
    active: dict[str, str]

    @property
    def cache(self) -> Path:
        return self.data_dir / "demo-engines"


@pytest.fixture(scope="session")
def quick_models() -> DemoModels:
    return train_demo_models(QUICK_SIZES)


@pytest.fixture(scope="session")
def exported(quick_models: DemoModels, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The three quick demo models exported to fp32, fp16 and int8 bundles and installed (fp32 active)."""
    data_dir = tmp_path_factory.mktemp("export") / "var"
    trusted = data_dir / "trusted_keys"
    active = install_demo(data_dir, trusted, "fp32", sizes=QUICK_SIZES, models=quick_models, gate=QUICK_GATE)
    return Exported(quick_models, task_specs(quick_models), data_dir, trusted, active)
