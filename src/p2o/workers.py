"""Worker processes that never outlive the command that started them.

`p2o demo --jobs N` trains methods in worker processes and `p2o toy build` trains attempts side by
side in them. Ctrl-C already stops them (the parent's cleanup terminates its workers); these two
pieces cover the rest:

- `sigterm_as_exit()`: while the parent runs its workers, SIGTERM (`kill`, a scheduler cancelling a
  job) ends it as Ctrl-C does, with its cleanup, instead of killing it on the spot and leaving the
  workers training on their own.
- `die_with_parent()`: called first thing in a worker; on Linux the worker gets SIGTERM as soon as
  its parent dies, however it died (SIGKILL, the OOM killer).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """For the block, SIGTERM raises `SystemExit(143)` in the main thread (where it would otherwise
    end the process without running any cleanup); the handler before is restored after. Outside
    the main thread, or where a handler is already set, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    if before not in (signal.SIG_DFL, None):
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG); exit at
    once when the parent is already gone. Elsewhere it does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import multiprocessing

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl here: the parent's cleanup still stops us
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl took effect
        os._exit(128 + signal.SIGTERM)
