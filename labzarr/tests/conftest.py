"""Shared fixtures of the library's tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from labzarr.remote import StoreSource


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide credentials and URLs themselves, whatever the developer has exported."""
    for name in ("DATA_URL", "DATA_TOKEN", "DATA_USER", "DATA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


# -- the reader's and the loader's tests (test_remote.py, test_loader.py) ----------------------------------


@pytest.fixture
def store_dataset() -> str:
    """The dataset name of the small stores those tests serve: `<root>/<name>.zarr`, features `<name>`."""
    return "columbia_gridcells"


@pytest.fixture
def source_for(store_dataset: str) -> Callable[..., StoreSource]:
    """`source_for(url, **settings)`: the `StoreSource` of `<url>/<store_dataset>.zarr`, resolved as a
    study resolves it (the URL argument, else $DATA_URL; credentials from token= / user=, password=,
    else the environment); `settings` are the other StoreSource fields (timeout_s, cache, ...)."""

    def resolve(url: str | None = None, **settings: Any) -> StoreSource:
        return StoreSource.resolve(url, dataset_name=store_dataset, **settings)

    return resolve
