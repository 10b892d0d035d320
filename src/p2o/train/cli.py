"""`p2o train --config configs/x.yaml [--flag value ...]`."""

from __future__ import annotations

import sys

from p2o.cliutil import report_errors


def main(argv: list[str]) -> int:
    def run() -> int:
        from p2o.config import parse_config

        script_args, config = parse_config(argv)
        print("p2o train: the trainer is not built yet (config is valid).", file=sys.stderr)
        return 3

    return report_errors("p2o train", run)
