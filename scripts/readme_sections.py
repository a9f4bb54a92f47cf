"""The study README's generated sections: the command table (from cli.py) and the config
reference (from config.py).

They do not depend on the answers (the package's Python is copied, not rendered), so they are
static text in the template's README, between `<!-- NAME:start -->` and `<!-- NAME:end -->`,
inside a Jinja raw block. The bake needs no study dependency (the hooks are stdlib-only);
`python3 tasks.py docs` runs this script to rewrite the sections from a fresh bake, and the
template tests fail when they are stale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bakery import TEMPLATE, bake

TEMPLATE_README = TEMPLATE / "{{cookiecutter.project_slug}}" / "README.md"
SECTIONS = ("commands", "config-reference")
RAW_START, RAW_END = "{% raw -%}\n", "{% endraw -%}\n"  # the "-" drops the newline after each tag
GENERATE = """
import importlib, json, sys
package = sys.argv[1]
config = importlib.import_module(package + ".config")
cli = importlib.import_module(package + ".cli")
print(json.dumps({"commands": cli.commands_markdown(), "config-reference": config.reference_markdown()}))
"""


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"


def generate(study: Path, python: str | Path = sys.executable) -> dict[str, str]:
    """Each section as the baked study's own code writes it (run in `python`, which has the
    study's dependencies, with the study's src/ first on the path; leaves no __pycache__)."""
    (package,) = [p.name for p in (study / "src").iterdir() if (p / "__init__.py").is_file()]
    env = {**os.environ, "PYTHONPATH": str(study / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [str(python), "-c", GENERATE, package], cwd=study, env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode:
        raise RuntimeError(f"generating the README sections failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout)


def read(text: str) -> dict[str, str]:
    """The sections of a README: what lies between each pair of markers."""
    sections = {}
    for name in SECTIONS:
        start, end = markers(name)
        if text.count(start) != 1 or text.count(end) != 1:
            raise ValueError(f"the README must hold {start.strip()} and {end} once each")
        sections[name] = text.split(start)[1].split(end)[0]
    return sections


def write_template(text: str, sections: dict[str, str]) -> str:
    """The template README with each section replaced by `sections[name]` in a raw block, so
    the bake copies it byte for byte (whatever braces it holds)."""
    read(text)  # each pair of markers is there, once
    for name in SECTIONS:
        start, end = markers(name)
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        content = sections[name]
        if not content.endswith("\n") or RAW_END.strip() in content:
            raise ValueError(f"section {name!r} must end with a newline and hold no endraw tag")
        text = f"{head}{start}{RAW_START}{content}{RAW_END}{end}{tail}"
    return text


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        sections = generate(bake(Path(tmp)))
    old = TEMPLATE_README.read_text(encoding="utf-8")
    new = write_template(old, sections)
    name = TEMPLATE_README.relative_to(TEMPLATE)
    if new == old:
        print(f"{name}: the generated sections are up to date")
        return 0
    if check:
        print(f"{name}: the generated sections are stale; run `python3 tasks.py docs`")
        return 1
    TEMPLATE_README.write_text(new, encoding="utf-8")
    print(f"{name}: rewrote the sections {', '.join(SECTIONS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
