"""The demo's bookkeeping (fast): its steps are numbered from their list, and the epochs it runs
are shown beside the study's own default."""

from __future__ import annotations

import pytest

from demo import Steps, epochs_note, step_titles


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
