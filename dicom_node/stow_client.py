"""The STOW-RS client that delivers results to DICOMweb services (PS3.18 10.5), over ``dicomweb-client``.

:class:`StowClient` is the DICOMweb counterpart of :class:`~dicom_node.scu.StorageSCU`:
the delivery loop hands it a batch of files for one :class:`WebDestination` and
gets one :class:`~dicom_node.scu.StoreResult` per file back. Each file is one
Store Instances request, ``POST {url}/studies/{StudyInstanceUID}`` when the
study the result belongs to is known (the service then checks that the
instance is of that study and answers 409 when it is not), else
``POST {url}/studies``. The file goes out as stored: same SOP Instance UID on
every attempt, so the service de-duplicates a resend.

Outcomes (PS3.18 10.5.3):

* an instance listed in the response's ReferencedSOPSequence is delivered
  (a Warning Reason is logged);
* connection errors, timeouts, 401 and 403 (an expired token or credentials
  being fixed: a DIMSE association the peer rejects is retried the same way),
  408, 429 and 5xx are retried by the delivery loop until the destination's
  maximum age, and so is a failure whose Failure Reason is Out of Resources
  (0xA7xx), or a response that lists the instance neither as stored nor as failed;
* any other 4xx (400, 404, 409, 413, 415 ...) is
  :class:`~dicom_node.errors.DeliveryRefused`: the row is dead at once, with
  the HTTP status and the Failure Reason as its reason.

Every network wait is bounded by ``timeout``. Credentials (a bearer token,
HTTP basic, a client certificate) and the CA bundle come from the destination;
they never appear in a message. dicomweb-client logs study UIDs at INFO, so
its logger is held at WARNING (invariant 4).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import add_certs_to_session, create_session, create_session_from_user_pass
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom.status import Status
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool

from dicom_node._c_store import UnsendableFile, read_info
from dicom_node.delivery import PendingDelivery
from dicom_node.errors import DeliveryFailed, DeliveryRefused, SenderStopped
from dicom_node.scu import StoreResult, describe_status
from dicom_node.uids import is_valid_uid

__all__ = ["STOW_FILE_LIMIT", "StowClient", "WebDestination"]

logger = logging.getLogger(__name__)
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its INFO lines name study UIDs

#: a Store Instances request holds the file in memory (dicomweb-client encodes the body whole); results
#: (SR, SEG) are far smaller; a larger file is refused rather than read whole
STOW_FILE_LIMIT = 256 << 20
#: retried until the destination's maximum age, like a DIMSE association the peer rejects: 401/403 (a token
#: that expired or credentials an operator is fixing), 408 and 429
_RETRYABLE_HTTP = frozenset({401, 403, 408, 429})
_OUT_OF_RESOURCES = 0xA700  #: Failure Reason range 0xA7xx: Refused: Out of Resources (PS3.4 B.2.3)
_FAILURE_REASON = 0x00081197  #: Failure Reason (0008,1197)
_WARNING_REASON = 0x00081196  #: Warning Reason (0008,1196)


@dataclass(frozen=True)
class WebDestination:
    """A DICOMweb service to deliver to by STOW-RS; ``url`` is its base (``/studies`` is added)."""

    kind: ClassVar[str] = "dicomweb"
    name: str
    url: str
    token: str = field(default="", repr=False)  #: sent as ``Authorization: Bearer <token>``
    basic: tuple[str, str] | None = field(default=None, repr=False)  #: (user, password)
    cert: str = ""  #: PEM client certificate
    key: str = ""  #: its private key, when not in ``cert``
    ca: str = ""  #: PEM CA bundle to verify the service (empty: the system's)

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"


def _tracking(pool_cls: type[HTTPConnectionPool], live: weakref.WeakSet[Any]) -> type[HTTPConnectionPool]:
    """``pool_cls`` that adds every connection it opens to ``live`` (so a stopping sender can close them)."""

    class Tracking(pool_cls):  # type: ignore[valid-type,misc]
        def _new_conn(self) -> Any:
            conn = super()._new_conn()
            live.add(conn)
            return conn

    return Tracking


class _DestinationAdapter(HTTPAdapter):
    """Gives every request of a session a timeout (dicomweb-client passes none) and the destination's CA.

    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` in the environment override a session's
    ``verify`` (psf/requests#3829), so the configured CA bundle is applied here, where nothing overrides it.
    :meth:`abort` shuts every connection down, also one waiting for an answer.
    """

    def __init__(self, timeout: float, ca: str) -> None:
        self._live: weakref.WeakSet[Any] = weakref.WeakSet()
        super().__init__(max_retries=0)
        self._timeout = timeout
        self._ca = ca

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _tracking(HTTPConnectionPool, self._live), "https": _tracking(HTTPSConnectionPool, self._live),
        }

    def abort(self) -> None:
        for conn in list(self._live):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        if self._ca:
            kwargs["verify"] = self._ca
        return super().send(request, **kwargs)


class _Connection:
    """One destination's dicomweb-client and its session (keep-alive); remembers the last response."""

    def __init__(self, destination: WebDestination, timeout: float) -> None:
        if destination.basic is not None:
            session = create_session_from_user_pass(*destination.basic)
        else:
            session = create_session()
        add_certs_to_session(session, ca_bundle=destination.ca or None)
        if destination.cert:
            session.cert = (destination.cert, destination.key) if destination.key else destination.cert
        self.adapter = _DestinationAdapter(timeout, destination.ca)
        session.mount("http://", self.adapter)
        session.mount("https://", self.adapter)
        self.session = session
        self.response: requests.Response | None = None
        headers = {"Authorization": f"Bearer {destination.token}"} if destination.token else None
        self.client = DICOMwebClient(destination.url, session=session, headers=headers, callback=self._seen)
        self.client.set_http_retry_params(retry=False)  # the delivery loop retries, with its own backoff and age

    def _seen(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        self.response = response
        return response


def _response_dataset(response: requests.Response | None) -> Dataset | None:
    """The Store Instances Response (``application/dicom+json``) of ``response``; None when there is none."""
    if response is None or not response.content:
        return None
    media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media not in ("application/dicom+json", "application/json", ""):  # Orthanc 1.10 sends its 409 untyped
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None


def _failure_reason(response: Dataset | None, sop_instance_uid: str) -> int | None:
    """The Failure Reason the response gives for ``sop_instance_uid`` (FailedSOPSequence); None if not failed."""
    for item in getattr(response, "FailedSOPSequence", None) or []:
        if str(item.get("ReferencedSOPInstanceUID", "")) == sop_instance_uid:
            reason = item.get(_FAILURE_REASON)
            return int(reason.value) if reason is not None and reason.value is not None else 0xC000
    return None


def _http_reason(response: requests.Response | None) -> str:
    if response is None:
        return "no HTTP response"
    return f"HTTP {response.status_code} {response.reason or ''}".rstrip()


class StowClient:
    """Delivers files to :class:`WebDestination` services by STOW-RS; satisfies ``delivery.FileSender``."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._connections: dict[WebDestination, _Connection] = {}
        self._lock = threading.Lock()

    def _connection(self, destination: WebDestination) -> _Connection:
        with self._lock:
            conn = self._connections.get(destination)
            if conn is None:
                conn = self._connections[destination] = _Connection(destination, self.timeout)
            return conn

    def abort_all(self) -> None:
        """Shut every connection down, also those waiting for an answer (from any thread; the sender stops)."""
        with self._lock:
            connections = list(self._connections.values())
        for conn in connections:
            conn.adapter.abort()

    def echo(self, destination: WebDestination) -> float:
        """QIDO-RS ``GET {url}/studies?limit=1`` (PS3.18 10.6); the round trip in seconds, or DeliveryFailed."""
        conn = _Connection(destination, self.timeout)
        started = time.monotonic()
        try:
            conn.client.search_for_studies(limit=1)
        except requests.HTTPError as exc:
            status = _http_reason(exc.response)
            raise DeliveryFailed(f"{destination} answered the QIDO-RS query with {status}") from None
        except requests.RequestException as exc:
            raise DeliveryFailed(f"cannot reach {destination}: {_connection_error(exc, self.timeout)}") from None
        except ValueError as exc:  # a body that is not a QIDO-RS response
            raise DeliveryFailed(f"{destination} sent an invalid QIDO-RS response: {exc}") from None
        finally:
            conn.session.close()
        return time.monotonic() - started

    def send_batch(
        self, destination: WebDestination, batch: Sequence[PendingDelivery], stop: threading.Event | None = None
    ) -> list[StoreResult]:
        """One Store Instances request per file, in order; a connection failure fails the rest of the batch."""
        results: list[StoreResult] = []
        broken: DeliveryFailed | None = None
        for delivery in batch:
            if stop is not None and stop.is_set():
                broken = broken or SenderStopped("sender stopped before this file was sent")
            if broken is not None:
                results.append(StoreResult(delivery.path, delivery.sop_instance_uid, error=broken))
                continue
            try:
                status = self._store(destination, delivery.path, delivery.study_uid)
                results.append(StoreResult(delivery.path, delivery.sop_instance_uid, status=status))
            except _Unreachable as exc:
                broken = DeliveryFailed(str(exc))
                results.append(StoreResult(delivery.path, delivery.sop_instance_uid, error=broken))
            except DeliveryFailed as exc:
                results.append(StoreResult(delivery.path, delivery.sop_instance_uid, error=exc))
            except Exception as exc:  # noqa: BLE001 - a bug must fail the file, not the sender
                logger.exception("unexpected error sending to %s", destination)
                failure = DeliveryFailed(f"unexpected error sending to {destination}: {type(exc).__name__}")
                results.append(StoreResult(delivery.path, delivery.sop_instance_uid, error=failure))
        return results

    def _store(self, destination: WebDestination, path: Path, study_uid: str) -> int:
        """STOW-RS one file; its Warning Reason or Success once the service listed it as stored, else DeliveryFailed."""
        info = read_info(path)
        dataset = _read_dataset(path)
        conn = self._connection(destination)
        conn.response = None
        try:
            study = study_uid if is_valid_uid(study_uid) else None
            conn.client.store_instances([dataset], study_instance_uid=study)
        except requests.HTTPError as exc:
            raise _refusal(destination, exc.response, info.sop_instance_uid) from None
        except requests.RequestException as exc:
            raise _Unreachable(f"cannot deliver to {destination}: {_connection_error(exc, self.timeout)}") from None
        except ValueError as exc:  # dicomweb-client could not parse the body
            raise DeliveryFailed(f"{destination} sent an invalid Store Instances Response: {exc}") from None
        response = conn.response
        answer = _response_dataset(response)
        status = _http_reason(response)
        reason = _failure_reason(answer, info.sop_instance_uid)
        if reason is not None:
            raise _failed(destination, status, reason)
        listed = getattr(answer, "ReferencedSOPSequence", None) or []
        stored = {str(item.get("ReferencedSOPInstanceUID", "")): item for item in listed}
        if info.sop_instance_uid not in stored:
            raise DeliveryFailed(f"{destination} answered {status} but did not list the instance as stored")
        warning = stored[info.sop_instance_uid].get(_WARNING_REASON)
        if warning is None or warning.value is None:
            return int(Status.SUCCESS)
        logger.info("%s stored a result with %s", destination, describe_status(int(warning.value)))
        return int(warning.value)


class _Unreachable(DeliveryFailed):
    """No HTTP answer at all (refused, reset, timed out): the rest of the batch would fare no better."""


def _read_dataset(path: Path) -> Dataset:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnsendableFile(f"result file {str(path)!r} cannot be read: {exc.strerror}") from None
    if size > STOW_FILE_LIMIT:
        raise UnsendableFile(
            f"result file {str(path)!r} has {size} bytes, more than a STOW-RS delivery holds ({STOW_FILE_LIMIT})"
        )
    try:
        return dcmread(path)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        raise UnsendableFile(f"result file {str(path)!r} cannot be decoded: {exc}") from None


def _connection_error(exc: requests.RequestException, timeout: float) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed (certificate not trusted?)"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused, reset or unreachable"
    return type(exc).__name__


def _failed(destination: WebDestination, status: str, reason: int) -> DeliveryFailed:
    """A FailedSOPSequence entry: Out of Resources is retried, any other Failure Reason is final."""
    message = f"{destination} answered {status}: Failure Reason {describe_status(reason)}"
    if reason & 0xFF00 == _OUT_OF_RESOURCES:
        return DeliveryFailed(message)
    return DeliveryRefused(message)


def _refusal(destination: WebDestination, response: requests.Response | None, sop_instance_uid: str) -> DeliveryFailed:
    """An HTTP error status: 408, 429 and 5xx are retried; another 4xx is final (PS3.18 10.5.3, 8.6.3)."""
    status = _http_reason(response)
    if response is None:
        return DeliveryFailed(f"{destination} answered with an error and {status}")
    reason = _failure_reason(_response_dataset(response), sop_instance_uid)
    if reason is not None and response.status_code < 500:
        return _failed(destination, status, reason)
    if response.status_code >= 500 or response.status_code in _RETRYABLE_HTTP:
        return DeliveryFailed(f"{destination} answered {status}")
    return DeliveryRefused(f"{destination} refused the instance: {status}")

