"""The garbage collector in long-running processes.

A full collection walks every object the collector tracks and stops the event loop while it
does. What a process builds while starting (modules, settings, the app) never becomes garbage,
yet every full collection would walk it again: tens of milliseconds in an idle gateway, which a
realtime request with a 10 ms objective cannot afford. Frozen once startup is done, it is left
out, and a pause costs only what requests in flight hold.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect startup's garbage, then move everything still alive out of the collector's sight."""
    gc.collect()
    gc.freeze()
