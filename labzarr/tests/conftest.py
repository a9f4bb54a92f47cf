"""Shared fixtures of the library's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labzarr.remote import StoreSource
from labzarr.testing.fixtures import s3_bucket
from labzarr.testing.s3server import SeaweedS3
from labzarr.train.threads import prepare_threads

prepare_threads()  # before a test imports torch: its idle OpenMP threads sleep, as in a study's CLI


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


# -- serving: a study folder of our own (labzarr.serve reads <root>/storage/nginx/templates) -----

# A plain nginx template in the layout and with the variables of a baked study's
# storage/nginx/templates/study.conf.template (that one is Jinja-rendered when a study is
# generated; this one is what it renders to, kept to what the serving tests check).
SERVE_TEMPLATE = """\
# nginx configuration of a test study's data server.
# study-auth: {auth}
limit_req_zone $binary_remote_addr zone=study_requests:10m rate=${{STUDY_REQUESTS_PER_SECOND}}r/s;
{maps}
server {{
    listen ${{STUDY_LISTEN}};
    include ${{STUDY_TLS_DIR}}/*.conf;
    root "${{STUDY_DATA_ROOT}}";
    server_tokens off;
    autoindex off;
    limit_rate ${{STUDY_LIMIT_RATE}};
    limit_req zone=study_requests burst=${{STUDY_BURST}};
    limit_req_status 429;
    if ($request_method !~ ^(GET|HEAD|OPTIONS)$) {{
        return 405;
    }}
{credentials}
    location = /healthz {{
{open}
        default_type text/plain;
        return 200 "ok\\n";
    }}
    location ~ "^(/[^./][^/]*)*/\\.z(array|attrs|group|metadata)$" {{
        types {{ }}
        default_type application/json;
        try_files $uri =404;
    }}
    location ~ /\\. {{
        return 404;
    }}
    location / {{
        try_files $uri =404;
    }}
}}
"""
SERVE_AUTH = {
    "none": {"maps": "", "credentials": "", "open": ""},
    "token": {
        "maps": (
            "map $http_authorization $study_bearer_token {\n"
            '    "~*^bearer +(?<study_sent_token>[^ ]+)$" $study_sent_token;\n'
            '    default "";\n'
            "}\n"
        ),
        "credentials": (
            "    auth_request /_study_auth;\n"
            "    location = /_study_auth {\n"
            "        internal;\n"
            '        if ($study_bearer_token = "${STUDY_TOKEN}") {\n'
            "            return 204;\n"
            "        }\n"
            "        return 401;\n"
            "    }\n"
        ),
        "open": "        auth_request off;",
    },
    "basic": {
        "maps": "",
        "credentials": '    auth_basic "study data";\n    auth_basic_user_file "${STUDY_HTPASSWD}";\n',
        "open": "        auth_basic off;",
    },
}


def write_serve_root(root: Path, auth: str, *, token: str | None = None, htpasswd: str | None = None) -> Path:
    """A study folder for `ServeSettings.root`: storage/nginx/templates/study.conf.template for
    `auth`, and storage/secrets/{token,htpasswd} when given; returns `root`."""
    templates = root / "storage" / "nginx" / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    (templates / "study.conf.template").write_text(SERVE_TEMPLATE.format(auth=auth, **SERVE_AUTH[auth]))
    secrets = root / "storage" / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    if token is not None:
        (secrets / "token").write_text(token + "\n")
    if htpasswd is not None:
        (secrets / "htpasswd").write_text(htpasswd)
    return root


@pytest.fixture
def serve_root(tmp_path: Path) -> Callable[..., Path]:
    """`serve_root(auth, token=..., htpasswd=...)`: a study folder under tmp_path for that auth."""
    return lambda auth, **secrets: write_serve_root(tmp_path / f"study-{auth}", auth, **secrets)


# -- S3: one SeaweedFS for a test module -----------------------------------------------------

S3_BUCKET = "study-data"


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedS3]:
    """One SeaweedFS for the module, its bucket created; the AWS variables point at it."""
    with s3_bucket(S3_BUCKET) as server:
        yield server
