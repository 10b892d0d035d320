"""Finding the processes a test launched, wherever they ended up (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path


def launched(tag: str) -> dict[int, str]:
    """The live processes (not zombies) started by one launch: those whose environment holds
    P2O_TEST_LAUNCH=tag. torchrun starts each rank in its own session, and a rank whose launcher died
    belongs to no tree of it, so the environment is what finds them all (Linux /proc)."""
    found = {}
    marker = f"P2O_TEST_LAUNCH={tag}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            stat = (proc / "stat").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        # pid (comm) state ...: comm may hold spaces, so split after its closing paren
        if stat[stat.rindex(")") + 2 :].split()[0] != "Z":
            found[int(proc.name)] = stat[stat.index("(") + 1 : stat.rindex(")")]
    return found


def outliving(tag: str, grace: float) -> dict[int, str]:
    """The processes of launch `tag` still alive after `grace` seconds (none: empty)."""
    end = time.monotonic() + grace
    while (left := launched(tag)) and time.monotonic() < end:
        time.sleep(0.2)
    return left


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # exited meanwhile
            os.kill(pid, sig)
