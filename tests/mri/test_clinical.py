"""Clinical variables: DICOM age, sidecar records by study or accession, missing indicators, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from appliance.cli import app
from appliance.mri import ClinicalValueError, clinical_vector, get_clinical, set_clinical
from appliance.mri._clinical import age_years, from_dicom, study_values
from appliance.state import StateStore


def _ds(age: str = "054Y") -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3.4"
    ds.AccessionNumber = "ACC42"
    ds.PatientAge, ds.PatientSex, ds.PatientWeight = age, "F", "61.5"
    return ds


@pytest.fixture
def store(data_dir: Path) -> StateStore:
    return StateStore.for_data_dir(data_dir)


@pytest.mark.parametrize(("text", "years"), [("054Y", 54.0), ("006M", 0.5), ("052W", 0.996), ("", None), ("54", None)])
def test_age_years(text: str, years: float | None) -> None:
    assert age_years(text) == (pytest.approx(years, abs=0.01) if years is not None else None)


def test_from_dicom_reads_age_sex_weight() -> None:
    assert from_dicom(_ds()) == {"age": 54.0, "sex": "F", "weight": 61.5}


def test_dicom_only_sets_every_other_indicator(store: StateStore) -> None:
    values, notes = study_values(_ds(), store)
    vector = clinical_vector(values)
    np.testing.assert_allclose(vector, [0.54, 0, 0, 0, 0, 0, 1, 1, 1, 1], rtol=1e-6)
    assert "age from DICOM" in notes


def test_no_values_at_all_is_all_indicators_not_silent_zero(store: StateStore) -> None:
    values, _ = study_values(_ds(age=""), store)
    vector = clinical_vector(values)
    np.testing.assert_array_equal(vector[:5], 0)
    np.testing.assert_array_equal(vector[5:], 1)


def test_sidecar_changes_the_vector_as_documented(store: StateStore) -> None:
    set_clinical(store, "ACC42", {"er": 1, "her2": 0, "ki67": 30, "age": 60}, actor="test")
    set_clinical(store, "1.2.3.4", {"grade": 3, "ki67": 45}, actor="test")  # study UID wins over accession
    values, notes = study_values(_ds(), store)
    vector = clinical_vector(values)
    np.testing.assert_allclose(vector, [0.60, 1.0, 0.0, 0.45, 1.0, 0, 0, 0, 0, 0], rtol=1e-6)
    assert "ki67 from sidecar (study)" in notes and "age from sidecar (accession)" in notes


def test_clearing_a_value_sets_its_indicator(store: StateStore) -> None:
    set_clinical(store, "1.2.3.4", {"er": 1, "her2": 1}, actor="test")
    set_clinical(store, "1.2.3.4", {"her2": None}, actor="test")
    assert get_clinical(store, "1.2.3.4") == {"er": 1.0}
    vector = clinical_vector(study_values(_ds(), store)[0])
    assert vector[2] == 0.0 and vector[7] == 1.0 and vector[1] == 1.0 and vector[6] == 0.0


@pytest.mark.parametrize(("values", "message"), [
    ({"grade": 4}, r"clinical grade = 4 must be an integer in 1..3"),
    ({"er": 0.5}, r"clinical er = 0.5 must be an integer in 0..1"),
    ({"ki67": 120}, r"clinical ki67 = 120 must be a number in 0..100"),
    ({"bmi": 22}, r"unknown clinical variable 'bmi'"),
])
def test_bad_values_are_rejected(store: StateStore, values: dict[str, float], message: str) -> None:
    with pytest.raises(ClinicalValueError, match=message):
        set_clinical(store, "1.2.3.4", values, actor="test")
    assert get_clinical(store, "1.2.3.4") == {}


def test_audit_names_no_accession_number(store: StateStore) -> None:
    set_clinical(store, "ACC42", {"er": 1}, actor="test")
    rows = store.query("select * from audit where action = 'clinical.set'")
    assert len(rows) == 1 and "ACC42" not in json.dumps(rows)


def test_unknown_card_variable_is_an_error() -> None:
    from appliance.errors import JobFailed

    with pytest.raises(JobFailed, match=r"clinical variables \['bmi'\]"):
        clinical_vector({}, ("age", "bmi"))


def test_cli_set_and_show(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n')
    runner = CliRunner()
    result = runner.invoke(app, ["clinical", "set", "ACC7", "--age", "54", "--er", "1", "--config", str(config)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["clinical", "set", "ACC7", "--ki67", "20", "--clear", "er", "--config", str(config)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["clinical", "show", "ACC7", "--config", str(config)])
    assert result.exit_code == 0 and json.loads(result.output) == {"age": 54.0, "ki67": 20.0}
    result = runner.invoke(app, ["clinical", "set", "ACC7", "--grade", "7", "--config", str(config)])
    assert result.exit_code != 0 and isinstance(result.exception, ClinicalValueError)
