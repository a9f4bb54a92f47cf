"""The study README: its generated sections (command table, config reference) are what the baked
package's own code writes, and its first steps are the ones the bake prints, in an order that
works."""

from __future__ import annotations

import shutil
from pathlib import Path

from cookiecutter.main import cookiecutter

from readme_sections import TEMPLATE_README, generate, read, write_template

from .conftest import LOCAL_STATE, TEMPLATE, require_tool, run
from .test_update import GIT_ENV

STALE = "The study README's generated sections are stale: run `python3 tasks.py docs` and commit the README."


def test_generated_sections_are_current(baked_default: Path) -> None:
    """A new config key (or command) fails here until `python3 tasks.py docs` rewrites the
    template README's static sections from a fresh bake."""
    baked = read((baked_default / "README.md").read_text(encoding="utf-8"))
    expected = generate(baked_default)
    for name, content in expected.items():
        assert content.startswith("| ") and content.endswith("|\n"), (name, content)
        assert baked[name] == content, f"{STALE}\n--- {name} in the baked README ---\n{baked[name]}"
    assert not list(baked_default.rglob("__pycache__")), "the check must leave the baked study clean"


def test_sections_are_copied_verbatim_whatever_braces_they_hold(tmp_path: Path) -> None:
    """What `tasks.py docs` writes reaches the baked README byte for byte, even text that looks
    like Jinja (a future help string may hold braces)."""
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE, template, ignore=LOCAL_STATE)
    readme = template / TEMPLATE_README.relative_to(TEMPLATE)
    odd = {
        "commands": "| command | what it does |\n|---|---|\n| `x` | {{ not Jinja }} {% if %} {# nor this #} |\n",
        "config-reference": "| key |\n|---|\n| `a.b` | `{ plev = 85000, depth = { x = 1 } }` |\n",
    }
    readme.write_text(write_template(readme.read_text(encoding="utf-8"), odd), encoding="utf-8")
    assert write_template(readme.read_text(encoding="utf-8"), odd) == readme.read_text(encoding="utf-8")
    study = Path(cookiecutter(str(template), no_input=True, output_dir=str(tmp_path / "out")))
    assert read((study / "README.md").read_text(encoding="utf-8")) == odd


def first_steps(study: Path) -> list[str]:
    """The commands of the README's section 1, in order."""
    text = (study / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- first-steps:start -->")[1].split("<!-- first-steps:end -->")[0]
    return [line for line in block.strip().splitlines() if line.strip() and not line.startswith("```")]


def test_readme_first_steps_are_the_printed_next_steps_and_work_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    printed = run([require_tool("cookiecutter"), "--no-input", "-o", out, TEMPLATE]).stdout
    study = out / "columbia_drought_study"
    steps = first_steps(study)
    next_steps = printed.split("Next steps:\n")[1].split("\nSee README.md")[0].splitlines()
    assert [line.strip() for line in next_steps] == ["cd columbia_drought_study", *steps]
    commands = [line.split("#")[0].strip() for line in steps]
    assert commands.index("pre-commit install") > next(i for i, c in enumerate(commands) if c.startswith("git init"))
    # The steps that need no network, in the README's order: the repository, then the hooks.
    for command in commands:
        if command.startswith(("git ", "pre-commit ")):
            result = run(["sh", "-c", command], cwd=study, env=GIT_ENV, check=False)
            assert result.returncode == 0, f"{command!r} failed in README order:\n{result.stdout}{result.stderr}"
    assert (study / ".git" / "hooks" / "pre-commit").is_file()
