"""The running appliance: components built from the configuration, run until SIGTERM or SIGINT.

A component is anything with ``name``, ``start()`` (returns once it runs in the
background) and ``stop()`` (returns within a few seconds; safe to call twice).
Components come from factories ``(config, store) -> Component | None`` listed in
:data:`COMPONENT_FACTORIES` (add yours there with one line), or are passed to
:class:`Service` directly. They start in order and stop
in reverse order; all share one :class:`~appliance.state.StateStore`.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Protocol, runtime_checkable

from appliance import _sdnotify
from appliance.assembly import assembly_component
from appliance.config import Config
from appliance.inference import worker_component
from appliance.ingest import node_component, stow_component
from appliance.outbox import delivery_component
from appliance.state import StateStore
from appliance.web import web_component

__all__ = ["COMPONENT_FACTORIES", "Component", "ComponentFactory", "Service"]

logger = logging.getLogger(__name__)


@runtime_checkable
class Component(Protocol):
    """A long-running part of the service."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


ComponentFactory = Callable[[Config, StateStore], "Component | None"]

#: the factories building the service's components, in start order
COMPONENT_FACTORIES: tuple[ComponentFactory, ...] = (
    node_component,
    stow_component,
    assembly_component,
    worker_component,
    delivery_component,
    web_component,
)


class Service:
    """Builds and runs the components; :meth:`run` blocks until stopped.

    ``factories`` defaults to :data:`COMPONENT_FACTORIES`; ``components`` are
    extra ready-made components started after the built ones.
    """

    def __init__(
        self,
        config: Config,
        factories: Sequence[ComponentFactory] | None = None,
        components: Sequence[Component] = (),
        store: StateStore | None = None,
    ) -> None:
        self.config = config
        self._owns_store = store is None
        self.store = store if store is not None else StateStore.for_data_dir(config.data_dir)
        self._factories = list(COMPONENT_FACTORIES if factories is None else factories)
        self._extra = list(components)
        self.components: list[Component] = []
        self._started: list[Component] = []
        self._stopping = threading.Event()
        self._stopped = False

    def _build(self) -> list[Component]:
        built: list[Component] = []
        for factory in self._factories:
            component = factory(self.config, self.store)
            if component is not None:
                built.append(component)
        return built + self._extra

    def start(self) -> None:
        """Build and start every component; if one fails, stop those already started and re-raise."""
        self.components = self._build()
        for component in self.components:
            try:
                component.start()
            except BaseException:
                logger.error("component %s failed to start; stopping the others", component.name)
                self.stop()
                raise
            self._started.append(component)
            logger.info("started %s", component.name)

    def stop(self) -> None:
        """Stop started components in reverse order (idempotent); close the store if we opened it."""
        self._stopping.set()
        while self._started:
            component = self._started.pop()
            try:
                component.stop()
                logger.info("stopped %s", component.name)
            except Exception:
                logger.exception("component %s failed to stop cleanly", component.name)
        if self._owns_store and not self._stopped:
            self.store.close()
        self._stopped = True

    def request_stop(self) -> None:
        """Ask :meth:`run` to return (thread- and signal-safe)."""
        self._stopping.set()

    def run(self, install_signals: bool = True) -> None:
        """Start, wait for SIGTERM/SIGINT (or :meth:`request_stop`), then stop."""
        previous: dict[signal.Signals, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self.start()
            _sdnotify.ready()
            logger.info("appliance running with %d component(s); SIGTERM or SIGINT stops it", len(self.components))
            while not self._stopping.wait(1.0):
                pass
        finally:
            _sdnotify.stopping()
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        self._stopping.set()
