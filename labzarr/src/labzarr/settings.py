"""Typed TOML settings: sections declared as frozen dataclasses whose fields are `key(...)`s.

Loading checks every key against its declaration (missing, unknown, moved, mistyped and
out-of-range keys are errors that name the file, the key and what is allowed), and
`reference_markdown` documents the same declarations, so docs cannot drift. A study
declares its sections (its study.toml); the checking is the same for every study.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from .errors import StudyError


class ConfigError(StudyError, ValueError):
    """A problem with the settings file, phrased so the user knows what to change."""


def key(help: str, *, choices: tuple[Any, ...] = (), low: float | None = None,
        high: float | None = None) -> Any:  # fmt: skip
    """Declare a config key: its meaning, and optionally allowed values or bounds."""
    return field(metadata={"help": help, "choices": choices, "low": low, "high": high})


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; a missing file or bad TOML is a `ConfigError` naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def all_keys(sections: Mapping[str, type]) -> list[str]:
    """Every dotted key `section.name` of the declarations."""
    return [f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)]


def suggest(name: str, options: list[str]) -> str:
    """'did you mean ...?' for a near miss, else the allowed names."""
    close = difflib.get_close_matches(name, options, n=1)
    return f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(options)}"


def type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def check_type(value: Any, hint: Any, where: str) -> Any:
    """Check (and lightly coerce) one value against its declared type."""
    origin = typing.get_origin(hint)
    if origin is types.UnionType:
        for option in typing.get_args(hint):
            try:
                return check_type(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {type_name(hint)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {item.__name__}, got {value!r}")
        return [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def build_section(
    cls: type, table: Any, source: str, section: str, moved: Mapping[str, str] | None = None
) -> Any:
    """One section's dataclass from its TOML table, every key checked; `moved` maps the dotted
    keys of older files to what to do with them (an old file is told, not just refused)."""
    moved = moved or {}
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{section}] must be a table of keys")
    where = f"{source}: {section}"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in table:
        if f"{section}.{name}" in moved:
            raise ConfigError(f"{where}.{name}: {moved[f'{section}.{name}']}")
        if name not in fields:
            raise ConfigError(f"{where}.{name}: unknown key; {suggest(name, list(fields))}")
    values = {}
    for name, spec in fields.items():
        if name not in table:
            raise ConfigError(f"{where}.{name}: missing key ({spec.metadata['help']})")
        value = check_type(table[name], hints[name], f"{where}.{name}")
        meta = spec.metadata
        if meta["choices"] and value not in meta["choices"]:
            allowed = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{where}.{name}: {value!r} is not allowed; allowed: {allowed}")
        if meta["low"] is not None and value < meta["low"]:
            raise ConfigError(f"{where}.{name}: {value!r} is below the minimum {meta['low']}")
        if meta["high"] is not None and value > meta["high"]:
            raise ConfigError(f"{where}.{name}: {value!r} is above the maximum {meta['high']}")
        values[name] = value
    return cls(**values)


def build_sections(
    raw: Mapping[str, Any],
    sections: Mapping[str, type],
    source: str,
    moved: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every declared section built from parsed TOML; unknown and missing sections refused."""
    for name in raw:
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]; {suggest(name, list(sections))}")
    built = {}
    for name, cls in sections.items():
        if name not in raw:
            raise ConfigError(f"{source}: missing section [{name}]")
        built[name] = build_section(cls, raw[name], source, name, moved)
    return built


def reference_markdown(sections: Mapping[str, type]) -> str:
    """Markdown table of every key: the config reference of the README."""
    lines = ["| key | type | meaning | allowed |", "|---|---|---|---|"]
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            meta = spec.metadata
            kind = type_name(hints[spec.name]).replace("|", "\\|")  # a Markdown table cell
            allowed = ", ".join(f"`{c}`" for c in meta["choices"])
            if not allowed and (meta["low"] is not None or meta["high"] is not None):
                low = "" if meta["low"] is None else f"≥ {meta['low']}"
                high = "" if meta["high"] is None else f"≤ {meta['high']}"
                allowed = " and ".join(x for x in (low, high) if x)
            lines.append(f"| `{section}.{spec.name}` | {kind} | {meta['help']} | {allowed} |")
    return "\n".join(lines) + "\n"


def find_file(name: str, *, env: str, start: Path | None = None, fallbacks: Sequence[Any] = ()) -> Path:
    """The settings file: $`env`, then `name` upward from `start` (default: cwd), then the first
    existing `fallbacks` (paths or importlib.resources traversables, e.g. a copy in a wheel)."""
    if value := os.environ.get(env):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"{env}={value!r} does not point to a file")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / name).is_file():
            return folder / name
    for candidate in fallbacks:
        if candidate.is_file():
            return Path(str(candidate))
    raise ConfigError(f"no {name} found from {here} upward; run inside the study folder or set {env}")
