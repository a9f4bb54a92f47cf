"""Drought-category study: ETL to zarr, nginx serving, streaming training."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version(__name__.replace("_", "-"))
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
