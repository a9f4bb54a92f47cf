"""Slow tier: the baked nginx configuration on a real nginx, serving real zarr stores.

One baked and installed study per auth mode (token: the shared `fast_study`), zarr v2
and v3 stores written here with xarray, and the study's own `serve` command on
127.0.0.1 and a random port. The functional server runs with a high request-rate limit
(a config copy) so the many small requests of these checks are never paced; the
shipped limits are exercised by readers that must never be refused (one sequential
reader of every file, four of the original post's clients at once, xarray) and by a
runaway client that must be (429 with Retry-After). Cost: about 25 s, most of it the
paced reads, the limit_rate measurement and the two bakes.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import numpy as np
import pytest
import requests
import xarray as xr
from fsspec.implementations.http import HTTPFileSystem
from labzarr.testing.ports import free_ports

from servers import study_package, study_server

from .conftest import FAST_CONTEXT, bake, install_study, require_tool, run

pytestmark = pytest.mark.slow

STORE = "columbia_gridcells_lb30"
V2, V3 = f"{STORE}/train.zarr", f"{STORE}/valid.zarr"
# A store of 200 small chunks (one request each), for the rate-limit checks.
MANY = "readers/many.zarr"
SECRET = "TOP-SECRET-CONTENT"
CORS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers")
# The variables the image's envsubst would see in the container (compose.yaml sets them;
# the limits come from the baked study.toml, see docker_vars).
DOCKER_VARS = {
    "STUDY_LISTEN": "8080",
    "STUDY_DATA_ROOT": "/srv/zarr",
    "STUDY_TLS_DIR": "/etc/nginx/study-tls",
}


# ---------------------------------------------------------------- data written here


def sample_dataset(seed: int) -> xr.Dataset:
    """A small dataset shaped like the ETL's samples: (sample, time, feature) and labels."""
    rng = np.random.default_rng(seed)
    n, lookback, features = 64, 30, 2
    return xr.Dataset(
        {
            "x": (("sample", "time_lag", "feature"), rng.normal(size=(n, lookback, features)).astype("float32")),
            "y": (("sample",), rng.integers(0, 11, size=n).astype("int8")),
        },
        coords={"sample": np.arange(n), "feature": ["soil_moisture", "snow_water_equivalent"]},
        attrs={"title": "nginx test store", "notes": "x" * 400},  # > gzip_min_length
    )


