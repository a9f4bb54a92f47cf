"""Serve the zarr folder with the study's own nginx configuration, without Docker.

The lab machine normally runs `docker compose up -d`; this module runs the very same
template (`storage/nginx/templates/*.template`) with the `nginx` binary of the host,
for tests, the demo and labs without Docker. It renders the templates the way the
official image does (only the study's `${STUDY_*}` variables are substituted), writes
a small main `nginx.conf` into a temporary prefix, starts nginx in the foreground and
waits until `/healthz` answers.

Once ready, `serve` prints exactly one line on stdout (tests and scripts parse it):

    Serving <data_dir> at http://<host>:<port>/

Credentials come from the environment, never from study.toml:
  - token: `DATA_TOKEN`, else the file `$DATA_TOKEN_FILE`, else `storage/secrets/token`;
  - basic: `DATA_USER` + `DATA_PASSWORD` (written to a temporary htpasswd with a salted
    SHA-1 `{SSHA}` hash, which nginx verifies itself and the standard library can make),
    else the htpasswd file `$DATA_HTPASSWD_FILE`, else `storage/secrets/htpasswd`.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import grp
import hashlib
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from .errors import StudyError

TEMPLATE_DIR = "storage/nginx/templates"
SECRETS_DIR = "storage/secrets"
NGINX_INSTALL = "sudo apt-get update && sudo apt-get install -y nginx"
# What the official image's envsubst would substitute (NGINX_ENVSUBST_FILTER=^STUDY_).
VARIABLE = re.compile(r"\$\{(STUDY_[A-Z0-9_]+)\}")
AUTH_MARKER = re.compile(r"^# study-auth: (\w+)$", re.MULTILINE)
# RFC 6750 b64token: safe inside a quoted nginx string (no quote, backslash, $ or space).
TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
MIN_TOKEN_LENGTH = 16
NGINX_SIZE = re.compile(r"\d+[kKmMgG]?")
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1
# Accounts nginx's workers run as when serve runs as root and the data belong to root: the
# official image's, Debian's nginx package's, then the traditional one.
UNPRIVILEGED_USERS = ("nginx", "www-data", "nobody")


@dataclass(frozen=True)
class ServeSettings:
    """What `serve` needs of a study: its folder (templates and secrets live under it), the
    server settings, and the config file's name for messages."""

    root: Path
    auth: str = "token"
    port: int = 8080
    limit_rate: str = "0"
    requests_per_second: int = 200
    burst: int = 200
    source: str = "study.toml"


class ServeError(StudyError):
    """The data server cannot start (nginx missing, bad credentials, bad folder...)."""


class _Stop(Exception):
    """Raised in the main thread by SIGINT/SIGTERM to leave the serving context cleanly."""


def find_nginx() -> str:
    """Path of the nginx binary, or a ServeError telling how to install it."""
    path = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if path is None:
        raise ServeError(
            "the nginx binary was not found (looked in PATH, /usr/sbin and /sbin); it comes with the "
            f"Debian/Ubuntu package 'nginx':\n    {NGINX_INSTALL}\n"
            "or serve with Docker instead: docker compose up -d (see storage/README.md)"
        )
    return path


def render(text: str, variables: Mapping[str, str], source: str = "template") -> str:
    """Substitute `${STUDY_*}` like the image's envsubst; any other `$` stays for nginx.

    A STUDY variable without a value is an error here (envsubst would leave it in place
    and nginx would fail later with a less helpful message)."""
    missing = sorted({m for m in VARIABLE.findall(text) if m not in variables})
    if missing:
        raise ServeError(f"{source}: no value for {', '.join(missing)}")
    return VARIABLE.sub(lambda m: variables[m.group(1)], text)


def check_size(value: str, what: str) -> str:
    """An nginx size such as 0, 512k, 2m (limit_rate syntax)."""
    if not NGINX_SIZE.fullmatch(value):
        raise ServeError(
            f"{what} = {value!r} is not an nginx size; allowed: a number with k, m or g, 0 = off"
        )
    return value


