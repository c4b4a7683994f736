"""Entry point: argv to a command, and the one place that maps errors to exit codes.

0: done; 1: a runtime failure; 2: a usage or config error.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from bridge.cli import run_cli

    return run_cli(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
