"""Loaded engine sessions of one scheduling slot, kept between jobs (one per task).

Each device slot owns one :class:`EngineCache`: its own ONNX Runtime session or
TensorRT context on its own device, never shared with another slot's thread.
A session is reloaded when the task's active version changes (an activation
or a rollback takes effect at the slot's next job).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from engines.backends import Engine

__all__ = ["EngineCache", "EngineSource"]

logger = logging.getLogger(__name__)


class EngineSource(Protocol):
    """What the cache needs from ``engines.registry.Registry``."""

    def active_versions(self) -> dict[str, str]: ...

    def load_active(self, task: str, cpu_threads: int = 0) -> Engine: ...


class EngineCache:
    """Loaded engine sessions, one per task, kept between jobs; reloaded when the active version changes.

    ``device`` (``"cpu"``, ``"cuda:N"``; None: the registry's default) and
    ``cpu_threads`` are the slot's: every engine it loads runs there.
    """

    def __init__(self, source: EngineSource, cpu_threads: int = 0, device: str | None = None) -> None:
        self.source = source
        self.cpu_threads = cpu_threads
        self.device = device
        self._engines: dict[str, tuple[str, Engine]] = {}
        self._lock = threading.Lock()
        self.loads = 0  #: how many sessions were loaded (for tests and the dashboard)

    def get(self, task: str) -> Engine:
        """The engine of the active version of ``task``, loading it only when that version is not loaded."""
        active = self.source.active_versions().get(task)
        with self._lock:
            cached = self._engines.get(task)
            if cached is not None and cached[0] == active:
                return cached[1]
            if cached is not None:
                logger.info("engine %s: active version changed from %s to %s, reloading", task, cached[0], active)
                _close(cached[1])
                del self._engines[task]
            engine = self._load(task)
            version = str(getattr(getattr(engine, "manifest", None), "version", active))
            self._engines[task] = (version, engine)
            self.loads += 1
            logger.info("engine %s %s loaded on %s", task, version, self.device or "the default device")
            return engine

    def _load(self, task: str) -> Engine:
        if self.device is None:
            return self.source.load_active(task, cpu_threads=self.cpu_threads)
        load: Any = self.source.load_active  # the registry's signature has ``device``; the Protocol keeps fakes small
        engine: Engine = load(task, cpu_threads=self.cpu_threads, device=self.device)
        return engine

    def loaded(self) -> dict[str, str]:
        """Task -> version of the sessions held now."""
        with self._lock:
            return {task: version for task, (version, _) in self._engines.items()}

    def remote_capacity(self) -> int | None:
        """The smallest ``capacity`` among the loaded remote engines, or None when none is loaded."""
        with self._lock:
            capacities = [
                max(1, int(getattr(engine, "capacity", 1)))
                for _, engine in self._engines.values()
                if getattr(engine, "remote", False)
            ]
        return min(capacities) if capacities else None

    def close(self) -> None:
        with self._lock:
            for _, engine in self._engines.values():
                _close(engine)
            self._engines.clear()


def _close(engine: Engine) -> None:
    try:
        engine.close()
    except Exception:  # closing must never stop the worker
        logger.exception("closing an engine failed")