def check_token(token: str, source: str) -> str:
    """A bearer token nginx can compare literally, and long enough to resist guessing."""
    token = token.strip()
    if not TOKEN.fullmatch(token):
        raise ServeError(
            f"{source}: the token has characters nginx cannot compare safely; allowed: letters, digits "
            "and - . _ ~ + / (= at the end). Make one with: python3 -c "
            "'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ServeError(
            f"{source}: the token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH}, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def htpasswd_line(user: str, password: str) -> str:
    """One htpasswd line with a salted SHA-1 hash (`{SSHA}`), which nginx checks natively.

    The standard library has no bcrypt or SHA-crypt, and this file only lives in the
    temporary prefix of one `serve` run; for the long-lived file of the Docker setup,
    storage/README.md makes a SHA-512-crypt line with `openssl passwd -6`."""
    if not user or ":" in user or any(c.isspace() for c in user):
        raise ServeError(f"DATA_USER = {user!r} is not a valid user name; allowed: no ':' and no spaces")
    if not password:
        raise ServeError("DATA_PASSWORD is empty; set the password clients will send")
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return user + ":{SSHA}" + base64.b64encode(digest + salt).decode() + "\n"


def _secret_file(settings: ServeSettings, env_name: str, default_name: str) -> Path | None:
    if value := os.environ.get(env_name):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ServeError(f"{env_name}={value!r} does not point to a file")
        return path
    default = settings.root / SECRETS_DIR / default_name
    return default if default.is_file() else None


def auth_variables(settings: ServeSettings, workdir: Path) -> dict[str, str]:
    """Template variables for the credentials of `settings.auth` (may write an htpasswd)."""
    auth = settings.auth
    if auth == "none":
        return {}
    if auth == "token":
        if token := os.environ.get("DATA_TOKEN", "").strip():
            return {"STUDY_TOKEN": check_token(token, "DATA_TOKEN")}
        if path := _secret_file(settings, "DATA_TOKEN_FILE", "token"):
            return {"STUDY_TOKEN": check_token(path.read_text(), str(path))}
        raise ServeError(
            "server.auth is 'token' but no token was given: set DATA_TOKEN (or DATA_TOKEN_FILE, or write "
            f"{settings.root / SECRETS_DIR / 'token'}); see storage/README.md"
        )
    user, password = os.environ.get("DATA_USER"), os.environ.get("DATA_PASSWORD")
    if user or password:
        if not (user and password):
            raise ServeError("basic auth needs both DATA_USER and DATA_PASSWORD (only one is set)")
        path = workdir / "htpasswd"
        path.write_text(htpasswd_line(user, password))
        path.chmod(0o600)
        return {"STUDY_HTPASSWD": str(path)}
    if path := _secret_file(settings, "DATA_HTPASSWD_FILE", "htpasswd"):
        return {"STUDY_HTPASSWD": str(path.resolve())}
    raise ServeError(
        "server.auth is 'basic' but no credentials were given: set DATA_USER and DATA_PASSWORD (or "
        f"DATA_HTPASSWD_FILE, or write {settings.root / SECRETS_DIR / 'htpasswd'}); see storage/README.md"
    )


def templates(settings: ServeSettings) -> list[Path]:
    """The study's nginx templates, checked against `server.auth`."""
    folder = settings.root / TEMPLATE_DIR
    found = sorted(folder.glob("*.template"))
    if not found:
        raise ServeError(f"no nginx templates in {folder}; serve runs from a study folder (not a wheel)")
    for path in found:
        marker = AUTH_MARKER.search(path.read_text())
        if marker and marker.group(1) != settings.auth:
            raise ServeError(
                f"{path} was generated for auth {marker.group(1)!r} but {settings.source} says server.auth = "
                f"{settings.auth!r}; set server.auth back or regenerate the study with the other answer"
            )
    return found


def _quote_path(path: Path, what: str) -> str:
    text = str(path)
    if re.search(r'["\\$;{}\s]', text):
        raise ServeError(f"{what} {text!r} contains a quote, backslash, $, ;, brace or space; move it")
    return text


def _listen(host: str, port: int) -> str:
    try:
        return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ServeError(f"--host {host!r} is not an address or host name") from None
        return f"{host}:{port}"


def _client_host(host: str) -> str:
    """Where to reach a server bound to `host` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return _listen(host, 0).rsplit(":", 1)[0]


def check_host(host: str) -> str:
    """`host` if this machine can listen on it: an address of one of its interfaces, or a name
    that resolves to one; else a ServeError saying what to pass instead."""
    _listen(host, 0)  # the spelling: an address or a host name
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:  # socket.gaierror (no such name) included
            raise ServeError(
                f"--host {host!r} is not an address of this machine ({exc.strerror}); pass one of its "
                "addresses, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
            ) from None
    return host


def free_port(host: str) -> int:
    """A port the OS reports free on `host` right now (nginx cannot bind port 0 and tell us)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int, source: str) -> None:
    """Refuse, with what to do instead, a fixed port another program already listens on
    (nginx would only log a bind() error); port 0 is always free."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                reason = "is already in use (another server, or Docker's nginx?)"
            elif exc.errno == errno.EACCES:
                reason = "needs root (ports below 1024 are privileged)"
            else:
                raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            raise ServeError(
                f"port {port} on {host} {reason}; choose another with --port N or server.port in "
                f"{source}, or --port 0 for any free port"
            ) from None


def _main_conf(prefix: Path, user: str | None) -> str:
    """The main nginx.conf around the templates, like the official image's (daemon off comes from -g)."""
    tmp = prefix / "tmp"
    lines = [
        f"user {user};" if user else "",
        "worker_processes 2;",
        "worker_rlimit_nofile 2048;",
        "error_log stderr warn;",
        f"pid {prefix / 'nginx.pid'};",
        "events { worker_connections 1024; }",
        "http {",
        *(
            f"    {name}_temp_path {tmp / name};"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        ),
        "    default_type application/octet-stream;",
        "    access_log off;",
        f"    include {prefix / 'conf.d'}/*.conf;",
        "}",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def _worker_user(data_dir: Path) -> tuple[int, int, str] | None:
    """As root, the account nginx's workers run as: never root (a worker serves the network), but
    the owner of the data when it is an ordinary account (it can read them), else the first of
    UNPRIVILEGED_USERS (the container image's workers are uid 101 too). That account must be able
    to read the data folder, or serving stops saying so. None when not root: nginx keeps our user."""
    if os.geteuid() != 0:
        return None
    st = data_dir.stat()
    try:
        owner = pwd.getpwuid(st.st_uid) if st.st_uid != 0 else None
    except KeyError:  # an owner without an account: nginx's `user` takes names
        owner = None
    if owner is None:
        owner = next((found for name in UNPRIVILEGED_USERS if (found := _account(name))), None)
        if owner is None:
            raise ServeError(
                f"serve runs as root, and nginx's workers must not: none of the accounts "
                f"{', '.join(UNPRIVILEGED_USERS)} exists to run them as; run serve as an ordinary user"
            )
    group = grp.getgrgid(owner.pw_gid).gr_name
    readable = subprocess.run(["test", "-r", str(data_dir), "-a", "-x", str(data_dir)], user=owner.pw_uid,
                              group=owner.pw_gid, extra_groups=[], check=False)  # fmt: skip
    if readable.returncode != 0:
        raise ServeError(
            f"serve runs as root, so nginx's workers run as {owner.pw_name!r}, which cannot read {data_dir}; "
            f"make the folder and its parents readable to it (chmod o+rx), or run serve as the data's owner"
        )
    return owner.pw_uid, owner.pw_gid, f"{owner.pw_name} {group}"


def _account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def write_config(
    settings: ServeSettings, prefix: Path, *, listen: str, data_dir: Path, limit_rate: str | None = None
) -> Path:
    """Render the study's templates into `prefix`; returns the main nginx.conf."""
    (prefix / "conf.d").mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").mkdir(exist_ok=True)
    variables = {
        "STUDY_LISTEN": listen,
        "STUDY_DATA_ROOT": _quote_path(data_dir, "the data folder"),
        "STUDY_LIMIT_RATE": check_size(limit_rate or settings.limit_rate, "limit_rate"),
        "STUDY_REQUESTS_PER_SECOND": str(settings.requests_per_second),
        "STUDY_BURST": str(settings.burst),
        # No TLS without Docker: this folder stays empty, so the include adds nothing.
        "STUDY_TLS_DIR": _quote_path(prefix / "tls", "the temporary folder"),
        **auth_variables(settings, prefix),
    }
    worker = _worker_user(data_dir)
    if worker and "STUDY_HTPASSWD" in variables:  # the workers read it at each request: their copy
        copy = prefix / "htpasswd"
        if Path(variables["STUDY_HTPASSWD"]) != copy:
            shutil.copyfile(variables["STUDY_HTPASSWD"], copy)
            copy.chmod(0o600)
        variables["STUDY_HTPASSWD"] = str(copy)
    for template in templates(settings):
        target = prefix / "conf.d" / template.name.removesuffix(".template")
        target.write_text(render(template.read_text(), variables, str(template)))
    main = prefix / "nginx.conf"
    main.write_text(_main_conf(prefix, worker[2] if worker else None))
    if worker:  # the prefix is the workers' (temp files, the htpasswd copy)
        for path in [prefix, *prefix.rglob("*")]:
            os.chown(path, worker[0], worker[1])
    return main


def _die_with_parent() -> None:
    """In the child: ask Linux to stop nginx if the Python process dies without cleaning up."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Fast shutdown of the master (it stops its workers), then kill the group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_S)
    # Workers of a master that died or hung: the group is nginx's own (start_new_session).
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(STOP_TIMEOUT_S)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServeError(
                f"nginx exited with status {proc.returncode} before answering (see its errors above)"
            )
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise ServeError(f"nginx did not answer {url}/healthz within {timeout:.0f} s")
        time.sleep(0.05)


@contextmanager
def _running(
    settings: ServeSettings,
    data_dir: Path,
    *,
    host: str,
    port: int,
    limit_rate: str | None,
    ready_timeout: float,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start nginx, wait for /healthz, yield (url, nginx master); always stop it."""
    nginx = find_nginx()
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise ServeError(f"the data folder {data_dir} does not exist; run the ETL first or pass --data DIR")
    check_host(host)
    attempts = 1 if port else 3  # a free port can be taken between our check and nginx's bind
    for attempt in range(attempts):
        chosen = port or free_port(host)
        url = f"http://{_client_host(host)}:{chosen}"
        with tempfile.TemporaryDirectory(prefix="study-nginx-") as tmp:
            prefix = Path(tmp)
            listen = _listen(host, chosen)
            conf = write_config(settings, prefix, listen=listen, data_dir=data_dir, limit_rate=limit_rate)
            cmd = [nginx, "-e", "stderr", "-p", str(prefix), "-c", str(conf)]
            test = subprocess.run([*cmd, "-t", "-q"], capture_output=True, text=True)
            if test.returncode != 0:
                raise ServeError(f"nginx rejected the rendered configuration:\n{test.stderr.strip()}")
            check_port_free(host, port, settings.source)
            proc = subprocess.Popen(
                [*cmd, "-g", "daemon off;"], stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
            try:
                try:
                    _wait_ready(proc, url, ready_timeout)
                except ServeError:
                    if proc.poll() is not None and attempt + 1 < attempts:
                        continue  # most likely the port was taken meanwhile: try another
                    raise
                yield url, proc
                return
            finally:
                _stop(proc)


@contextmanager
def serving(
    settings: ServeSettings,
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limit_rate: str | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
) -> Iterator[str]:
    """Run nginx on `data_dir` for the duration of the block; yields the base URL
    (no trailing slash, the form of `server.url`). nginx (master and workers) and its
    temporary prefix are always gone on exit."""
    with _running(
        settings, data_dir, host=host, port=port, limit_rate=limit_rate, ready_timeout=ready_timeout
    ) as (url, _):
        yield url


def serve(
    settings: ServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    data_dir: Path,
    limit_rate: str | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (exit status 0); prints `Serving <data_dir> at <url>/` once ready.

    `port` None means `server.port` of study.toml (the port the docs and clients expect);
    0 means any free port (tests, a second server on the same machine)."""
    if port is None:
        port = settings.port
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port} is out of range; allowed: 0 (a free port) to 65535")

    def stop(signum: int, frame: object) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _running(
            settings, data_dir, host=host, port=port, limit_rate=limit_rate, ready_timeout=READY_TIMEOUT_S
        ) as (url, proc):
            print(f"Serving {Path(data_dir).resolve()} at {url}/", flush=True)
            print(f"auth: {settings.auth}; stop with Ctrl-C", file=sys.stderr, flush=True)
            status = proc.wait()
        raise ServeError(f"nginx stopped unexpectedly with status {status} (see its errors above)")
    except _Stop:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
