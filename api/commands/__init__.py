"""One module per ``orchestrator`` subcommand (see ``api.cli``)."""

import argparse
from collections.abc import Callable


class CommandError(Exception):
    """A failure to report as one clear line and a non-zero exit, without a traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# The scripted engine is a test double: `run` and `serve` refuse it without its script.
SCRIPT_NEEDED = "the scripted engine (a test double) needs --script FILE"


def write_output(path: str, text: str) -> None:
    """Write a command's ``-o`` file; a path that cannot be written is one line, not a traceback."""
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


def whole_number(low: int, high: int, what: str = "a whole number") -> Callable[[str], int]:
    """An argparse ``type`` taking integers from ``low`` to ``high``; anything else is refused
    with the range, before the command opens or starts anything."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"must be {what} from {low} to {high}, not {text!r}")
        return n

    return parse
