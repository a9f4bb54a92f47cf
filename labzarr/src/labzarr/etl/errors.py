"""Errors of the ETL, phrased for the user (the CLI prints them without a traceback)."""

from __future__ import annotations

from ..errors import StudyError


class EtlError(StudyError):
    """The ETL could not produce a store."""


class EtlInputError(EtlError, ValueError):
    """A raw input is unusable; the message names the file, the variable and the problem."""


class StoreExistsError(EtlError, FileExistsError):
    """The target store exists and --overwrite was not given."""
