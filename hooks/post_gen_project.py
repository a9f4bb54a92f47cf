"""Prune what the answers made unneeded, and print the next steps.

The table below is the only place that knows which files belong to which
answer; everything else in the template is always generated.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

ANSWERS = json.loads(
    r"""{
  "auth": {{ cookiecutter.auth | tojson }},
  "license": {{ cookiecutter.license | tojson }},
  "package_name": {{ cookiecutter.package_name | tojson }},
  "project_slug": {{ cookiecutter.project_slug | tojson }}
}"""
)

# answer -> value -> paths (relative to the study root) to delete
# The storage stack's auth variants are chosen by Jinja inside compose.yaml, .env.example,
# storage/README.md and the nginx template; only the token's start-up script is a file of its
# own (TLS and the etl profile are optional at run time, not at bake time).
TOKEN_SCRIPT = "storage/nginx/entrypoint"
PRUNE: dict[str, dict[str, list[str]]] = {
    "auth": {"basic": [TOKEN_SCRIPT], "none": [TOKEN_SCRIPT]},
    "license": {"none": ["LICENSE"]},
}
# Files that are meant to be empty; any other empty file is a Jinja artefact.
KEEP_EMPTY = {"__init__.py", "py.typed", ".gitkeep"}


def prune(root: Path) -> None:
    """Delete optional parts the answers do not use, then empty leftovers."""
    for answer, table in PRUNE.items():
        for rel in table.get(ANSWERS[answer], []):
            path = root / rel
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file() and path.stat().st_size == 0 and path.name not in KEEP_EMPTY:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def write_generated_sections(root: Path) -> None:
    """Fill the README's config reference and command table from config.py and cli.py, the
    single sources of the keys and the commands."""
    sys.dont_write_bytecode = True  # leave no __pycache__ in the new study
    sys.path.insert(0, str(root / "src"))
    try:
        config = importlib.import_module(f"{ANSWERS['package_name']}.config")
        cli = importlib.import_module(f"{ANSWERS['package_name']}.cli")
    finally:
        sys.path.pop(0)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    for name, content in (("config-reference", config.reference_markdown()), ("commands", cli.commands_markdown())):
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = f"{head}{start}\n{content}{end}{tail}"
    readme.write_text(text, encoding="utf-8")


def next_steps() -> str:
    """The first commands a new study owner runs."""
    pkg = ANSWERS["package_name"]
    return f"""
Study created in ./{ANSWERS["project_slug"]}

Next steps:
  cd {ANSWERS["project_slug"]}
  git init && git add -A && git commit -m "Start study from template"
  python3 -m venv .venv && . .venv/bin/activate
  python -m pip install -U pip
  pip install torch --index-url https://download.pytorch.org/whl/cpu   # CPU torch (skip on a GPU box)
  pip install -e ".[etl,train]" --group dev && pre-commit install
  {pkg} synth            # synthetic inputs in data/raw (or put your own NetCDF there)
  {pkg} --help           # every command
  pytest                 # the study's own tests
See README.md for the lab-machine (docker compose) and Colab steps.
"""


if __name__ == "__main__":
    prune(Path.cwd())
    write_generated_sections(Path.cwd())
    print(next_steps())
