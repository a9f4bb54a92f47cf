"""Reject bad answers before anything is generated.

Values enter as JSON data (never pasted into code), so a quote or brace in an
answer cannot change this script. Every message names the field, the bad value
and what is allowed. Cookiecutter removes the output folder when this exits 1.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from urllib.parse import urlsplit

ANSWERS = json.loads(
    r"""{
  "project_name": {{ cookiecutter.project_name | tojson }},
  "project_slug": {{ cookiecutter.project_slug | tojson }},
  "package_name": {{ cookiecutter.package_name | tojson }},
  "author_email": {{ cookiecutter.author_email | tojson }},
  "github_repo": {{ cookiecutter.github_repo | tojson }},
  "data_url": {{ cookiecutter.data_url | tojson }},
  "labzarr_source": {{ cookiecutter.labzarr_source | tojson }},
  "dataset_name": {{ cookiecutter.dataset_name | tojson }},
  "variables": {{ cookiecutter.variables | tojson }},
  "time_lookback": {{ cookiecutter.time_lookback | tojson }},
  "chunk_cells": {{ cookiecutter.chunk_cells | tojson }}
}"""
)

# Names a study package must not shadow: its own dependencies and common tools.
RESERVED = {
    "aiohttp", "cftime", "cookiecutter", "dask", "fsspec", "h5netcdf", "h5py",
    "matplotlib", "nbclient", "nbformat", "netcdf4", "numcodecs", "numpy",
    "pandas", "pytest", "scipy", "setuptools", "sklearn", "scikit_learn",
    "test", "tests", "torch", "tqdm", "xarray", "zarr", "pip", "hatchling",
}  # fmt: skip
TRACEBACK_NOTE = (
    "Nothing was generated. Fix the answers above and run again; the traceback cookiecutter\n"
    'prints after this ("Hook script failed") only says that this check stopped the bake.'
)
MAX_LOOKBACK = 3660  # ten years of daily steps
MAX_CHUNK_CELLS = 1_000_000


def check_name(field: str, value: str, pattern: str, allowed: str) -> list[str]:
    """Check a module-like name: pattern, keywords, stdlib and dependency clashes."""
    errors = []
    if not re.fullmatch(pattern, value):
        errors.append(f"{field}: {value!r} is not valid; allowed: {allowed}.")
        return errors
    module = value.replace("-", "_")
    if keyword.iskeyword(module):
        errors.append(f"{field}: {value!r} is a Python keyword; choose another name.")
    if module in sys.stdlib_module_names:
        errors.append(f"{field}: {value!r} shadows the standard-library module {module!r}; choose another name.")
    if module.lower() in RESERVED:
        errors.append(f"{field}: {value!r} collides with the dependency or tool {module!r}; choose another name.")
    return errors


def check_int(field: str, raw: object, low: int, high: int) -> tuple[list[str], int | None]:
    """Parse a positive integer answer within [low, high]."""
    try:
        value = int(str(raw).strip())
    except ValueError:
        return [f"{field}: {raw!r} is not an integer; allowed: a whole number from {low} to {high}."], None
    if not low <= value <= high:
        return [f"{field}: {value} is out of range; allowed: {low} to {high}."], None
    return [], value


def validate(a: dict) -> list[str]:
    """Return every problem with the answers (empty when all is well)."""
    errors: list[str] = []
    if not a["project_name"].strip():
        errors.append("project_name: the name is empty; allowed: any non-empty text.")
    errors += check_name(
        "project_slug", a["project_slug"], r"[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*",
        "lowercase letters, digits and single '_' or '-' between them, starting with a letter",
    )  # fmt: skip
    errors += check_name(
        "package_name", a["package_name"], r"[a-z][a-z0-9_]*",
        "a lowercase Python identifier (letters, digits, '_'), starting with a letter",
    )  # fmt: skip
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", a["author_email"]):
        errors.append(f"author_email: {a['author_email']!r} is not an e-mail address; allowed: name@host.domain.")
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}", a["github_repo"]):
        errors.append(
            f"github_repo: {a['github_repo']!r} is not of the form owner/repo; "
            "allowed: a GitHub owner and repository name separated by one '/', e.g. my-lab/drought-study."
        )
    url = a["data_url"]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", url):
        errors.append(f"data_url: {url!r} is not an http(s) URL; allowed: http://host[:port]/path or https://...")
    elif parts.username or parts.password:
        errors.append(
            f"data_url: {url!r} contains credentials; allowed: a URL without user:password@ "
            "(credentials come from DATA_TOKEN or DATA_USER/DATA_PASSWORD)."
        )
    elif re.search(r"[\"'`<>{}\\^|]", url):
        errors.append(f"data_url: {url!r} contains characters not allowed in a URL (quotes, braces, ...).")
    elif parts.query or parts.fragment:
        errors.append(f"data_url: {url!r} has a query or fragment; allowed: a plain base URL.")
    source = a["labzarr_source"]
    index_requirement = r"labzarr(\[[a-z0-9,]+\])?\s*([<>=!~]=?\s*[0-9][0-9.]*\s*,?\s*)*"
    git_requirement = (
        r"labzarr(\[[a-z0-9,]+\])? @ git\+https://[A-Za-z0-9./_-]+@[A-Za-z0-9._-]+#subdirectory=[A-Za-z0-9_/-]+"
    )
    if not (re.fullmatch(index_requirement, source) or re.fullmatch(git_requirement, source)):
        errors.append(
            f"labzarr_source: {source!r} is not a requirement of the library; allowed: labzarr>=1.1,<2 (a "
            "package index) or labzarr @ git+https://github.com/OWNER/REPO@TAG#subdirectory=labzarr "
            "(no credentials in the URL)."
        )
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", a["dataset_name"]):
        errors.append(
            f"dataset_name: {a['dataset_name']!r} is not valid; "
            "allowed: letters, digits and '_', starting with a letter."
        )
    variables = [v.strip() for v in a["variables"].split(",")]
    bad = [v for v in variables if not v.isidentifier() or keyword.iskeyword(v)]
    if not a["variables"].strip() or bad:
        errors.append(
            f"variables: {a['variables']!r} has invalid names {bad}; "
            "allowed: comma-separated Python identifiers, e.g. soil_moisture,snow_water_equivalent."
        )
    elif len(set(variables)) != len(variables):
        errors.append(f"variables: {a['variables']!r} repeats a name; allowed: distinct names.")
    elif len(variables) > 64:
        errors.append(f"variables: {len(variables)} variables is absurd; allowed: 1 to 64.")
    lookback_errors, _ = check_int("time_lookback", a["time_lookback"], 1, MAX_LOOKBACK)
    chunk_errors, _ = check_int("chunk_cells", a["chunk_cells"], 1, MAX_CHUNK_CELLS)
    errors += lookback_errors + chunk_errors
    return errors


if __name__ == "__main__":
    problems = validate(ANSWERS)
    if problems:
        print("ERROR: this study cannot be generated:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        # Cookiecutter (2.7.1) logs every failed hook with a traceback of its own, whatever the
        # hook does: say so, so that nobody looks for the problem there.
        print(TRACEBACK_NOTE, file=sys.stderr, flush=True)
        sys.exit(1)
