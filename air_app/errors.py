"""The one exception type that means "the user gave us something we cannot use".

Every stage raises :class:`UserError` with a one-line, actionable message for bad input. The CLI prints it on stderr
and exits with code 2; the UI shows it in the page. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a clear message that tells the user what to change."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
