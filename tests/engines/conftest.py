"""Fixtures of the engines tests: a trusted vendor key and a registry on a temporary root."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.registry import Registry
from tests.engines._helpers import keypair


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "trusted_keys"


@pytest.fixture
def vendor_pem(keys_dir: Path) -> bytes:
    """Private key of a vendor whose public key is trusted."""
    return keypair(keys_dir, "vendor")


@pytest.fixture
def registry(tmp_path: Path, keys_dir: Path, vendor_pem: bytes) -> Registry:
    return Registry(tmp_path / "engines", keys_dir)
