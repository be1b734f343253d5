"""Where data comes in: the DICOM node (``[node]``), its peers (``[[peers]]``) and the STOW-RS listener."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from appliance._config_base import AeTitle, Section, ServerTls, TlsSettings

__all__ = ["DicomwebClientSettings", "DicomwebSettings", "NodeSettings", "PeerSettings"]


class NodeSettings(Section):
    """The DICOM node: who we are and where we keep data."""

    ae_title: AeTitle = "APPLIANCE"  #: our AE title; the called AE title must match it
    host: str = "127.0.0.1"  #: address the storage SCP listens on
    port: Annotated[int, Field(ge=1, le=65535)] = 11112  #: port the storage SCP listens on
    data_dir: Path = Path("./var")  #: spool, outbox, state.db, engines
    min_free_bytes: Annotated[int, Field(ge=0)] = 1_000_000_000  #: below this, C-STORE answers 0xA700
    #: maximum PDU length we announce and enforce (PS3.8 D.1); a longer PDU is refused from its header
    max_pdu: Annotated[int, Field(ge=4096, le=1 << 26)] = 262_144
    tls: ServerTls = TlsSettings()
    #: longest A-ASSOCIATE-RQ (or other non-P-DATA PDU) read, before AE titles are checked
    max_associate_rq: Annotated[int, Field(ge=1024, le=1 << 24)] = 65_536
    pdu_read_timeout: Annotated[float, Field(gt=0)] = 30.0  #: seconds for a started PDU to arrive whole
    artim_timeout: Annotated[float, Field(gt=0)] = 30.0  #: seconds for the first PDU after connect (ARTIM)
    idle_timeout: Annotated[float, Field(gt=0)] = 60.0  #: seconds an association may be silent between messages
    tls_handshake_timeout: Annotated[float, Field(gt=0)] = 10.0  #: seconds for a TLS handshake
    max_connections: Annotated[int, Field(ge=1)] = 64  #: open DICOM connections in total
    max_connections_per_source: Annotated[int, Field(ge=1)] = 16  #: open DICOM connections from one address
    listen_backlog: Annotated[int, Field(ge=1, le=65535)] = 128  #: pending connections the kernel queues
    #: data-set bytes of one instance of a SOP class not in ``max_dataset_bytes_by_sop_class``
    max_dataset_bytes: Annotated[int, Field(ge=1024)] = 1 << 30
    #: data-set limit per SOP Class UID, over the defaults (a whole-slide instance may reach 4 GiB)
    max_dataset_bytes_by_sop_class: dict[str, Annotated[int, Field(ge=1024)]] = Field(
        default_factory=lambda: {str(VLWholeSlideMicroscopyImageStorage): 4 << 30}
    )
    max_inflated_bytes: Annotated[int, Field(ge=1024)] = 1 << 30  #: inflated size of a deflated data set
    max_inflate_ratio: Annotated[float, Field(ge=2)] = 100.0  #: inflated / received bytes (past 16 MiB)
    max_sequence_depth: Annotated[int, Field(ge=1, le=128)] = 32  #: nesting of sequences in a data set

    @field_validator("max_dataset_bytes_by_sop_class")
    @classmethod
    def _sop_classes_are_uids(cls, value: dict[str, int]) -> dict[str, int]:
        from dicom_node.uids import is_valid_uid

        for uid in value:
            if not is_valid_uid(uid):
                raise ValueError(f"{uid!r} in max_dataset_bytes_by_sop_class is not a SOP Class UID")
        return value


class PeerSettings(Section):
    """A peer allowed to associate with us (calling AE title, optional address)."""

    ae_title: AeTitle
    host: str = ""  #: empty: any address


class DicomwebClientSettings(Section):
    """A DICOMweb client allowed to store by STOW-RS (the DICOMweb counterpart of ``[[peers]]``)."""

    #: the client's name in logs, records and the stored files' Source AE Title
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,16}$")]
    #: the bearer token it sends (``Authorization: Bearer <token>``); at least 16 characters
    token: Annotated[str, Field(min_length=16, pattern=r"^[!-~]+$")]


class DicomwebSettings(Section):
    """The STOW-RS listener (PS3.18 10.5); the section absent: no listener."""

    host: str = "127.0.0.1"  #: address the STOW-RS listener binds
    port: Annotated[int, Field(ge=0, le=65535)] = 8081  #: its port (0: any free port)
    tls: ServerTls = TlsSettings()  #: like ``[node] tls``; a ``ca`` requires client certificates
    #: who may store; each sends its token as a bearer token
    clients: tuple[DicomwebClientSettings, ...] = ()
    #: refuse (401) requests without a listed client's token; false only on a trusted network
    require_token: bool = True
    #: body bytes of one request; more is refused with 413
    max_request_bytes: Annotated[int, Field(ge=1024)] = 16 << 30
    #: seconds a request body may stall before it is dropped (408)
    idle_timeout: Annotated[float, Field(gt=0)] = 60.0
    #: open STOW-RS connections at once; more are answered 503
    max_connections: Annotated[int, Field(ge=1)] = 32

    @field_validator("clients")
    @classmethod
    def _unique_clients(cls, value: tuple[DicomwebClientSettings, ...]) -> tuple[DicomwebClientSettings, ...]:
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dicomweb client names must be unique, repeated: {', '.join(dupes)}")
        tokens = [c.token for c in value]
        if len(set(tokens)) != len(tokens):
            raise ValueError("dicomweb client tokens must be unique (a token names its client)")
        return value

    @model_validator(mode="after")
    def _clients_when_required(self) -> "DicomwebSettings":
        if self.require_token and not self.clients:
            raise ValueError("require_token is true but no [[dicomweb.clients]] is listed: add a client, "
                             "or set require_token = false on a trusted network")
        return self
