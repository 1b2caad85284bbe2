"""One module per ``orchestrator`` subcommand (see ``api.cli``)."""


class CommandError(Exception):
    """A failure to report as one clear line and a non-zero exit, without a traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
