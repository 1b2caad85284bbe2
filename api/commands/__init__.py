"""One module per ``orchestrator`` subcommand (see ``api.cli``)."""


class CommandError(Exception):
    """A failure to report as one clear line and a non-zero exit, without a traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def write_output(path: str, text: str) -> None:
    """Write a command's ``-o`` file; a path that cannot be written is one line, not a traceback."""
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
