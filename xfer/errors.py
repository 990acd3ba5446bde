"""The one exception type for user errors: the CLI shows its message without a traceback."""


class XferError(Exception):
    """A problem with the user's input (data, source, config, run folder), with a message that says how to fix it."""


class XferWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as `warning: ...`)."""
