"""`labzarr.serve`: template rendering, credentials, settings, and a real nginx when the host has one.

The study folder (`ServeSettings.root`) is a temporary one holding a plain template in the layout
of a baked study's (`write_serve_root` in conftest.py); the study's own template is served by its
own tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from labzarr import serve
from labzarr.serve import ServeError, ServeSettings, check_token, htpasswd_line, render, serving
from labzarr.testing.fixtures import readable_by_nginx_workers

AUTHS = ("token", "basic", "none")
TOKEN = "test-token-0123456789"


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


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("a b", "is not an address or host name"),
        ("no-such-host.invalid", "is not an address of this machine"),
        ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: nobody's interface
    ],
)
def test_a_host_this_machine_cannot_listen_on_is_one_clear_error(
    serve_root: Callable[..., Path], tmp_path: Path, host: str, message: str
) -> None:
    settings = ServeSettings(root=serve_root("none"), auth="none")
    for port in (0, 8080):  # a free port is looked for on that host first
        with (
            pytest.raises(ServeError, match=f"--host {host!r} {message}"),
            serving(settings, tmp_path, host=host, port=port),
        ):
            pass


def test_missing_nginx_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(ServeError, match=r"(?s)package 'nginx'.*apt-get install -y nginx"):
        serve.find_nginx()


def test_credentials_are_required_for_the_auth_mode(
    serve_root: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATA_TOKEN", "DATA_USER", "DATA_PASSWORD", "DATA_TOKEN_FILE", "DATA_HTPASSWD_FILE"):
        monkeypatch.delenv(name, raising=False)
    token = ServeSettings(root=serve_root("token"), auth="token")
    with pytest.raises(ServeError, match="set DATA_TOKEN"):
        serve.auth_variables(token, tmp_path)
    monkeypatch.setenv("DATA_TOKEN", "t" * 20)
    assert serve.auth_variables(token, tmp_path) == {"STUDY_TOKEN": "t" * 20}
    basic = ServeSettings(root=serve_root("basic"), auth="basic")
    monkeypatch.setenv("DATA_USER", "reader")
    with pytest.raises(ServeError, match="both DATA_USER and DATA_PASSWORD"):
        serve.auth_variables(basic, tmp_path)
    monkeypatch.setenv("DATA_PASSWORD", "pw")
    htpasswd = Path(serve.auth_variables(basic, tmp_path)["STUDY_HTPASSWD"])
    assert htpasswd.read_text().startswith("reader:{SSHA}") and htpasswd.stat().st_mode & 0o077 == 0
    assert serve.auth_variables(ServeSettings(root=tmp_path, auth="none"), tmp_path) == {}


def test_credentials_fall_back_to_the_named_file_then_the_study_secrets(
    serve_root: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATA_TOKEN", "DATA_USER", "DATA_PASSWORD", "DATA_TOKEN_FILE", "DATA_HTPASSWD_FILE"):
        monkeypatch.delenv(name, raising=False)
    secret = "s" * 24
    token = ServeSettings(root=serve_root("token", token=secret), auth="token")
    assert serve.auth_variables(token, tmp_path) == {"STUDY_TOKEN": secret}  # storage/secrets/token
    named = tmp_path / "my-token"
    named.write_text("n" * 24 + "\n")
    monkeypatch.setenv("DATA_TOKEN_FILE", str(named))
    assert serve.auth_variables(token, tmp_path) == {"STUDY_TOKEN": "n" * 24}
    monkeypatch.setenv("DATA_TOKEN_FILE", str(tmp_path / "nowhere"))
    with pytest.raises(ServeError, match=r"DATA_TOKEN_FILE=.*does not point to a file"):
        serve.auth_variables(token, tmp_path)
    named.write_text("short")
    monkeypatch.setenv("DATA_TOKEN_FILE", str(named))
    with pytest.raises(ServeError, match=f"{named}: the token has 5 characters"):
        serve.auth_variables(token, tmp_path)

    root = serve_root("basic", htpasswd=htpasswd_line("reader", "pw"))
    basic = ServeSettings(root=root, auth="basic")
    found = serve.auth_variables(basic, tmp_path)["STUDY_HTPASSWD"]
    assert found == str((root / serve.SECRETS_DIR / "htpasswd").resolve())
    (root / serve.SECRETS_DIR / "htpasswd").unlink()
    with pytest.raises(ServeError, match="set DATA_USER and DATA_PASSWORD"):
        serve.auth_variables(basic, tmp_path)


def test_template_and_settings_must_agree_on_auth(serve_root: Callable[..., Path], tmp_path: Path) -> None:
    root = serve_root("token")
    assert [p.name for p in serve.templates(ServeSettings(root=root, auth="token"))] == [
        "study.conf.template"
    ]
    for other in ("basic", "none"):
        with pytest.raises(
            ServeError, match=r"generated for auth 'token' but my\.toml.*regenerate the study"
        ):
            serve.templates(ServeSettings(root=root, auth=other, source="my.toml"))
    with pytest.raises(ServeError, match="no nginx templates in"):
        serve.templates(ServeSettings(root=tmp_path / "empty", auth="token"))


def test_write_config_renders_every_setting(
    serve_root: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_TOKEN", TOKEN)
    settings = ServeSettings(
        root=serve_root("token"), auth="token", limit_rate="2m", requests_per_second=7, burst=9
    )
    data = tmp_path / "data"
    data.mkdir()
    readable_by_nginx_workers(data)
    main = serve.write_config(settings, tmp_path / "prefix", listen="127.0.0.1:8123", data_dir=data)
    assert f"include {tmp_path / 'prefix' / 'conf.d'}/*.conf;" in main.read_text()
    conf = (tmp_path / "prefix" / "conf.d" / "study.conf").read_text()
    assert "${STUDY_" not in conf
    for line in (
        "listen 127.0.0.1:8123;",
        f'root "{data}";',
        "limit_rate 2m;",
        "rate=7r/s;",
        "burst=9;",
        f'"{TOKEN}"',
        f"include {tmp_path / 'prefix' / 'tls'}/*.conf;",
    ):
        assert line in conf, line
    again = serve.write_config(
        settings, tmp_path / "again", listen="127.0.0.1:8123", data_dir=data, limit_rate="512k"
    )
    assert "limit_rate 512k;" in (again.parent / "conf.d" / "study.conf").read_text()
    with pytest.raises(ServeError, match="limit_rate = '2 MB' is not an nginx size"):
        serve.write_config(settings, tmp_path / "bad", listen="8123", data_dir=data, limit_rate="2 MB")
    with pytest.raises(ServeError, match="contains a quote"):
        serve.write_config(settings, tmp_path / "bad", listen="8123", data_dir=tmp_path / "a b")


def credentials(auth: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Set the environment for `auth`; return the headers a client sends."""
    if auth == "token":
        monkeypatch.setenv("DATA_TOKEN", TOKEN)
        return {"Authorization": f"Bearer {TOKEN}"}
    if auth == "basic":
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


