"""The model registry: every registered model maps windows to class logits, options are checked
against the constructor, and the TCN's receptive field covers the lookback window."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from labzarr.registry import RegistryError as ModelError

from ..etl.categories import N_CLASSES
from ..train.models import CONTEXT, MODELS, REGISTRY, build_model
from ..train.models.tcn import TCN, receptive_field
from .conftest import STUDY_ROOT

LOOKBACK = 20


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_maps_windows_to_class_logits(name: str) -> None:
    model = build_model(name, {}, 3, N_CLASSES, time_lookback=LOOKBACK)
    logits = model(torch.zeros(5, LOOKBACK, 3))
    assert logits.shape == (5, N_CLASSES) and logits.dtype == torch.float32


def test_options_reach_the_constructor_and_defaults_fill_the_rest() -> None:
    lstm = build_model("lstm", {"hidden_size": 8, "num_layers": 2, "dropout": 0.1}, 3, N_CLASSES)
    assert lstm.lstm.hidden_size == 8 and lstm.lstm.num_layers == 2
    assert REGISTRY.resolved_options("tcn", {"channels": 8}) == {
        "channels": 8,
        "kernel_size": 3,
        "levels": 0,
        "dropout": 0.0,
    }
    with pytest.raises(
        ModelError, match=r"model 'tcn' \(TCN in train/models/tcn.py\) has no option 'hidden_size'"
    ):
        build_model("tcn", {"hidden_size": 8}, 3, N_CLASSES)
    with pytest.raises(ModelError, match="refused its options"):
        build_model("tcn", {"kernel_size": 1}, 3, N_CLASSES)


def test_the_tcn_is_causal_and_its_last_step_sees_the_whole_lookback() -> None:
    torch.manual_seed(0)
    model = TCN(3, N_CLASSES, channels=4, time_lookback=LOOKBACK)
    assert receptive_field(model.levels, 3) >= LOOKBACK > receptive_field(model.levels - 1, 3)
    x = torch.randn(2, LOOKBACK, 3, requires_grad=True)
    model(x).sum().backward()
    assert (x.grad[:, 0].abs().sum(dim=1) > 0).all()  # the window's first step reaches the head
    later = x.detach().clone()
    later[:, 10:] = 0  # a change from step 10 on leaves the outputs of steps 0..9 alone
    hidden = model.blocks(x.detach().transpose(1, 2)), model.blocks(later.transpose(1, 2))
    assert torch.equal(hidden[0][:, :, :10], hidden[1][:, :, :10])
    assert not torch.equal(hidden[0][:, :, 10:], hidden[1][:, :, 10:])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_options_read_from_the_source_are_those_of_the_signature(name: str) -> None:
    """Config loading reads the constructor from the module's source (no torch import): the same
    parameters, defaults and annotations as inspect.signature of the imported class."""
    described = [(p.name, p.kind, p.default, p.annotation) for p in REGISTRY._source_parameters(name)]
    signature = inspect.signature(REGISTRY.cls(name)).parameters.values()
    assert described == [
        (p.name, p.kind, p.default if p.name not in CONTEXT else described[i][2], p.annotation)
        for i, p in enumerate(signature)
    ]


def test_loading_the_config_imports_no_torch() -> None:
    """The ETL image has no torch, and commands other than train stay quick."""
    package = __package__.rsplit(".", 1)[0]
    code = (
        f"import sys; from {package}.config import load_config; "
        f"load_config({str(STUDY_ROOT / 'study.toml')!r}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
