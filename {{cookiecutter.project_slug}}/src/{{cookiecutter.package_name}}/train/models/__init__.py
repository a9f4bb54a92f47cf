"""The models `train` can build: `train.model` in study.toml picks one by name.

A model is an `nn.Module` whose constructor takes `(n_features, n_classes, **options)`
and whose `forward` maps float32 windows `(batch, time, features)` to logits
`(batch, n_classes)`. `[train.model_options]` of study.toml are its keyword
arguments: config loading checks their names (and, for int/float/str/bool
parameters, their types) against the constructor's signature, and omitted
ones take the constructor's defaults. A constructor that also takes
`time_lookback` is given etl.time_lookback (the window length); it is not an option.

To add an architecture: write a module beside these (say `gru.py` with class `GRUClassifier`),
add one line `"gru": "gru:GRUClassifier",` to MODELS, and set `model = "gru"` in study.toml.

This module imports no torch, and neither does checking options: study.toml loads without it
(in the ETL image, and every command but `train` stays quick). The constructor's parameters
are read from the model module's source; only a signature that cannot be read that way (an
inherited constructor, a default that is not a literal) imports the model, when torch is here.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import StudyError

if TYPE_CHECKING:
    from torch import nn

# name in study.toml -> "module:Class", the module in this folder (train/models/).
MODELS: dict[str, str] = {
    "lstm": "lstm:LSTMClassifier",
    "tcn": "tcn:TCN",
}

# Constructor arguments the study fills in itself: never options.
CONTEXT = ("n_features", "n_classes", "time_lookback")


class ModelError(StudyError):
    """An unknown model, or options its constructor does not take."""


def torch_available() -> bool:
    """Whether the models can be imported here (the ETL image has no torch)."""
    return importlib.util.find_spec("torch") is not None


def _known(name: str) -> str:
    if name not in MODELS:
        known = ", ".join(repr(m) for m in MODELS)
        raise ModelError(f"no model {name!r}; the registry (train/models/__init__.py) has {known}")
    return MODELS[name]


def model_class(name: str) -> type[nn.Module]:
    """The class registered as `name` (imports its module, and so torch)."""
    module, _, attr = _known(name).partition(":")
    try:
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(
            f"model {name!r} is registered as {MODELS[name]!r} but cannot be imported ({exc}); "
            "fix its line in train/models/__init__.py"
        ) from None


def describe(name: str) -> str:
    """'lstm' (LSTMClassifier in train/models/lstm.py): how messages name a model."""
    module, _, attr = _known(name).partition(":")
    return f"{name!r} ({attr} in train/models/{module}.py)"


def _source_parameters(name: str) -> list[inspect.Parameter] | None:
    """The constructor's parameters read from the model module's source, without importing it;
    None when they cannot be read that way."""
    module, _, attr = _known(name).partition(":")
    spec = importlib.util.find_spec(f"{__name__}.{module}")
    if spec is None or not (spec.origin or "").endswith(".py"):
        return None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == attr), None)
    init = next(
        (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__") if cls else (), None
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
                if arg.arg not in CONTEXT:
                    return None
        annotation = ast.unparse(arg.annotation) if arg.annotation else kind.empty
        style = kind.POSITIONAL_OR_KEYWORD if i < len(positional) else kind.KEYWORD_ONLY
        params.append(kind(arg.arg, style, default=value, annotation=annotation))
    if args.kwarg:
        params.append(kind(args.kwarg.arg, kind.VAR_KEYWORD))
    return params


def option_parameters(name: str) -> dict[str, inspect.Parameter] | None:
    """The constructor's parameters that are options (with its **kwargs, when it takes any);
    None when its source does not tell and torch is not here to import it."""
    params = _source_parameters(name)
    if params is None:
        if not torch_available():
            return None
        params = list(inspect.signature(model_class(name)).parameters.values())
    return {
        p.name: p
        for p in params
        if p.name not in CONTEXT and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD)
    }


SIMPLE_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def option_types(name: str) -> dict[str, type]:
    """The declared type of each option that is int, float, str or bool (what config loading
    checks values against; other annotations are not checked)."""
    types = {}
    for option, p in (option_parameters(name) or {}).items():
        hint = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        if hint in SIMPLE_TYPES:
            types[option] = SIMPLE_TYPES[hint]
    return types


def accepted(name: str) -> str:
    """'hidden_size (default 64), ...' for messages."""
    parts = [
        p.name if p.default is p.empty else f"{p.name} (default {p.default!r})"
        for p in (option_parameters(name) or {}).values()
        if p.kind is not p.VAR_KEYWORD
    ]
    return ", ".join(parts) or "none"


def check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse option names the constructor does not take, and missing required ones."""
    params = option_parameters(name)
    if params is None:
        return  # checked when `train` builds the model
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for option in options:
        if option in CONTEXT:
            raise ModelError(
                f"{option!r} is set by the study (from the store and etl.time_lookback), not an option of "
                f"model {describe(name)}; remove it from [train.model_options]"
            )
        if option not in params and not takes_any:
            close = difflib.get_close_matches(option, list(params), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ModelError(
                f"model {describe(name)} has no option {option!r}; {hint}its options: {accepted(name)}"
            )
    for p in params.values():
        if p.default is p.empty and p.kind is not p.VAR_KEYWORD and p.name not in options:
            raise ModelError(
                f"model {describe(name)} needs option {p.name!r} in [train.model_options]; "
                f"its options: {accepted(name)}"
            )


def resolved_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option with its value: the given ones, the constructor's defaults for the rest
    (what a checkpoint records, so an explicit default equals an omitted one)."""
    check_options(name, options)
    defaults = {
        p.name: p.default
        for p in (option_parameters(name) or {}).values()
        if p.default is not p.empty and p.kind is not p.VAR_KEYWORD
    }
    return {**defaults, **options}


def build_model(
    name: str, options: dict[str, Any], n_features: int, n_classes: int, *, time_lookback: int | None = None
) -> nn.Module:
    """The model registered as `name`, built with `options` for this many features and classes."""
    check_options(name, options)
    cls = model_class(name)
    context = {}
    if time_lookback is not None and "time_lookback" in inspect.signature(cls).parameters:
        context["time_lookback"] = time_lookback
    try:
        return cls(n_features, n_classes, **options, **context)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {describe(name)} refused its options {options!r}: {exc}") from None
