"""Shared pieces of the subcommands: turning a bad config or bad data into one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from p2o.config import ConfigError
from p2o.tasks.data import DataError
from p2o.toy.build import ToyBuildError


def report_errors(prog: str, fn: Callable[[], int]) -> int:
    """Run `fn`; a `ConfigError` / `DataError` / `ToyBuildError` becomes `prog: error: ...` on stderr and exit code 2."""
    try:
        return int(fn() or 0)
    except ConfigError as e:
        print(f"{prog}: invalid config: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"{prog}: data error: {e}", file=sys.stderr)
        return 2
    except ToyBuildError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
