from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import Config, load_config, parse_config
from appliance.errors import ConfigError


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_CONFIG", raising=False)
    monkeypatch.setattr("appliance.config.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    config = load_config()
    assert config == Config()
    assert config.node.port == 11112 and config.node.ae_title == "APPLIANCE"
    assert config.trusted_keys_dir == Path("var") / "trusted_keys"


def test_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(
        '[node]\nae_title = "BOX"\nport = 11999\n'
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nport = 4242\n'
        '[[routes]]\npipeline = "pathology"\nmatch = { Modality = "re:^S[MC]$" }\nstable_seconds = 3\n'
    )
    monkeypatch.setenv("APPLIANCE_CONFIG", str(path))
    config = load_config()
    assert config.node.ae_title == "BOX" and config.node.port == 11999
    assert config.destination("pacs").port == 4242
    assert config.routes[0].match == {"Modality": "re:^S[MC]$"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"node": {"port": 70000}}, r"node\.port: .*65535.*\(got 70000\)"),
        ({"node": {"colour": "red"}}, r"node\.colour: Extra inputs are not permitted \(got 'red'\)"),
        ({"node": {"ae_title": "A" * 17}}, r"node\.ae_title: .*AE title 'AAAAAAAAAAAAAAAAA'"),
        ({"routes": [{"pipeline": "genomics"}]}, r"routes\.0\.pipeline: .*\(got 'genomics'\)"),
        ({"routes": [{"pipeline": "pathology", "match": {"Modallity": "SM"}}]}, r"'Modallity' is not a DICOM keyword"),
        ({"routes": [{"pipeline": "pathology", "match": {"Modality": "re:("}}]}, r"regex 're:\(' for Modality"),
        ({"destinations": [{"name": "a", "ae_title": "X"}, {"name": "a", "ae_title": "Y"}]}, r"repeated: a"),
        ({"node": {"tls": {"cert": "/nonexistent.pem"}}}, r"TLS file '/nonexistent.pem' does not exist"),
    ],
)
def test_bad_values_are_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_unknown_destination_lists_known() -> None:
    config = parse_config({"destinations": [{"name": "pacs", "ae_title": "ORTHANC"}]})
    with pytest.raises(ConfigError, match="unknown destination 'ris'; known: pacs"):
        config.destination("ris")
