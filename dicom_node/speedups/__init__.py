"""pynetdicom speed-ups: where the node and its SCU step past pynetdicom's public API, and the one switch.

Why: pynetdicom 3.0 polls. Its acceptor's association thread sleeps 1 ms
between looks at its DIMSE queue and its DUL thread sleeps ``_run_loop_delay``
between looks at the socket; its ``send_c_store`` pauses the reactor per
message, builds the command set twice and queues every PDU through the DUL
thread. At hundreds of small C-STOREs a second (an MRI series, a slide's tiles)
those waits and that per-message work are most of the time. What is here keeps
pynetdicom's state machines, PDU decoding and service classes and replaces only
the waits and the per-message encoding:

- :mod:`dicom_node.speedups._acceptor` (SCP): an event-driven acceptor through
  pynetdicom's hook for a custom request handler; its DIMSE provider streams
  C-STORE data sets to the spool as they arrive and encodes a plain successful
  C-STORE-RSP itself; a DUL poll of 0.2 ms remains for pynetdicom's own waits.
- :mod:`dicom_node.speedups._writer` (SCU): :class:`PDataWriter` writes a file's
  C-STORE as P-DATA-TF PDUs from the sender's thread, command and first data
  fragment in one PDU; its association gets a 0.1 ms DUL poll and pynetdicom's
  per-PDU debug log handlers unbound.

Measured gain (``python bench/speedups.py --count 300 --rounds 3``: on and off in
alternating rounds of one run, 300 small MR instances of about 10 KB over
loopback, on a 2-core machine shared with other work, so the rounds are noisy):

- receive (dcmtk storescu -> StorageSCP, durable spool and state store): median
  60-102 instances/s on against 48-56 off, 1.2-1.8x; each C-STORE's fsync is most
  of what is left;
- send (StorageSCU -> dcmtk storescp): median 388-580/s on against 36-43/s off
  (9-16x). Off, pynetdicom's ``send_c_store`` also loses C-STORE responses to its
  own reactor now and then (its pause is racy, as in pynetdicom issue #875): 0 of
  300 failed with the speed-ups in six rounds, 0-232 of 300 without them (each
  failure waits out the DIMSE timeout; the delivery sender retries the file on a
  new association). Rounds without a failure: 146/s off against 346-1324/s on.

The switch: they are on where pynetdicom is 3.0.x (:data:`SUPPORTED`), unless
the environment says ``DICOM_NODE_PYNETDICOM_SPEEDUPS=0`` at start;
:func:`set_enabled` / :func:`disabled` change it for associations and sessions
made afterwards (``tests/dicom_node/test_speedups_off.py`` runs the storage
tests again with them off). Off, the node
uses pynetdicom's own acceptor with its documented chunked receive
(``_config.STORE_RECV_CHUNKED_DATASET``: data sets go to a temporary file,
never to memory) and the SCU uses ``send_c_store`` with its documented chunked
send (``_config.STORE_SEND_CHUNKED_DATASET``). Both paths give the same
statuses and the same stored bytes; only the off path is exposed to the
reactor race above, and only its send memory is unbounded: ``send_c_store``
reads the file in fragments but queues every P-DATA primitive on the DUL's
unbounded ``to_provider_queue``, so when the socket drains slower than the file
is read (a loaded machine) most of a large file sits in that queue (90 MiB of a
96 MiB file, measured); :class:`PDataWriter` writes each fragment as it reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom import _config

from dicom_node.speedups import _switch
from dicom_node.speedups._acceptor import EventDrivenRequestHandler, encode_c_store_rsp
from dicom_node.speedups._switch import ENV_VAR, SUPPORTED, enabled
from dicom_node.speedups._writer import PDataWriter

__all__ = [
    "ENV_VAR", "SUPPORTED", "DUL_POLL_SECONDS", "EventDrivenRequestHandler", "PDataWriter", "disabled", "enabled",
    "encode_c_store_rsp", "set_enabled", "tune_acceptor",
]

#: How long pynetdicom's DUL thread of an accepted association sleeps between polls when idle (its
#: default is 1 ms). The event-driven acceptor waits on its socket instead; this only remains for
#: pynetdicom's own loop and its stop_dul() join.
DUL_POLL_SECONDS = 0.0002


def _apply() -> None:
    """pynetdicom's chunked receive when its own acceptor decodes C-STOREs (speed-ups off)."""
    _config.STORE_RECV_CHUNKED_DATASET = not enabled()


def set_enabled(on: bool) -> None:
    """Turn the speed-ups on or off for associations and sessions made from now on (never on another series)."""
    _switch.set_enabled(on)
    _apply()


@contextmanager
def disabled() -> Iterator[None]:
    """Within the block, pynetdicom's own acceptor and send path; the previous setting afterwards."""
    before = enabled()
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(before)


def tune_acceptor(assoc: Any) -> None:
    """A shorter DUL poll for an accepted association (only with the speed-ups on)."""
    if enabled():
        assoc.dul._run_loop_delay = DUL_POLL_SECONDS


_apply()
