"""The demo's bookkeeping (fast): its steps are numbered from their list, the epochs it runs
are shown beside the study's own default, and its gate fails unless the model beats every
baseline on macro-F1, naming the ones it lost to."""

from __future__ import annotations

import pytest

from demo import Steps, epochs_note, gate, scores_table, step_titles


def test_steps_are_numbered_out_of_the_steps_that_run(capsys: pytest.CaptureFixture[str]) -> None:
    for notebook_epochs, count in ((1, 7), (None, 6)):
        titles = step_titles("small", 5, notebook_epochs)
        assert len(titles) == count and ("notebook" in titles[-1]) == (notebook_epochs is not None)
        steps = Steps(titles)
        for _ in titles:
            with steps.step():
                pass
        steps.finish()
        printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
        assert printed == [f"[{i}/{count}] {title}" for i, title in enumerate(titles, 1)]


def test_a_step_more_or_less_than_planned_is_an_error() -> None:
    steps = Steps(["one", "two"])
    with steps.step():
        pass
    with pytest.raises(RuntimeError, match="1 of 2 planned steps ran"):
        steps.finish()
    with steps.step():
        pass
    with pytest.raises(RuntimeError, match="beyond the 2 planned"), steps.step():
        pass


def test_an_override_of_the_epochs_is_shown_beside_study_toml() -> None:
    assert epochs_note(5, 10, "the demo passes --epochs") == (
        "5 epochs (the demo passes --epochs; study.toml: train.epochs = 10)"
    )
    assert epochs_note(1, 10, "STUDY_EPOCHS") == "1 epoch (STUDY_EPOCHS; study.toml: train.epochs = 10)"
    assert epochs_note(10, 10, "x") == "10 epochs (train.epochs of study.toml)"


def summary_with(model_f1: float, **baselines: float) -> dict:
    return {
        "settings": {"model": "lstm"},
        "test": {"accuracy": 0.8, "macro_f1": model_f1},
        "baselines": {name: {"accuracy": 0.5, "macro_f1": f1} for name, f1 in baselines.items()},
    }


def test_the_gate_passes_only_when_the_model_beats_every_baseline_on_macro_f1() -> None:
    passed, verdict = gate(summary_with(0.70, majority=0.05, last_step=0.3, logistic=0.5, gbm=0.6))
    assert passed and verdict == "the LSTM beats every baseline on macro-F1"
    passed, verdict = gate(summary_with(0.55, majority=0.05, last_step=0.3, logistic=0.55, gbm=0.61))
    assert not passed
    assert verdict == "the LSTM (macro-F1 0.550) does NOT beat logistic (0.550), gbm (0.610)"


def test_the_report_lists_the_model_and_every_baseline() -> None:
    lines = scores_table(summary_with(0.7, majority=0.05, last_step=0.3, logistic=0.5, gbm=0.6))
    assert [line.split()[0] for line in lines[1:]] == ["LSTM", "majority", "last", "logistic", "gbm"]
    assert lines[1].split()[-2:] == ["0.800", "0.700"] and lines[-1].split()[-1] == "0.600"
