"""The export's own failure: raised by the stages after loading, shown by the CLI without a traceback."""


class ExportError(RuntimeError):
    """The export ran but its result is not acceptable (e.g. validation over tolerance)."""
