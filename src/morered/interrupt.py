"""Graceful interruption for long loops, shared by the command line and training.

``with Interruptible(what) as stop:`` -- the first Ctrl-C (SIGINT) or SIGTERM sets
``stop.requested`` and calls :meth:`Interruptible.on_request` (finish the work in flight, write
what is done, exit 130); a second Ctrl-C raises KeyboardInterrupt at once.  Handlers are installed
only in the main thread; elsewhere the context is a no-op.
"""

from __future__ import annotations

import signal
import sys
import threading


class Interruptible:
    def __init__(self, what: str = "the work in flight"):
        self.what = what
        self.requested = False
        self._old = {}

    def on_request(self, name: str) -> None:
        """Called once, on the first signal; ``name`` is ``Ctrl-C`` or the signal's name."""
        print(f"\n{name}: finishing {self.what}, then writing what is done "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.on_request("Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
