"""The study's error base class.

A `StudyError` carries a message that tells the user what went wrong and what
to do; the command line prints it without a traceback and exits with status 2.
"""


class StudyError(Exception):
    """An expected failure with an actionable message (bad input, server refused, ...)."""
