"""Where results go: ``[[destinations]]``, a storage SCP (C-STORE) or a DICOMweb service (STOW-RS)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from appliance._config_base import AeTitle, Section

__all__ = ["DestinationSettings"]

#: the keys of each kind of destination; a key of the other kind is an error, never silently ignored
_DIMSE_KEYS = frozenset({"ae_title", "host", "port", "tls"})
_DICOMWEB_KEYS = frozenset({"url", "token", "basic", "cert", "key", "ca"})


class DestinationSettings(Section):
    """A PACS that receives our results: a storage SCP (``kind = "dimse"``) or a DICOMweb service (STOW-RS)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    kind: Literal["dimse", "dicomweb"] = "dimse"  #: C-STORE to a storage SCP, or STOW-RS to a DICOMweb service
    ae_title: AeTitle | None = None  #: dimse: the called AE title (required)
    host: str = "127.0.0.1"  #: dimse
    port: Annotated[int, Field(ge=1, le=65535)] = 104  #: dimse
    tls: bool = False  #: dimse: use the node's TLS settings for this destination
    #: dicomweb (required): the service's base URL, http(s)://host[:port]/path, to which ``/studies`` is added
    url: str = ""
    token: str = Field(default="", repr=False)  #: dicomweb: sent as ``Authorization: Bearer <token>``
    basic: str = Field(default="", repr=False)  #: dicomweb: ``user:password`` for HTTP basic authentication
    cert: str = ""  #: dicomweb: PEM client certificate (https only)
    key: str = ""  #: dicomweb: PEM private key of ``cert`` (empty: the key is in ``cert``)
    ca: str = ""  #: dicomweb: PEM bundle of CAs to trust for https (empty: the system's)

    @model_validator(mode="before")
    @classmethod
    def _keys_of_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("kind", "dimse") not in ("dimse", "dicomweb"):
            return data  # the field validators name a wrong type or kind
        kind = data.get("kind", "dimse")
        own, other = (_DICOMWEB_KEYS, _DIMSE_KEYS) if kind == "dicomweb" else (_DIMSE_KEYS, _DICOMWEB_KEYS)
        wrong = sorted(other & data.keys())
        if wrong:
            raise ValueError(
                f"destination {data.get('name')!r} of kind {kind!r} does not take {', '.join(wrong)} "
                f"(its keys are name, kind, {', '.join(sorted(own))})"
            )
        required = "url" if kind == "dicomweb" else "ae_title"
        if required not in data:
            raise ValueError(f"destination {data.get('name')!r} of kind {kind!r} needs {required!r}")
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"DICOMweb url {value!r} must be http(s)://host[:port]/path")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(
                f"DICOMweb url of host {parts.hostname!r} must carry no user, password, query or fragment "
                "(credentials go in token, basic or cert)"
            )
        try:
            parts.port
        except ValueError:
            raise ValueError(f"DICOMweb url {value!r} has an invalid port") from None
        return value.rstrip("/")

    @field_validator("token", "basic")
    @classmethod
    def _printable(cls, value: str, info: ValidationInfo) -> str:
        if value and (not value.isprintable() or value != value.strip()):
            raise ValueError(f"{info.field_name} must be printable, without spaces around it")
        if info.field_name == "basic" and value and (":" not in value or value.startswith(":")):
            raise ValueError("basic must be 'user:password' (a non-empty user, a colon, the password)")
        return value

    @field_validator("cert", "key", "ca")
    @classmethod
    def _file_exists(cls, value: str, info: ValidationInfo) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"{info.field_name} file {value!r} does not exist")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> DestinationSettings:
        if self.token and self.basic:
            raise ValueError(f"destination {self.name!r}: give token or basic, not both")
        if self.key and not self.cert:
            raise ValueError(f"destination {self.name!r}: key {self.key!r} needs cert")
        if (self.cert or self.ca) and urlsplit(self.url).scheme != "https":
            raise ValueError(f"destination {self.name!r}: cert and ca need an https url, got {self.url!r}")
        return self