def write_store(path: Path, zarr_format: int, seed: int) -> xr.Dataset:
    ds = sample_dataset(seed)
    encoding = {"x": {"chunks": (16, 30, 2)}, "y": {"chunks": (16,)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr 3: consolidated metadata is not in the v3 spec yet
        ds.to_zarr(path, mode="w", consolidated=True, zarr_format=zarr_format, encoding=encoding)
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    (path / "manifest.json").write_text(json.dumps({"files": files, "zarr_format": zarr_format}))
    return ds


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The served folder: a v2 and a v3 store, things that must never be served, symlinks out."""
    where = tmp_path_factory.mktemp("nginx-data")
    root = where / "zarr"
    datasets = {V2: write_store(root / V2, 2, 1), V3: write_store(root / V3, 3, 2)}
    outside = where / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"secret": SECRET}))
    (root / ".htpasswd").write_text(f"admin:{SECRET}\n")
    (root / ".env").write_text(f"DATA_TOKEN={SECRET}\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text(f"[remote]\n url = {SECRET}\n")
    tmp_store = root / STORE / ".tmp-test.zarr"  # the ETL's temporary folder before the rename
    tmp_store.mkdir()
    (tmp_store / ".zarray").write_text(json.dumps({"secret": SECRET}))
    (tmp_store / "zarr.json").write_text(json.dumps({"secret": SECRET}))
    (root / "escape.json").symlink_to(outside / "secret.json")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "big.bin").write_bytes(np.random.default_rng(0).bytes(300_000))
    rng = np.random.default_rng(3)
    many = xr.Dataset({"a": ("n", rng.normal(size=1600).astype("float32")), "b": ("n", rng.integers(0, 9, 1600))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        many.to_zarr(
            root / MANY, mode="w", consolidated=True, zarr_format=2, encoding={v: {"chunks": (16,)} for v in many}
        )
    return {"root": root, "datasets": {**datasets, MANY: many}, "outside": outside}


def store_files(root: Path) -> list[str]:
    """Every file of the stores (what a client may read), as URL paths."""
    return sorted(
        str(p.relative_to(root))
        for p in (root / STORE).rglob("*")
        if p.is_file() and not any(part.startswith(".tmp") for part in p.relative_to(root).parts)
    )


# ---------------------------------------------------------------- studies and servers


@pytest.fixture(scope="module")
def token_study(fast_study: tuple[Path, Path]) -> tuple[Path, Path]:
    study, python = fast_study
    assert tomllib.loads((study / "study.toml").read_text())["server"]["auth"] == "token"
    return study, python


@pytest.fixture(scope="module")
def basic_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("basic")
    study = bake(where / "bake", auth="basic", **FAST_CONTEXT)
    return study, install_study(study, where)


@pytest.fixture(scope="module")
def none_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("none")
    study = bake(where / "bake", auth="none", **FAST_CONTEXT)
    return study, install_study(study, where)


def config_copy(study: Path, where: Path, **server: object) -> Path:
    """study.toml with [server] keys changed, next to a copy of the templates (serve looks
    for them beside the config); passed to serve through STUDY_CONFIG."""
    where.mkdir(parents=True, exist_ok=True)
    text = (study / "study.toml").read_text()
    for name, value in server.items():
        lines = [line for line in text.splitlines() if line.startswith(f"{name} = ")]
        assert len(lines) == 1, name
        text = text.replace(lines[0], f"{name} = {json.dumps(value)}")
    (where / "study.toml").write_text(text)
    shutil.copytree(study / "storage" / "nginx", where / "storage" / "nginx")
    return where / "study.toml"


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def srv(token_study, data, token, tmp_path_factory) -> Iterator[str]:
    """Token-auth server with a request-rate limit high enough for the checks below."""
    require_tool("nginx")
    study, python = token_study
    config = config_copy(study, tmp_path_factory.mktemp("norate"), requests_per_second=100_000, burst=10_000)
    env = {"DATA_TOKEN": token, "STUDY_CONFIG": str(config)}
    with study_server(python, study, data["root"], auth_env=env) as url:
        yield url


@pytest.fixture(scope="module")
def srv_default(token_study, data, token) -> Iterator[str]:
    """Token-auth server with the study's shipped limits."""
    require_tool("nginx")
    study, python = token_study
    with study_server(python, study, data["root"], auth_env={"DATA_TOKEN": token}) as url:
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def raw_get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A request with the path sent byte for byte (requests would normalise `..`)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def assert_cors(response: requests.Response) -> None:
    for header in CORS:
        assert header in response.headers, f"{response.status_code} {response.url} lacks {header}"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# ---------------------------------------------------------------- configuration checks


def envsubst_render(template: Path, variables: dict[str, str]) -> str:
    """Render like the official image: envsubst limited to the defined STUDY_* variables.

    envsubst comes with Debian's gettext-base, which minimal systems lack; there the same
    substitution (`${NAME}` of the listed names only, anything else untouched) is done here."""
    envsubst = shutil.which("envsubst")
    if envsubst is None:
        text = template.read_text()
        for name, value in variables.items():
            text = text.replace(f"${{{name}}}", value)
        return text
    env = {"PATH": os.environ["PATH"], **variables}
    shell_format = " ".join(f"${{{name}}}" for name in variables)
    return subprocess.run(
        [envsubst, shell_format], input=template.read_text(), env=env, capture_output=True, text=True, check=True
    ).stdout


def token_script(study: Path, rendered: str, token: str, where: Path) -> str:
    """What the study's /docker-entrypoint.d script makes of the rendered config: the token from
    the compose secret (a file) in place of ${STUDY_TOKEN}."""
    conf_dir, secret = where / "entrypoint-conf.d", where / "data_token"
    conf_dir.mkdir()
    (conf_dir / "study.conf").write_text(rendered)
    secret.write_text(token + "\n")
    env = {"STUDY_TOKEN_FILE": str(secret), "NGINX_ENVSUBST_OUTPUT_DIR": str(conf_dir)}
    run(["sh", study / "storage" / "nginx" / "entrypoint" / "25-study-token.sh"], env=env)
    return (conf_dir / "study.conf").read_text()


def image_like_prefix(where: Path, rendered: str) -> Path:
    """A prefix laid out like the image: main nginx.conf including conf.d/*.conf in http {}."""
    (where / "conf.d").mkdir(parents=True)
    (where / "conf.d" / "study.conf").write_text(rendered)
    (where / "nginx.conf").write_text(
        f"worker_processes auto;\nworker_rlimit_nofile 2048;\npid {where}/nginx.pid;\n"
        "events { worker_connections 1024; }\nhttp {\n"
        + "".join(f"    {n}_temp_path {where}/{n};\n" for n in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + "    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n"
        f"    sendfile on;\n    keepalive_timeout 65;\n    include {where}/conf.d/*.conf;\n}}\n"
    )
    return where / "nginx.conf"


def docker_vars(auth: str, where: Path, study: Path) -> dict[str, str]:
    """STUDY_* values as in the container, with paths that exist on this machine and the
    limits of the study's study.toml (compose's defaults; test_compose checks they agree)."""
    data = where / "srv-zarr"
    data.mkdir(parents=True, exist_ok=True)
    server = tomllib.loads((study / "study.toml").read_text())["server"]
    values = {**DOCKER_VARS, "STUDY_LISTEN": "127.0.0.1:8080", "STUDY_DATA_ROOT": str(data),
              "STUDY_TLS_DIR": str(where / "no-tls"), "STUDY_LIMIT_RATE": server["limit_rate"],
              "STUDY_REQUESTS_PER_SECOND": str(server["requests_per_second"]),
              "STUDY_BURST": str(server["burst"])}  # fmt: skip
    if auth == "token":
        values["STUDY_TOKEN"] = secrets.token_urlsafe(24)
    elif auth == "basic":
        htpasswd = where / "htpasswd"
        htpasswd.write_text("user:{PLAIN}password\n")
        values["STUDY_HTPASSWD"] = str(htpasswd)
    return values


def gixy_findings(gixy: str, conf: Path) -> list[dict]:
    """gixy's findings above low severity. Filtered here: gixy-ng 0.2.59's own `-ll` also
    drops medium findings such as add_header_redefinition."""
    report = run([gixy, "--format", "json", conf], check=False)
    assert report.returncode in (0, 1) and report.stdout.strip(), report.stdout + report.stderr
    findings = [f for f in json.loads(report.stdout) if f["severity"].upper() not in ("LOW", "UNSPECIFIED")]
    print(json.dumps(findings, indent=1))
    return findings


@pytest.mark.parametrize("auth", ["token", "basic", "none"])
def test_rendered_config_passes_nginx_t_and_gixy(auth: str, token_study, basic_study, none_study,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """Both renderers (the image's envsubst, `serve`) give the same config; nginx -t accepts
    it and gixy finds nothing above low severity."""
    nginx, gixy = require_tool("nginx"), require_tool("gixy")
    study, python = {"token": token_study, "basic": basic_study, "none": none_study}[auth]
    (template,) = (study / "storage" / "nginx" / "templates").glob("*.template")
    assert f"# study-auth: {auth}\n" in template.read_text()
    variables = docker_vars(auth, tmp_path, study)
    rendered = envsubst_render(template, {k: v for k, v in variables.items() if k != "STUDY_TOKEN"})
    if auth == "token":  # in the container the token comes from the secret, by the study's start-up script
        rendered = token_script(study, rendered, variables["STUDY_TOKEN"], tmp_path)
    assert "${STUDY_" not in rendered and "$uri" in rendered and "$binary_remote_addr" in rendered
    conf = image_like_prefix(tmp_path / "image", rendered)
    run([nginx, "-e", "stderr", "-p", tmp_path / "image", "-c", conf, "-t", "-q"])

    # serve's renderer on the same values gives the same file
    script = (
        "import sys; from pathlib import Path\n"
        "from labzarr.serve import render\n"
        "print(render(Path(sys.argv[1]).read_text(), dict(a.split('=', 1) for a in sys.argv[2:])), end='')\n"
    )
    by_serve = run([python, "-c", script, template, *(f"{k}={v}" for k, v in variables.items())], cwd=study)
    assert by_serve.stdout == rendered

    assert not gixy_findings(gixy, conf), "gixy findings above low severity"


def test_gixy_would_catch_a_header_dropping_location(token_study, tmp_path: Path) -> None:
    """The gixy check can fail: an add_header inside a location (dropping the CORS headers)."""
    gixy = require_tool("gixy")
    study, _ = token_study
    (template,) = (study / "storage" / "nginx" / "templates").glob("*.template")
    last_location = "        try_files $uri =404;\n    }\n}"
    rendered = envsubst_render(template, docker_vars("token", tmp_path, study))
    bad = rendered.replace(last_location, '        add_header X-Bad "1";\n' + last_location)
    assert 'X-Bad "1"' in bad
    findings = gixy_findings(gixy, image_like_prefix(tmp_path / "bad", bad))
    assert [f["plugin"] for f in findings] == ["add_header_redefinition"]


def test_tls_profile_config_passes_nginx_t(token_study, tmp_path: Path) -> None:
    """The tls profile's file, included from STUDY_TLS_DIR with a certificate, is valid."""
    nginx, openssl = require_tool("nginx"), require_tool("openssl")
    study, _ = token_study
    prefix = tmp_path / "image"
    tls_dir = prefix / "study-tls"  # the tls.conf paths are relative to the nginx.conf folder
    tls_dir.mkdir(parents=True)
    shutil.copy(study / "storage" / "nginx" / "tls" / "tls.conf", tls_dir / "tls.conf")
    run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", tls_dir / "privkey.pem", "-out", tls_dir / "fullchain.pem"])  # fmt: skip
    (template,) = (study / "storage" / "nginx" / "templates").glob("*.template")
    variables = {**docker_vars("token", tmp_path, study), "STUDY_TLS_DIR": str(tls_dir)}
    conf = image_like_prefix(prefix, envsubst_render(template, variables))
    run([nginx, "-e", "stderr", "-p", prefix, "-c", conf, "-t", "-q"])
    (tls_dir / "privkey.pem").unlink()
    missing = run([nginx, "-e", "stderr", "-p", prefix, "-c", conf, "-t", "-q"], check=False)
    assert missing.returncode != 0 and "privkey.pem" in missing.stderr


# ---------------------------------------------------------------- the token server


def test_healthz_is_open(srv: str) -> None:
    response = requests.get(f"{srv}/healthz", timeout=5)
    assert response.status_code == 200 and response.text == "ok\n"


@pytest.mark.parametrize(
    "path",
    [f"{V2}/.zgroup", f"{V2}/.zattrs", f"{V2}/.zmetadata", f"{V2}/x/.zarray", f"{V2}/x/.zattrs",
     f"{V2}/manifest.json", f"{V3}/zarr.json", f"{V3}/x/zarr.json", f"{V3}/manifest.json"],
)  # fmt: skip
def test_metadata_is_served_as_json(srv: str, data: dict, token: str, path: str) -> None:
    response = requests.get(f"{srv}/{path}", headers=bearer(token), timeout=5)
    assert response.status_code == 200, path
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == json.loads((data["root"] / path).read_text())
    assert response.headers["Cache-Control"] == "no-cache" and "ETag" in response.headers
    assert_cors(response)


@pytest.mark.parametrize(
    "path",
    ["/.htpasswd", "/.env", "/.git/config", "/.git/", f"/{STORE}/.tmp-test.zarr/.zarray",
     f"/{STORE}/.tmp-test.zarr/zarr.json", f"/{V2}/../.env", "/.zarray/../.env"],
)  # fmt: skip
def test_other_dotfiles_are_404_even_with_credentials(srv: str, token: str, path: str) -> None:
    status, body = raw_get(srv, path, bearer(token))
    assert status == 404, path
    assert SECRET.encode() not in body


@pytest.mark.parametrize(
    "path",
    ["/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", f"/{STORE}/..%2f..%2f..%2f..%2fetc/passwd",
     "/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/..%5c..%5cetc/passwd", "/../outside/secret.json",
     "/%2e%2e/outside/secret.json"],
)  # fmt: skip
def test_traversal_is_refused(srv: str, token: str, path: str) -> None:
    status, body = raw_get(srv, path, bearer(token))
    assert status in (400, 403, 404), (path, status)
    assert b"root:" not in body and SECRET.encode() not in body


@pytest.mark.parametrize("path", ["/escape.json", "/escape_dir/secret.json"])
def test_symlinks_out_of_the_root_are_refused(srv: str, data: dict, token: str, path: str) -> None:
    assert (data["root"] / path.lstrip("/")).read_text(), "the symlink itself resolves on disk"
    status, body = raw_get(srv, path, bearer(token))
    assert status in (403, 404), (path, status)
    assert SECRET.encode() not in body


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH", "PROPFIND"])
@pytest.mark.parametrize("with_credentials", [True, False])
def test_write_methods_are_405(srv: str, token: str, method: str, with_credentials: bool) -> None:
    headers = bearer(token) if with_credentials else {}
    response = requests.request(method, f"{srv}/{V2}/.zgroup", headers=headers, data=b"{}", timeout=5)
    assert response.status_code == 405
    assert_cors(response)


def test_preflight_is_204_with_cors_and_needs_no_credentials(srv: str) -> None:
    response = requests.options(
        f"{srv}/{V2}/.zmetadata",
        headers={"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization, range"},
        timeout=5,
    )  # fmt: skip
    assert response.status_code == 204
    assert_cors(response)
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "range" in allowed
    assert "GET" in response.headers["Access-Control-Allow-Methods"]


def test_errors_carry_cors_headers(srv: str, token: str) -> None:
    missing = requests.get(f"{srv}/{V2}/nope", headers=bearer(token), timeout=5)
    assert missing.status_code == 404
    assert_cors(missing)
    unauthorized = requests.get(f"{srv}/{V2}/.zmetadata", timeout=5)
    assert unauthorized.status_code == 401
    assert_cors(unauthorized)
    assert unauthorized.headers["WWW-Authenticate"].startswith("Bearer")


def test_range_request_is_206(srv: str, data: dict, token: str) -> None:
    chunk = f"{V2}/x/0.0.0"
    expected = (data["root"] / chunk).read_bytes()
    for extra in ({}, {"Accept-Encoding": "gzip"}):  # chunks are never compressed, so Range holds
        response = requests.get(f"{srv}/{chunk}", headers={**bearer(token), "Range": "bytes=0-9", **extra}, timeout=5)
        assert response.status_code == 206
        assert response.content == expected[:10]
        assert response.headers["Content-Range"] == f"bytes 0-9/{len(expected)}"
        assert "Content-Encoding" not in response.headers


def test_json_is_compressed_and_chunks_are_not(srv: str, token: str) -> None:
    headers = {**bearer(token), "Accept-Encoding": "gzip"}
    meta = requests.get(f"{srv}/{V2}/.zmetadata", headers=headers, timeout=5)
    assert meta.headers.get("Content-Encoding") == "gzip" and meta.json()["zarr_consolidated_format"] == 1
    chunk = requests.get(f"{srv}/{V2}/x/0.0.0", headers=headers, timeout=5)
    assert chunk.status_code == 200 and "Content-Encoding" not in chunk.headers
    assert chunk.headers["Content-Type"] == "application/octet-stream"


def test_head_gives_content_length(srv: str, data: dict, token: str) -> None:
    chunk = f"{V3}/x/c/0/0/0"
    response = requests.head(f"{srv}/{chunk}", headers=bearer(token), timeout=5)
    assert response.status_code == 200 and response.content == b""
    assert int(response.headers["Content-Length"]) == (data["root"] / chunk).stat().st_size


def test_if_none_match_gives_304(srv: str, token: str) -> None:
    url = f"{srv}/{V2}/x/0.0.0"
    etag = requests.get(url, headers=bearer(token), timeout=5).headers["ETag"]
    again = requests.get(url, headers={**bearer(token), "If-None-Match": etag}, timeout=5)
    assert again.status_code == 304 and again.content == b""
    other = requests.get(url, headers={**bearer(token), "If-None-Match": '"other"'}, timeout=5)
    assert other.status_code == 200


def test_folders_are_not_listed(srv: str, token: str) -> None:
    for path in ("/", f"/{STORE}/", f"/{V2}/", f"/{V2}"):
        assert requests.get(f"{srv}{path}", headers=bearer(token), timeout=5).status_code == 404, path


def test_every_path_needs_the_right_token(srv: str, data: dict, token: str) -> None:
    paths = store_files(data["root"])
    assert any(p.endswith("/.zarray") for p in paths) and any(p.endswith("zarr.json") for p in paths)
    assert len(paths) > 20
    wrong = [{}, bearer("x" * len(token)), bearer(token.swapcase()), bearer(token + "x"),
             {"Authorization": f"Basic {token}"}, {"Authorization": token}]  # fmt: skip
    with requests.Session() as session:
        for path in paths:
            for headers in wrong:
                response = session.get(f"{srv}/{path}", headers=headers, timeout=5)
                assert response.status_code == 401, (path, headers)
                assert response.content.find(b"zarr") < 0
            assert session.get(f"{srv}/{path}", headers=bearer(token), timeout=5).status_code == 200, path


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR", "Bearer "])
def test_the_bearer_scheme_is_case_insensitive(srv: str, token: str, scheme: str) -> None:
    """RFC 7235: the auth scheme is case-insensitive, and one or more spaces follow it."""
    assert raw_get(srv, f"/{V2}/.zgroup", {"Authorization": f"{scheme} {token}"})[0] == 200


@pytest.mark.parametrize(
    "value",
    ["bearer {swapcase}", "Bearer{token}", "Bearer\t{token}", "bearer {token} x", "bearer {token}x",
     "xbearer {token}", "bearer", "Token {token}"],
)  # fmt: skip
def test_the_token_itself_is_compared_exactly(srv: str, token: str, value: str) -> None:
    header = value.format(token=token, swapcase=token.swapcase())
    assert raw_get(srv, f"/{V2}/.zgroup", {"Authorization": header})[0] == 401, header


# ---------------------------------------------------------------- default limits, xarray


def open_remote(url: str, headers: dict[str, str]) -> xr.Dataset:
    mapper = fsspec.get_mapper(url, headers=headers)
    return xr.open_zarr(mapper, consolidated=True)


@pytest.mark.parametrize("store", [V2, V3])
def test_xarray_reads_exactly_the_stored_values(srv_default: str, data: dict, token: str, store: str) -> None:
    """Through fsspec's HTTP mapper, with the shipped rate limit (a normal read is not limited)."""
    remote = open_remote(f"{srv_default}/{store}", bearer(token)).load()
    xr.testing.assert_identical(remote.drop_encoding(), data["datasets"][store])
    with pytest.raises(Exception, match="401"):
        open_remote(f"{srv_default}/{store}", bearer("wrong" * 5)).load()


def files_on_disk(root: Path, store: str) -> list[str]:
    """Every file of a store as URL paths: what a reader of the whole store requests."""
    return sorted(str(p.relative_to(root)) for p in (root / store).rglob("*") if p.is_file())


def test_one_sequential_reader_of_every_file_is_never_refused(srv_default: str, data: dict, token: str) -> None:
    """As fast as a plain client goes (one keep-alive connection, no think time): the shipped
    limits pace it, they never answer 429 (before: 429 for most of these requests)."""
    files = files_on_disk(data["root"], MANY)
    assert len(files) > 200  # enough that the former limits (burst 50 nodelay) refused most
    parts = urlsplit(srv_default)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    statuses = []
    try:
        for path in files:
            conn.request("GET", f"/{path}", headers=bearer(token))
            response = conn.getresponse()
            body = response.read()
            statuses.append(response.status)
            assert response.status != 200 or body == (data["root"] / path).read_bytes(), path
    finally:
        conn.close()
    assert statuses == [200] * len(files), {s: statuses.count(s) for s in set(statuses)}


def read_like_the_post(url: str, token: str) -> xr.Dataset:
    """The original post's client, verbatim but for the URL and token: no retries."""
    fs = HTTPFileSystem(headers={"Authorization": f"Bearer {token}"})
    return xr.open_zarr(fs.get_mapper(url), consolidated=True).load()


def test_four_concurrent_full_reads_with_the_original_posts_client(srv_default: str, data: dict, token: str) -> None:
    """Four readers at once (four notebooks behind one address; threads, each with its own
    filesystem and HTTP session) read the whole store with the post's code: every one
    succeeds with exact data (before: all four failed with 429 here)."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reads = [pool.submit(read_like_the_post, f"{srv_default}/{MANY}", token) for _ in range(4)]
        concurrent.futures.wait(reads)
    failed = [f"{type(e).__name__}: {e}" for read in reads if (e := read.exception())]
    assert not failed, f"{len(failed)} of 4 readers failed: {failed}"
    for read in reads:
        xr.testing.assert_identical(read.result().drop_encoding(), data["datasets"][MANY])


THIRTY_TWO_READERS = """
import concurrent.futures, json, sys
import xarray as xr
from labzarr.remote import StoreSource, connect

url, token, local = sys.argv[1:4]
expected = xr.open_zarr(local, consolidated=True).load()


def read(_: int) -> None:
    with connect(StoreSource.resolve(url.rsplit("/", 1)[0], dataset_name=url.rsplit("/", 1)[1].removesuffix(".zarr"),
                                     token=token)) as remote:  # its own session, retries and checks
        xr.testing.assert_identical(remote.open_dataset().load(), expected)


with concurrent.futures.ThreadPoolExecutor(32) as pool:
    reads = [pool.submit(read, i) for i in range(32)]
print(json.dumps([f"{type(e).__name__}: {e}" for r in reads if (e := r.exception())]))
"""


def test_thirty_two_concurrent_readers_with_the_studys_reader_get_exact_data(
    token_study, fast_store: tuple[Path, Path], token: str
) -> None:
    """A classroom behind one address: 32 readers at once, each with the study's own reader
    (retries, manifest and checksums), read the ETL's whole store through the shipped limits."""
    require_tool("nginx")
    study, python = token_study
    _, data = fast_store
    (store,) = [p for p in data.iterdir() if p.suffix == ".zarr"]
    script = THIRTY_TWO_READERS.replace("{package}", study_package(study))
    with study_server(python, study, data, auth_env={"DATA_TOKEN": token}) as url:
        done = run([python, "-c", script, f"{url}/{store.name}", token, store], cwd=data, timeout=600)
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failed, f"{len(failed)} of 32 readers failed: {failed[:3]}"


async def runaway(url: str, path: str, headers: dict[str, str], n: int) -> list[tuple[int, dict[str, str]]]:
    """n requests at once, one per connection (opened first, so the requests arrive together):
    (status, headers) of each answer."""
    parts = urlsplit(url)
    request = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()  # fmt: skip
    connections = [await asyncio.open_connection(parts.hostname, parts.port) for _ in range(n)]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, dict[str, str]]:
        writer.write(request)
        head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        writer.close()
        return int(head[0].split()[1]), dict(line.split(": ", 1) for line in head[1:] if line)

    return await asyncio.gather(*(answer(r, w) for r, w in connections))


def test_a_runaway_client_gets_429_with_retry_after(token_study, data: dict, token: str) -> None:
    """The knob still protects: a client with three times `server.burst` requests in flight
    from one address gets 429 with Retry-After for those beyond the queue; the queue itself
    (burst + 1, whatever the timing) is served. Refusals are not logged at warn or above."""
    require_tool("nginx")
    study, python = token_study
    burst = tomllib.loads((study / "study.toml").read_text())["server"]["burst"]
    # serve's nginx takes 2 x 1024 connections, and a process often may open 1024 files.
    assert 3 * burst <= 900, f"server.burst = {burst}: too many connections for this test; lower its fan-out"
    stderr: list[str] = []
    # A server of its own: its per-address bucket starts empty, whatever ran before.
    with study_server(python, study, data["root"], auth_env={"DATA_TOKEN": token}, stderr=stderr) as url:
        answers = asyncio.run(runaway(url, f"/{V2}/.zgroup", bearer(token), 3 * burst))
        assert requests.get(f"{url}/{V2}/.zgroup", headers=bearer(token), timeout=30).status_code == 200
    statuses = [status for status, _ in answers]
    counts = {s: statuses.count(s) for s in set(statuses)}
    assert set(statuses) <= {200, 429}, counts
    assert counts.get(200, 0) >= burst + 1 and counts.get(429, 0) > 0, counts
    for status, headers in answers:
        assert headers.get("Retry-After") == ("1" if status == 429 else None), (status, headers)
        assert headers.get("Access-Control-Allow-Origin") == "*", (status, headers)
    logged = [line for line in stderr if "limiting requests" in line or "delaying request" in line]
    assert not logged, f"limit_req logs at warn or above: {logged[:3]}"


# ---------------------------------------------------------------- limit_rate


def test_limit_rate_slows_reading(token_study, data: dict, token: str, srv_default: str) -> None:
    """300 kB at 100 kB/s: nginx sends the first second's worth at once, the rest is paced,
    so it cannot take less than about 2 s; the unlimited server is the baseline."""
    study, python = token_study
    url_path = "/big.bin"
    size = (data["root"] / "big.bin").stat().st_size

    def timed(base: str) -> float:
        start = time.perf_counter()
        response = requests.get(f"{base}{url_path}", headers=bearer(token), timeout=30)
        assert response.status_code == 200 and len(response.content) == size
        return time.perf_counter() - start

    baseline = timed(srv_default)
    with study_server(python, study, data["root"], auth_env={"DATA_TOKEN": token}, limit_rate="100k") as slow:
        limited = timed(slow)
    print(f"\nlimit_rate 100k: {size / 1e3:.0f} kB in {limited:.2f} s vs {baseline * 1e3:.1f} ms unlimited "
          f"(x{limited / baseline:.0f} slower)")  # fmt: skip
    assert limited >= 1.5, limited  # a lower bound set by the cap, not a speed goal
    assert limited > 10 * baseline


# ---------------------------------------------------------------- basic and none


def test_basic_auth_on_every_path(basic_study, data: dict, tmp_path: Path) -> None:
    require_tool("nginx")
    study, python = basic_study
    config = config_copy(study, tmp_path / "norate", requests_per_second=100_000, burst=10_000)
    user, password = "reader", secrets.token_urlsafe(12)
    good = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}x".encode()).decode()}
    env = {"DATA_USER": user, "DATA_PASSWORD": password, "STUDY_CONFIG": str(config)}
    with study_server(python, study, data["root"], auth_env=env) as url:
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        for path in store_files(data["root"])[:40]:
            for headers in ({}, bad):
                response = requests.get(f"{url}/{path}", headers=headers, timeout=5)
                assert response.status_code == 401, path
                assert response.headers["WWW-Authenticate"].startswith("Basic")
                assert_cors(response)
            assert requests.get(f"{url}/{path}", headers=good, timeout=5).status_code == 200, path
        assert requests.options(f"{url}/{V2}/.zgroup", timeout=5).status_code == 204
        assert raw_get(url, "/.htpasswd", good)[0] == 404
        lower = {"Authorization": "basic " + good["Authorization"].split(" ", 1)[1]}  # RFC 7235
        assert requests.get(f"{url}/{V2}/.zgroup", headers=lower, timeout=5).status_code == 200
        remote = open_remote(f"{url}/{V3}", good).load()
        xr.testing.assert_identical(remote.drop_encoding(), data["datasets"][V3])


def test_basic_auth_with_an_htpasswd_made_as_the_readme_says(basic_study, data: dict, tmp_path: Path) -> None:
    """storage/README.md makes the Docker htpasswd with `openssl passwd -6` (SHA-512 crypt)."""
    require_tool("nginx")
    openssl = require_tool("openssl")
    study, python = basic_study
    readme = (study / "storage" / "README.md").read_text()
    assert "openssl passwd -6" in readme
    password = secrets.token_urlsafe(12)
    digest = subprocess.run(
        [openssl, "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True
    ).stdout.strip()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"lab:{digest}\n")
    good = {"Authorization": "Basic " + base64.b64encode(f"lab:{password}".encode()).decode()}
    with study_server(python, study, data["root"], auth_env={"DATA_HTPASSWD_FILE": str(htpasswd)}) as url:
        assert requests.get(f"{url}/{V2}/.zgroup", headers=good, timeout=5).status_code == 200
        assert requests.get(f"{url}/{V2}/.zgroup", timeout=5).status_code == 401


def test_no_auth_serves_data_and_still_hides_dotfiles(none_study, data: dict) -> None:
    require_tool("nginx")
    study, python = none_study
    with study_server(python, study, data["root"], auth_env={}) as url:
        response = requests.get(f"{url}/{V2}/.zmetadata", timeout=5)
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
        assert "WWW-Authenticate" not in response.headers
        for path in ("/.env", "/.htpasswd", "/.git/config", f"/{STORE}/.tmp-test.zarr/.zarray"):
            assert raw_get(url, path)[0] == 404, path
        assert requests.delete(f"{url}/{V2}/.zgroup", timeout=5).status_code == 405
        xr.testing.assert_identical(open_remote(f"{url}/{V2}", {}).load().drop_encoding(), data["datasets"][V2])


def test_serve_listens_on_server_port_unless_told_otherwise(token_study, data: dict, token: str,
                                                            tmp_path: Path) -> None:  # fmt: skip
    """Without --port, serve uses server.port (compose's DATA_PORT counterpart)."""
    require_tool("nginx")
    study, python = token_study
    (port,) = free_ports(1)  # outside the ephemeral range: no outgoing connection takes it first
    config = config_copy(study, tmp_path / "port", port=port)
    env = {"DATA_TOKEN": token, "STUDY_CONFIG": str(config)}
    with study_server(python, study, data["root"], auth_env=env, port=None) as url:
        assert urlsplit(url).port == port
        assert requests.get(f"{url}/{V2}/.zgroup", headers=bearer(token), timeout=5).status_code == 200


def test_serve_says_which_port_is_taken_and_what_to_do(token_study, data: dict, token: str, tmp_path: Path) -> None:
    require_tool("nginx")
    study, python = token_study
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config_copy(study, tmp_path / "port", port=port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DATA_")}
        env.update(DATA_TOKEN=token, STUDY_CONFIG=str(config), PATH=f"/usr/sbin:{os.environ['PATH']}")
        result = subprocess.run([python, "-m", study_package(study), "serve", "--data", data["root"]], cwd=study,
                                env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr and "--port 0" in result.stderr
    assert str(config) in result.stderr and "Traceback" not in result.stderr and token not in result.stderr


def test_serve_refuses_to_start_without_credentials(token_study, data: dict) -> None:
    require_tool("nginx")  # checked before the credentials
    study, python = token_study
    package = study_package(study)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATA_")}
    result = subprocess.run([python, "-m", package, "serve", "--data", data["root"]], cwd=study, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "DATA_TOKEN" in result.stderr and "Traceback" not in result.stderr
    env["DATA_TOKEN"] = "short"
    result = subprocess.run([python, "-m", package, "serve", "--data", data["root"]], cwd=study, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "at least 16" in result.stderr
