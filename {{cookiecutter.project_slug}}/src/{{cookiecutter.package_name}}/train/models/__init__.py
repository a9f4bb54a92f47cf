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

This module imports no torch, and neither does checking options (labzarr's `Registry` reads
the constructor's parameters from the model's source): study.toml loads without it (in the ETL
image, and every command but `train` stays quick).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labzarr.registry import Registry

if TYPE_CHECKING:
    from torch import nn

# name in study.toml -> "module:Class", the module in this folder (train/models/).
MODELS: dict[str, str] = {
    "lstm": "lstm:LSTMClassifier",
    "tcn": "tcn:TCN",
}

# Constructor arguments the study fills in itself: never options.
CONTEXT = ("n_features", "n_classes", "time_lookback")
REGISTRY = Registry(__name__, MODELS, context=CONTEXT, folder="train/models")


def build_model(
    name: str, options: dict[str, Any], n_features: int, n_classes: int, *, time_lookback: int | None = None
) -> nn.Module:
    """The model registered as `name`, built with `options` for this many features and classes."""
    return REGISTRY.build(name, options, n_features, n_classes, time_lookback=time_lookback)
