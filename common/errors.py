"""User errors: printed as one `error: ...` line with exit status 2, never as a traceback."""

import sys
from typing import Callable, Sequence


class UserError(Exception):
    """An error caused by the user's input (config, data, checkpoint), with the value and the fix."""


def run_cli(main: Callable[[Sequence[str]], object], argv: Sequence[str] | None = None) -> None:
    """Call main(argv) and turn a UserError into one stderr line and exit status 2."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
