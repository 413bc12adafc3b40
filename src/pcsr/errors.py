"""Errors a user can cause. The CLI prints their message as one line, never a traceback."""


class PcsrError(Exception):
    """A problem with the user's input, files or options, explained in the message."""


class ImageError(PcsrError):
    """An input image that cannot be read, or an output that cannot be written."""


class WeightsError(PcsrError):
    """A weights file or model name that cannot be loaded."""
