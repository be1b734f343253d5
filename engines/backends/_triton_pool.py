"""A pool of Triton Inference Server endpoints: health, slots in flight, latency, errors, backoff.

Each :class:`Endpoint` holds ``max_inflight`` clients (one per request in
flight, so no client is shared between threads: tritonclient's HTTP client is
not thread-safe). :meth:`EndpointPool.acquire` hands out a slot on the
least-loaded healthy endpoint (fewest in flight, then lowest latency), waiting
while every healthy endpoint is full. An endpoint that fails is taken out and
probed again (server ready and model ready, on a fresh client) after a backoff
that doubles up to :data:`MAX_BACKOFF_SECONDS`; when no endpoint is healthy and
none recovers, :class:`~engines.errors.EngineUnavailable` is raised so the job
waits in the queue instead of failing.

Every pool registers itself in a process-wide weak set so the dashboard and
``/metrics`` can show :func:`endpoint_states` without knowing which engines
are loaded.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from engines.errors import EngineUnavailable

__all__ = ["Endpoint", "EndpointPool", "EndpointState", "MAX_BACKOFF_SECONDS", "endpoint_states", "parse_endpoint"]

logger = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
_LATENCY_WEIGHT = 0.2  #: exponential moving average of request latency
_POOLS: weakref.WeakSet[EndpointPool] = weakref.WeakSet()
_POOLS_LOCK = threading.Lock()


def parse_endpoint(url: str) -> tuple[str, str, bool]:
    """``grpc://host:port`` | ``http://host:port`` | ``https://host:port`` -> (protocol, host:port, tls)."""
    parts = urlsplit(str(url).strip())
    scheme = parts.scheme.lower()
    if scheme not in ("grpc", "grpcs", "http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"Triton endpoint {url!r} must look like grpc://HOST:PORT or http://HOST:PORT")
    if parts.path not in ("", "/"):
        raise ValueError(f"Triton endpoint {url!r}: no path is allowed after HOST:PORT")
    return ("grpc" if scheme.startswith("grpc") else "http"), f"{parts.hostname}:{parts.port}", scheme in ("grpcs", "https")


@dataclass(frozen=True)
class EndpointState:
    """What the dashboard and ``/metrics`` show of one endpoint (no patient data: URLs and counters)."""

    url: str
    model: str
    healthy: bool
    in_flight: int
    max_inflight: int
    latency_seconds: float
    requests: int
    errors: int
    last_error: str
    retry_in_seconds: float


@dataclass(eq=False)
class Endpoint:
    """One Triton server of the pool and its bookkeeping (guarded by the pool's condition)."""

    url: str
    clients: list[Any]
    healthy: bool = False  #: not until its first probe (or the engine's load-time check) admits it
    in_flight: int = 0
    latency: float = 0.0
    requests: int = 0
    errors: int = 0
    last_error: str = ""
    backoff: float = FIRST_BACKOFF_SECONDS
    retry_at: float = 0.0
    probing: bool = False
    free: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free = list(self.clients)


class EndpointPool:
    """Endpoints serving one model; ``make_client(url)`` builds a client, ``probe(url, client)`` checks it."""

    def __init__(self, model: str, urls: Sequence[str], max_inflight: int, make_client: Callable[[str], Any],
                 probe: Callable[[str, Any], None], clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("a Triton pool needs at least one endpoint")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        self.model = model
        self.max_inflight = max_inflight
        self._make_client, self._probe, self._clock = make_client, probe, clock
        self._cond = threading.Condition()
        self.endpoints = [Endpoint(url, []) for url in dict.fromkeys(urls)]
        self._closed = False
        with _POOLS_LOCK:
            _POOLS.add(self)

    @property
    def capacity(self) -> int:
        return self.max_inflight * len(self.endpoints)

    # ------------------------------------------------------------------ health

    def mark_down(self, endpoint: Endpoint, error: str) -> None:
        """Take ``endpoint`` out; it is probed again after its backoff."""
        with self._cond:
            endpoint.errors += 1
            endpoint.last_error = error[:300]
            if endpoint.healthy:
                logger.warning("Triton endpoint %s (model %s) taken out: %s", endpoint.url, self.model, error[:300])
                endpoint.backoff = FIRST_BACKOFF_SECONDS
            else:
                endpoint.backoff = min(MAX_BACKOFF_SECONDS, endpoint.backoff * 2)
            endpoint.healthy = False
            endpoint.retry_at = self._clock() + endpoint.backoff
            self._cond.notify_all()

    def admit(self, endpoint: Endpoint) -> None:
        """Bring ``endpoint`` (back) in with fresh clients; a channel that saw the server die is not reused."""
        clients = [self._make_client(endpoint.url) for _ in range(self.max_inflight)]
        with self._cond:
            old = endpoint.clients
            endpoint.clients, endpoint.free = clients, list(clients)
            endpoint.healthy, endpoint.in_flight, endpoint.backoff = True, 0, FIRST_BACKOFF_SECONDS
            self._cond.notify_all()
        for client in old:
            _close(client)
        logger.info("Triton endpoint %s (model %s) is in the pool", endpoint.url, self.model)

    def probe_due(self, force: bool = False) -> None:
        """Probe every endpoint that is down and due (or all down ones with ``force``); admit those ready."""
        now = self._clock()
        with self._cond:
            due = [e for e in self.endpoints if not e.healthy and not e.probing and (force or e.retry_at <= now)]
            for e in due:
                e.probing = True
        for endpoint in due:
            try:
                client = self._make_client(endpoint.url)
                try:
                    self._probe(endpoint.url, client)
                finally:
                    _close(client)
            except Exception as exc:  # any failure of a probe keeps the endpoint out
                self.mark_down(endpoint, str(exc) or type(exc).__name__)
            else:
                self.admit(endpoint)
            finally:
                with self._cond:
                    endpoint.probing = False

    # ------------------------------------------------------------------ slots

    def acquire(self, timeout: float, exclude: frozenset[Endpoint] = frozenset(),
                only: Endpoint | None = None) -> tuple[Endpoint, Any]:
        """A free client on the least-loaded healthy endpoint (or on ``only``); EngineUnavailable when none is healthy.

        Endpoints in ``exclude`` (those that already failed this batch) are used only when no other is healthy.
        """
        deadline = self._clock() + timeout
        while True:
            self.probe_due()
            with self._cond:
                if self._closed:
                    raise EngineUnavailable(f"the Triton pool of model {self.model!r} is closed")
                healthy = [e for e in self.endpoints if e.healthy and (only is None or e is only)]
                candidates = [e for e in healthy if e not in exclude] or healthy
                ready = [e for e in candidates if e.free]
                if ready:
                    best = min(ready, key=lambda e: (e.in_flight, e.latency))
                    best.in_flight += 1
                    return best, best.free.pop()
                if not healthy:
                    raise EngineUnavailable(self.unavailable_message())
                left = deadline - self._clock()
                if left <= 0:
                    raise EngineUnavailable(f"no free slot on the Triton endpoints of model {self.model!r} "
                                            f"within {timeout:g} s")
                self._cond.wait(min(left, 1.0))

    def release(self, endpoint: Endpoint, client: Any, seconds: float | None) -> None:
        """Give the slot back; ``seconds`` is the request's latency, None when it failed."""
        with self._cond:
            endpoint.in_flight = max(0, endpoint.in_flight - 1)
            if client in endpoint.clients:
                endpoint.free.append(client)
            else:  # the endpoint was re-admitted meanwhile: this client belongs to a dead channel
                _close(client)
            if seconds is not None:
                endpoint.requests += 1
                endpoint.latency = seconds if endpoint.latency == 0 else (
                    (1 - _LATENCY_WEIGHT) * endpoint.latency + _LATENCY_WEIGHT * seconds)
            self._cond.notify_all()

    def unavailable_message(self) -> str:
        why = "; ".join(f"{e.url}: {e.last_error or 'down'}" for e in self.endpoints)
        return f"no Triton endpoint serving model {self.model!r} is healthy ({why})"

    # ------------------------------------------------------------------ reading

    def states(self) -> list[EndpointState]:
        now = self._clock()
        with self._cond:
            return [EndpointState(e.url, self.model, e.healthy, e.in_flight, self.max_inflight, e.latency,
                                  e.requests, e.errors, e.last_error,
                                  0.0 if e.healthy else max(0.0, e.retry_at - now)) for e in self.endpoints]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            clients = [c for e in self.endpoints for c in e.clients]
            for e in self.endpoints:
                e.clients, e.free = [], []
            self._cond.notify_all()
        for client in clients:
            _close(client)
        with _POOLS_LOCK:
            _POOLS.discard(self)


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing a client of a dead server must not raise
        logger.debug("closing a Triton client failed", exc_info=True)


def endpoint_states() -> list[EndpointState]:
    """Every endpoint of every open pool in this process, for the dashboard and ``/metrics``."""
    with _POOLS_LOCK:
        pools = list(_POOLS)
    return sorted((s for pool in pools for s in pool.states()), key=lambda s: (s.url, s.model))
