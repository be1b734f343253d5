"""The building blocks of the configuration's sections: a strict frozen section, AE titles, TLS files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

__all__ = ["AeTitle", "Section", "ServerTls", "TlsSettings"]

_AE_TITLE = re.compile(r"^[ -~]{1,16}$")


class Section(BaseModel):
    """A configuration section: unknown keys are an error, values are frozen after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or value.strip() == "" or "\\" in value:
        raise ValueError(f"AE title {value!r} must be 1-16 printable ASCII characters, not only spaces, no backslash")
    return value.strip()


AeTitle = Annotated[str, AfterValidator(_check_ae_title)]


class TlsSettings(Section):
    """TLS for every association; all three empty means no TLS."""

    cert: str = ""  #: PEM certificate of this node
    key: str = ""  #: PEM private key of this node
    ca: str = ""  #: PEM bundle of CAs whose peers we trust (peers must present a certificate)

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    @field_validator("cert", "key", "ca")
    @classmethod
    def _exists(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"TLS file {value!r} does not exist")
        return value


def _server_tls(value: TlsSettings) -> TlsSettings:
    if value.enabled and not (value.cert and value.key):
        raise ValueError("TLS needs both 'cert' and 'key' when any TLS file is set")
    return value


#: the TLS of a listener (``[node]``, ``[dicomweb]``): any TLS file set needs both ``cert`` and ``key``
ServerTls = Annotated[TlsSettings, AfterValidator(_server_tls)]
