"""Shared fixtures of the library's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide credentials and URLs themselves, whatever the developer has exported."""
    for name in ("DATA_URL", "DATA_TOKEN", "DATA_USER", "DATA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
