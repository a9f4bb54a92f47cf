"""`serve` with the study's own nginx template (storage/nginx/templates, generated with the study's
auth answer) and the host's nginx; the machinery is labzarr's and tested there."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from labzarr.serve import ServeError, serving, templates
from labzarr.store_format import Manifest
from labzarr.testing.fixtures import readable_by_nginx_workers
from labzarr.testing.stores import learnable_series, write_series_store

from ..config import Config
from .conftest import STUDY_ROOT


def test_the_study_template_is_the_one_of_its_auth(study_config: Config) -> None:
    found = templates(study_config.serve_settings())
    assert [p.name for p in found] == ["study.conf.template"]
    other = next(a for a in ("token", "basic", "none") if a != study_config.server.auth)
    with pytest.raises(ServeError, match="regenerate the study"):
        templates(study_config.override({"server.auth": other}).serve_settings())


def credentials(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set the environment for the study's auth mode; return the headers a client sends."""
    if cfg.server.auth == "token":
        monkeypatch.setenv("DATA_TOKEN", "test-token-0123456789")
        return {"Authorization": "Bearer test-token-0123456789"}
    if cfg.server.auth == "basic":
        monkeypatch.setenv("DATA_USER", "reader")
        monkeypatch.setenv("DATA_PASSWORD", "pw-0123")
        return {"Authorization": "Basic " + base64.b64encode(b"reader:pw-0123").decode()}
    return {}


def get(url: str, headers: dict[str, str], method: str = "GET") -> int:
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.nginx
def test_the_study_template_serves_a_folder_with_the_real_nginx(
    study_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin") is None and shutil.which("nginx") is None:
        message = "nginx is not installed (sudo apt-get install -y nginx)"
        if os.environ.get("STUDY_REQUIRE_ALL") == "1":  # CI: a missing server is a failure
            pytest.fail(message)
        pytest.skip(message)
    headers = credentials(study_config, monkeypatch)
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.zarr" / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (tmp_path / ".env").write_text("secret")
    x, y = learnable_series(4, 60)  # a store where the ETL puts it: <data.zarr_dir>/<dataset_name>.zarr
    write_series_store(
        tmp_path, x, y, dataset_name=study_config.study.dataset_name, lookback=5, chunk_cells=4
    )
    # storage/README.md's check from another machine: the very URL path it tells the lab to curl
    readme = (STUDY_ROOT / "storage" / "README.md").read_text()
    (check,) = re.findall(
        r"^curl -fsS .*http://lab-host\.example\.edu:8080(/\S+) \| head", readme, re.MULTILINE
    )
    with serving(study_config.serve_settings(), readable_by_nginx_workers(tmp_path)) as url:
        assert get(f"{url}/healthz", {}) == 200
        assert get(f"{url}/s.zarr/.zgroup", headers) == 200
        assert get(f"{url}/.env", headers) == 404
        assert get(f"{url}/s.zarr/.zgroup", headers, method="DELETE") == 405
        if headers:
            assert get(f"{url}/s.zarr/.zgroup", {}) == 401
        with urllib.request.urlopen(
            urllib.request.Request(f"{url}{check}", headers=headers), timeout=5
        ) as answer:
            assert Manifest.from_json(answer.read()).arrays, check  # "JSON means it works"
