"""Keep the demo's terminal to its progress bars and result table (issue 16, small defects).

Training and exporting the demo engines makes torch's ONNX exporter warn and
ONNX Runtime's calibrator print (``Collecting tensor data and making histogram
...``), some of it from native code straight to file descriptors 1 and 2. While
the engines are made, :func:`output_to_log` points both descriptors at the
demo's log file, and gives the Rich console a copy of the terminal, so the
chatter lands in the log and the progress bar stays on screen.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

__all__ = ["output_to_log"]

logger = logging.getLogger(__name__)


def _fileno(stream: object) -> int | None:
    try:
        return int(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


@contextmanager
def output_to_log(log_path: Path, console: Console) -> Iterator[None]:
    """Send everything written to stdout/stderr (Python, warnings, native code) to ``log_path`` meanwhile."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    original = console.file
    for stream in (sys.stdout, sys.stderr, original):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = None
    console_fd = _fileno(original)
    if console_fd in saved:  # the console writes to a descriptor about to be redirected: give it a copy
        terminal = os.fdopen(os.dup(saved[console_fd]), "w", encoding="utf-8", errors="replace")
        console.file = terminal
    logging.captureWarnings(True)
    try:
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
    finally:
        logging.captureWarnings(False)
        for copy in saved.values():
            os.close(copy)
        if terminal is not None:
            terminal.flush()
            console.file = original
            terminal.close()
