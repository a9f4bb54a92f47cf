"""Prune what the answers made unneeded, and print the next steps.

The table below is the only place that knows which files belong to which
answer; everything else in the template is always generated.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

ANSWERS = json.loads(
    r"""{
  "auth": {{ cookiecutter.auth | tojson }},
  "license": {{ cookiecutter.license | tojson }},
  "package_name": {{ cookiecutter.package_name | tojson }},
  "project_slug": {{ cookiecutter.project_slug | tojson }}
}"""
)
# Who renders: plain cookiecutter records the output folder, cruft the template's commit.
CONTEXT = json.loads(
    r"""{
  "_output_dir": {{ cookiecutter.get("_output_dir", "") | tojson }},
  "_commit": {{ cookiecutter.get("_commit", "") | tojson }}
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


def first_steps(root: Path) -> list[str]:
    """The setup commands of the study's README (section 1, between its first-steps markers):
    the one list of first commands, which the banner below repeats."""
    text = (root / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- first-steps:start -->", 1)[1].split("<!-- first-steps:end -->", 1)[0]
    return [line for line in block.strip().splitlines() if line.strip() and not line.startswith("```")]


def next_steps(root: Path) -> str:
    """The first commands a new study owner runs."""
    steps = "\n".join(f"  {line}" for line in [f"cd {ANSWERS['project_slug']}", *first_steps(root)])
    return f"""
Study created in ./{ANSWERS["project_slug"]}

Next steps:
{steps}
See README.md for the lab-machine (docker compose) and Colab steps.
"""


def cruft_scratch_render(root: Path) -> bool:
    """Whether cruft renders the template into a scratch folder to compute a diff (`cruft update`
    renders twice, the old and the new template version; `cruft diff` and `cruft check` too),
    rather than creating a study: no banner then. Plain cookiecutter always creates (it records
    `_output_dir`); cruft (which records `_commit` instead) creates in the folder it is given,
    and renders its scratch copies straight into a new `tempfile.TemporaryDirectory()`."""
    if CONTEXT["_output_dir"] or not CONTEXT["_commit"]:
        return False
    parent = root.resolve().parent
    scratch = parent.parent == Path(tempfile.gettempdir()).resolve()
    return scratch and re.fullmatch(r"tmp[a-z0-9_]{8}", parent.name) is not None


if __name__ == "__main__":
    prune(Path.cwd())
    if not cruft_scratch_render(Path.cwd()):
        print(next_steps(Path.cwd()))
