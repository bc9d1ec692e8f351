"""Stopping a run cleanly on SIGTERM/SIGINT: the loop finishes its iteration, saves a checkpoint and stops."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("segformer")


class StopRequest:
    """SIGTERM/SIGINT (cluster preemption, Ctrl-C) in a single process: finish the iteration, save, stop.

    A second signal interrupts at once. Installed for a single process only, under torchrun too (a one-node elastic
    job that a node joins is SIGTERMed by its agent, and saves first); with more processes nothing is installed, as
    one that stopped alone would leave the others waiting in a collective (checkpoints every --save-every bound the
    loss there). Use as a context manager, or call `uninstall`.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, install: bool) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        if install and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    @property
    def name(self) -> str | None:
        """The received signal's name (SIGTERM, ...), or None while none came."""
        return signal.Signals(self.signal).name if self.signal is not None else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning(
            "%s received: stopping after this iteration (send it again to stop now)", signal.Signals(signum).name
        )

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
