"""The one exception type for user mistakes: the CLI prints it as a single line and exits non-zero."""


class PtlabError(Exception):
    """A problem with the user's input (config, file, argument), as opposed to a bug in ptlab."""