def require_nginx() -> None:
    if shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin") is None and shutil.which("nginx") is None:
        message = "nginx is not installed (sudo apt-get install -y nginx)"
        if os.environ.get("STUDY_REQUIRE_ALL") == "1":  # CI: a missing server is a failure
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.nginx
@pytest.mark.parametrize("auth", AUTHS)
def test_serving_a_folder_with_the_real_nginx(
    auth: str, serve_root: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_nginx()
    headers = credentials(auth, monkeypatch)
    settings = ServeSettings(root=serve_root(auth), auth=auth)
    data = tmp_path / "data"
    (data / "s.zarr").mkdir(parents=True)
    (data / "s.zarr" / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (data / ".env").write_text("secret")
    readable_by_nginx_workers(data)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with serving(settings, data) as url:
        nginx = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert nginx and url.startswith("http://127.0.0.1:")
        assert get(f"{url}/healthz", {}) == 200
        assert get(f"{url}/s.zarr/.zgroup", headers) == 200
        assert get(f"{url}/.env", headers) == 404
        assert get(f"{url}/s.zarr/0.0", headers) == 404
        if headers:
            assert get(f"{url}/s.zarr/.zgroup", {}) == 401
        if auth == "token":
            assert get(f"{url}/s.zarr/.zgroup", {"Authorization": "Bearer not-the-token-0123"}) == 401
    gone = psutil.wait_procs(nginx, timeout=5)[1]
    assert not gone, f"nginx processes left: {gone}"


@pytest.mark.nginx
def test_serving_refuses_a_missing_folder_and_a_rejected_config(
    serve_root: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_nginx()
    root = serve_root("none")
    settings = ServeSettings(root=root, auth="none")
    with (
        pytest.raises(ServeError, match="does not exist; run the ETL first"),
        serving(settings, tmp_path / "no"),
    ):
        pass
    template = root / serve.TEMPLATE_DIR / "study.conf.template"
    template.write_text(template.read_text().replace("server_tokens off;", "no_such_directive on;"))
    with (
        pytest.raises(ServeError, match="nginx rejected the rendered configuration"),
        serving(settings, readable_by_nginx_workers(tmp_path)),
    ):
        pass


@pytest.mark.nginx
def test_nginx_workers_never_run_as_root(
    serve_root: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started as root, serve runs nginx's workers (what answers the network) as an unprivileged
    account, as the container image does; they still read the data and a root-only htpasswd."""
    require_nginx()
    if os.geteuid() != 0:
        pytest.skip("serve keeps the caller's own account when it is not root: nothing to drop")
    for name in ("DATA_USER", "DATA_PASSWORD", "DATA_HTPASSWD_FILE"):
        monkeypatch.delenv(name, raising=False)
    root = serve_root("basic", htpasswd=htpasswd_line("reader", "pw-0123"))
    (root / serve.SECRETS_DIR / "htpasswd").chmod(0o600)  # root's alone
    settings = ServeSettings(root=root, auth="basic")
    private = tmp_path / "private"  # pytest's folders are root's alone (0700)
    (private / "s.zarr").mkdir(parents=True)
    (private / "s.zarr" / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    with (
        pytest.raises(ServeError, match=r"workers run as '[\w-]+', which cannot read .*chmod o\+rx"),
        serving(settings, private),
    ):
        pass
    data = readable_by_nginx_workers(private)
    headers = {"Authorization": "Basic " + base64.b64encode(b"reader:pw-0123").decode()}
    before = {p.pid for p in psutil.Process().children()}
    with serving(settings, data) as url:
        (master,) = [p for p in psutil.Process().children() if p.pid not in before]
        assert master.uids().real == 0
        unprivileged = {
            pwd.getpwnam(name).pw_uid for name in serve.UNPRIVILEGED_USERS if serve._account(name)
        }
        # A worker forked a moment ago may not have dropped root yet (seen on a loaded machine):
        # every worker must have dropped it within a few seconds.
        deadline = time.monotonic() + 5
        while any({*w.uids()} - unprivileged for w in master.children()) and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = master.children()
        assert workers and all({*w.uids()} <= unprivileged for w in workers), [w.uids() for w in workers]
        assert get(f"{url}/s.zarr/.zgroup", headers) == 200
