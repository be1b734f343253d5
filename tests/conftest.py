"""Shared fixtures: a data directory, free ports, real peers (tests/peers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import _config as pynetdicom_config

from tests.peers import Orthanc, free_port, running_orthanc

pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path / "orthanc") as pacs:
        yield pacs
