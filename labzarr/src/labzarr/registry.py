"""A registry of classes named in a settings file: `name -> "module:Class"` in one package.

A study picks its model by name (`train.model = "tcn"`) and passes options
(`[train.model_options]`) to the class's constructor. The registry checks those options
against the constructor without importing it: the parameters are read from the module's
source (so settings load where torch is absent, and quickly); only a signature the source
cannot tell (an inherited constructor, a default that is not a literal) imports the class.
Arguments named in `context` are filled in by the caller (e.g. the number of features),
never options.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import StudyError

SIMPLE_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class RegistryError(StudyError):
    """An unknown name, or options its constructor does not take."""


class Registry:
    """Classes of one package by name; `package` is its import name (e.g. `study.train.models`),
    `folder` how messages name it (e.g. train/models)."""

    def __init__(
        self, package: str, entries: Mapping[str, str], *, context: Sequence[str] = (), folder: str = "",
        what: str = "model", options_key: str = "[train.model_options]",
    ) -> None:  # fmt: skip
        self.package, self.entries, self.context = package, dict(entries), tuple(context)
        self.folder = folder or package.replace(".", "/")
        self.what, self.options_key = what, options_key

    def _known(self, name: str) -> str:
        if name not in self.entries:
            known = ", ".join(repr(m) for m in self.entries)
            raise RegistryError(
                f"no {self.what} {name!r}; the registry ({self.folder}/__init__.py) has {known}"
            )
        return self.entries[name]

    def cls(self, name: str) -> type:
        """The class registered as `name` (imports its module)."""
        module, _, attr = self._known(name).partition(":")
        try:
            return getattr(importlib.import_module(f"{self.package}.{module}"), attr)
        except (ImportError, AttributeError) as exc:
            raise RegistryError(
                f"{self.what} {name!r} is registered as {self.entries[name]!r} but cannot be imported "
                f"({exc}); fix its line in {self.folder}/__init__.py"
            ) from None

    def describe(self, name: str) -> str:
        """'lstm' (LSTMClassifier in train/models/lstm.py): how messages name an entry."""
        module, _, attr = self._known(name).partition(":")
        return f"{name!r} ({attr} in {self.folder}/{module}.py)"

    def _source_parameters(self, name: str) -> list[inspect.Parameter] | None:
        """The constructor's parameters read from the model module's source, without importing it;
        None when they cannot be read that way."""
        module, _, attr = self._known(name).partition(":")
        spec = importlib.util.find_spec(f"{self.package}.{module}")
        if spec is None or not (spec.origin or "").endswith(".py"):
            return None
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == attr), None)
        init = next(
            (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__") if cls else (),
            None,
        )
        if init is None:
            return None
        args, kind = init.args, inspect.Parameter
        positional = args.posonlyargs + args.args
        slots = [
            *zip(positional, [None] * (len(positional) - len(args.defaults)) + args.defaults, strict=True),
            *zip(args.kwonlyargs, args.kw_defaults, strict=True),
        ]
        params = []
        for i, (arg, default) in enumerate(slots):
            if positional and arg is positional[0]:
                continue  # self
            value = kind.empty
            if default is not None:
                try:
                    value = ast.literal_eval(default)
                except ValueError:
                    if arg.arg not in self.context:
                        return None
            annotation = ast.unparse(arg.annotation) if arg.annotation else kind.empty
            style = kind.POSITIONAL_OR_KEYWORD if i < len(positional) else kind.KEYWORD_ONLY
            params.append(kind(arg.arg, style, default=value, annotation=annotation))
        if args.kwarg:
            params.append(kind(args.kwarg.arg, kind.VAR_KEYWORD))
        return params

    def option_parameters(self, name: str) -> dict[str, inspect.Parameter] | None:
        """The constructor's parameters that are options (with its **kwargs, when it takes any);
        None when its source does not tell and the class cannot be imported here (no torch)."""
        params = self._source_parameters(name)
        if params is None:
            try:
                params = list(inspect.signature(self.cls(name)).parameters.values())
            except RegistryError:
                return None
        return {
            p.name: p
            for p in params
            if p.name not in self.context
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD)
        }

    def option_types(self, name: str) -> dict[str, type]:
        """The declared type of each option that is int, float, str or bool (what config loading
        checks values against; other annotations are not checked)."""
        types = {}
        for option, p in (self.option_parameters(name) or {}).items():
            hint = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            if hint in SIMPLE_TYPES:
                types[option] = SIMPLE_TYPES[hint]
        return types

    def accepted(self, name: str) -> str:
        """'hidden_size (default 64), ...' for messages."""
        parts = [
            p.name if p.default is p.empty else f"{p.name} (default {p.default!r})"
            for p in (self.option_parameters(name) or {}).values()
            if p.kind is not p.VAR_KEYWORD
        ]
        return ", ".join(parts) or "none"

    def check_options(self, name: str, options: dict[str, Any]) -> None:
        """Refuse option names the constructor does not take, and missing required ones."""
        params = self.option_parameters(name)
        if params is None:
            return  # checked when `train` builds the model
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for option in options:
            if option in self.context:
                raise RegistryError(
                    f"{option!r} is set by the study, not an option of {self.what} {self.describe(name)}; "
                    f"remove it from {self.options_key}"
                )
            if option not in params and not takes_any:
                close = difflib.get_close_matches(option, list(params), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise RegistryError(
                    f"{self.what} {self.describe(name)} has no option {option!r}; {hint}its options: "
                    f"{self.accepted(name)}"
                )
        for p in params.values():
            if p.default is p.empty and p.kind is not p.VAR_KEYWORD and p.name not in options:
                raise RegistryError(
                    f"{self.what} {self.describe(name)} needs option {p.name!r} in {self.options_key}; "
                    f"its options: {self.accepted(name)}"
                )

    def resolved_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Every option with its value: the given ones, the constructor's defaults for the rest
        (what a checkpoint records, so an explicit default equals an omitted one)."""
        self.check_options(name, options)
        defaults = {
            p.name: p.default
            for p in (self.option_parameters(name) or {}).values()
            if p.default is not p.empty and p.kind is not p.VAR_KEYWORD
        }
        return {**defaults, **options}

    def build(self, name: str, options: Mapping[str, Any], *args: Any, **context: Any) -> Any:
        """An instance of the class registered as `name`: `cls(*args, **options, **context)`, where
        only the `context` arguments its constructor takes are passed (e.g. time_lookback)."""
        self.check_options(name, dict(options))
        cls = self.cls(name)
        takes = inspect.signature(cls).parameters
        given = {key: value for key, value in context.items() if key in takes and value is not None}
        try:
            return cls(*args, **options, **given)
        except (TypeError, ValueError) as exc:
            raise RegistryError(
                f"{self.what} {self.describe(name)} refused its options {dict(options)!r}: {exc}"
            ) from None
