"""`serve`: template rendering, credentials, and a real nginx when the host has one."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from .. import serve
from ..config import Config
from ..serve import ServeError, check_token, htpasswd_line, render, serving


def test_render_substitutes_only_the_study_variables() -> None:
    text = "root ${STUDY_DATA_ROOT}; if ($uri) { } ${HOME} $STUDY_LISTEN"
    rendered = render(text, {"STUDY_DATA_ROOT": "/srv/zarr"})
    assert rendered == "root /srv/zarr; if ($uri) { } ${HOME} $STUDY_LISTEN"
    with pytest.raises(ServeError, match="no value for STUDY_BURST"):
        render("burst=${STUDY_BURST}", {})


def test_htpasswd_line_is_a_salted_sha1_nginx_can_check() -> None:
    line = htpasswd_line("reader", "s3cret")
    user, _, rest = line.strip().partition(":")
    assert user == "reader" and rest.startswith("{SSHA}")
    raw = base64.b64decode(rest.removeprefix("{SSHA}"))
    digest, salt = raw[:20], raw[20:]
    assert len(salt) == 8 and hashlib.sha1(b"s3cret" + salt).digest() == digest
    assert htpasswd_line("reader", "s3cret") != line, "a fresh salt each time"
    with pytest.raises(ServeError, match="DATA_USER"):
        htpasswd_line("a:b", "x")


def test_tokens_must_be_long_and_plain() -> None:
    assert check_token(" abcdefghijklmnop_-.~+/= \n", "t") == "abcdefghijklmnop_-.~+/="
    with pytest.raises(ServeError, match="at least 16"):
        check_token("short", "DATA_TOKEN")
    with pytest.raises(ServeError, match="characters nginx cannot compare"):
        check_token('abcdefghijklmnop"; return 200; #', "DATA_TOKEN")


def test_a_taken_port_is_refused_with_what_to_do() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=rf"port {port} on 127.0.0.1 is already in use.*--port 0"):
            serve.check_port_free("127.0.0.1", port, "study.toml")
    serve.check_port_free("127.0.0.1", port, "study.toml")  # free again
    serve.check_port_free("127.0.0.1", 0, "study.toml")  # 0: nginx is given a free port


def test_missing_nginx_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(ServeError, match=r"(?s)package 'nginx'.*apt-get install -y nginx"):
        serve.find_nginx()


def test_credentials_are_required_for_the_auth_mode(
    study_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATA_TOKEN", "DATA_USER", "DATA_PASSWORD", "DATA_TOKEN_FILE", "DATA_HTPASSWD_FILE"):
        monkeypatch.delenv(name, raising=False)
    cfg = study_config.override({"server.auth": "token"})
    monkeypatch.setattr(serve, "SECRETS_DIR", str(tmp_path / "no-secrets"))
    with pytest.raises(ServeError, match="set DATA_TOKEN"):
        serve.auth_variables(cfg, tmp_path)
    monkeypatch.setenv("DATA_TOKEN", "t" * 20)
    assert serve.auth_variables(cfg, tmp_path) == {"STUDY_TOKEN": "t" * 20}
    cfg = study_config.override({"server.auth": "basic"})
    monkeypatch.setenv("DATA_USER", "reader")
    with pytest.raises(ServeError, match="both DATA_USER and DATA_PASSWORD"):
        serve.auth_variables(cfg, tmp_path)
    monkeypatch.setenv("DATA_PASSWORD", "pw")
    htpasswd = Path(serve.auth_variables(cfg, tmp_path)["STUDY_HTPASSWD"])
    assert htpasswd.read_text().startswith("reader:{SSHA}") and htpasswd.stat().st_mode & 0o077 == 0


def test_template_and_config_must_agree_on_auth(study_config: Config) -> None:
    other = next(a for a in ("token", "basic", "none") if a != study_config.server.auth)
    with pytest.raises(ServeError, match="regenerate the study"):
        serve.templates(study_config.override({"server.auth": other}))


def credentials(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set the environment for the baked auth mode; return the headers a client sends."""
    if cfg.server.auth == "token":
        monkeypatch.setenv("DATA_TOKEN", "test-token-0123456789")
        return {"Authorization": "Bearer test-token-0123456789"}
    if cfg.server.auth == "basic":
        monkeypatch.setenv("DATA_USER", "reader")
        monkeypatch.setenv("DATA_PASSWORD", "pw-0123")
        return {"Authorization": "Basic " + base64.b64encode(b"reader:pw-0123").decode()}
    return {}


def get(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.nginx
def test_serving_a_folder_with_the_real_nginx(
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
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with serving(study_config, tmp_path) as url:
        nginx = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert nginx and url.startswith("http://127.0.0.1:")
        assert get(f"{url}/healthz", {}) == 200
        assert get(f"{url}/s.zarr/.zgroup", headers) == 200
        assert get(f"{url}/.env", headers) == 404
        if headers:
            assert get(f"{url}/s.zarr/.zgroup", {}) == 401
    gone = psutil.wait_procs(nginx, timeout=5)[1]
    assert not gone, f"nginx processes left: {gone}"
