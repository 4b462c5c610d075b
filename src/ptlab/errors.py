"""The one exception type for user mistakes: the CLI prints it as a single line and exits non-zero."""


class PtlabError(Exception):
    """A problem with the user's input (config, file, argument), as opposed to a bug in ptlab. Its message is kept
    on one line whatever user text it quotes (see `one_line`)."""

    def __init__(self, message: object = "", *args: object):
        super().__init__(one_line(str(message)), *args)


def one_line(message: str) -> str:
    """`message` with line breaks and other control characters escaped (a path or value from the user may hold a
    newline or a NUL), so that an error stays one line of a terminal or a log."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)
