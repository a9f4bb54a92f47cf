"""labzarr: the machinery of lab-served zarr studies, installed rather than copied into each study.

A study keeps its science (config, categories, transforms, labels, models, training recipe);
this library holds what no study changes: the store contract (`labzarr.store_format`), where a
store lives (`labzarr.location`), the resilient reader (`labzarr.remote`), the ETL's input
checks, writing, publishing and dask runner (`labzarr.etl`), the windows-on-read loader, its
chunk cache and the DDP helpers (`labzarr.train`, needs torch), nginx serving
(`labzarr.serve`) and the lock command (`labzarr.lock`). README.md is the API page.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import StudyError

try:
    __version__ = version("labzarr")
except PackageNotFoundError:  # a source tree on sys.path that is not installed
    __version__ = "0+unknown"

__all__ = ["StudyError", "__version__"]
