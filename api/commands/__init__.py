"""One module per ``orchestrator`` subcommand (see ``api.cli``)."""

import argparse
import contextlib
import os
import tempfile
from collections.abc import Callable


class CommandError(Exception):
    """A failure to report as one clear line and a non-zero exit, without a traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# The scripted engine is a test double: `run` and `serve` refuse it without its script.
SCRIPT_NEEDED = "the scripted engine (a test double) needs --script FILE"


def write_output(path: str, text: str) -> None:
    """Write a command's ``-o`` file; a path that cannot be written is one line, not a traceback.

    The text goes to a new file that then takes the name: writing into the file the name
    holds would also write every other name of it, and a hard link can put one in the
    analysed repository, where nothing may be written.
    """
    if not path:
        raise CommandError("-o needs a file name")
    tmp = None
    try:
        if os.path.exists(path) and not os.path.isfile(path):  # /dev/stdout, a pipe: no file
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
            return
        real = os.path.realpath(path)  # a symbolic link is written through, as open() does
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(real), prefix=".orchestrator-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would have made it
        os.replace(tmp, real)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
