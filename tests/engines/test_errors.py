"""One error hierarchy: every package's errors under ApplianceError; the CLI reports them by type."""

from __future__ import annotations

import pytest

import appliance.cli as cli
from appliance.errors import ApplianceError, ConfigError, JobFailed
from dicom_node.errors import DeliveryFailed, NodeError, SenderStopped
from engines.errors import BundleRejected, EngineError
from export.errors import ExportError, GateFailed


@pytest.mark.parametrize("error", [NodeError, DeliveryFailed, SenderStopped, EngineError, BundleRejected, ExportError,
                                   GateFailed, ConfigError, JobFailed])
def test_every_package_error_is_an_appliance_error(error: type[Exception]) -> None:
    assert issubclass(error, ApplianceError)


@pytest.mark.parametrize("error", [GateFailed("fp16 AUC 0.71 below the gate's 0.80"),
                                   SenderStopped("sender stopped before this file was sent"),
                                   BundleRejected("model_card.threshold 'high' must be a number")])
def test_the_cli_reports_any_library_error_as_one_line(error: Exception, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> None:
        raise error

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"error: {error}\n"


def test_the_cli_lets_a_bug_through_as_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(KeyError, match="a bug"):
        cli.main()
