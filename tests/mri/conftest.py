"""Fixtures for the breast-MRI tests: one synthetic study encoded three ways, kept as Part 10 bytes."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from export.synthetic.dce import DceCase, make_case
from export.synthetic.dce_dicom import ENCODINGS, encode_case, study_identity, to_bytes

Reader = Callable[[str], list[Dataset]]


@pytest.fixture(scope="session")
def dce_case() -> DceCase:
    return make_case(np.random.default_rng(20260), positive=True)


@pytest.fixture(scope="session")
def encoded_bytes(dce_case: DceCase) -> dict[str, list[bytes]]:
    """Every encoding written to bytes once per session."""
    return {e: [to_bytes(ds) for ds in encode_case(dce_case, e, study_identity(7))] for e in ENCODINGS}


@pytest.fixture
def read_encoding(encoded_bytes: dict[str, list[bytes]]) -> Reader:
    """Fresh datasets read back from the bytes (tests may change them)."""

    def read(encoding: str) -> list[Dataset]:
        return [pydicom.dcmread(io.BytesIO(raw)) for raw in encoded_bytes[encoding]]

    return read
