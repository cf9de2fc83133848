"""Progress that suits a pipe (plain periodic lines, no carriage returns), tqdm on a terminal, and the one line
per stage that says what it will do and about how long it takes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from nimblebert.cli.main import main
from nimblebert.train.progress import PlainProgress, StageClock, format_duration, plan_line, progress_bar, tracked


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.step


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pipe_gets_a_line_per_tenth_not_carriage_returns() -> None:
    stream, clock = io.StringIO(), FakeClock(0.5)
    bar = PlainProgress(200, 0, "finetune", stream, every_s=1e9, clock=clock)
    for _ in range(200):
        clock.tick()
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 10
    assert lines[0] == "finetune: step 20/200 (10%), 0.5 s/step, about 2 min left"
    assert lines[-1] == "finetune: step 200/200 (100%)"


def test_pipe_also_gets_a_line_every_n_seconds() -> None:
    stream, clock = io.StringIO(), FakeClock(10.0)
    bar = PlainProgress(1000, 0, "distill", stream, every_s=30.0, clock=clock)
    for _ in range(9):
        clock.tick()
        bar.update(1)
    assert [x.split(", ")[0] for x in stream.getvalue().splitlines()] == [
        "distill: step 3/1,000 (0%)", "distill: step 6/1,000 (1%)", "distill: step 9/1,000 (1%)"]


def test_terminal_keeps_the_tqdm_bar_and_a_pipe_does_not() -> None:
    tty = Terminal()
    bar = progress_bar(50, 0, "finetune", True, stream=tty)
    for _ in range(50):
        bar.update(1)
    bar.close()
    assert "\r" in tty.getvalue()
    assert isinstance(progress_bar(50, 0, "finetune", True, stream=io.StringIO()), PlainProgress)
    out = io.StringIO()
    silent = progress_bar(50, 0, "finetune", False, stream=out)
    silent.update(50)
    silent.close()
    assert out.getvalue() == ""


def test_passes_before_training_report_plain_lines_in_a_pipe() -> None:
    """The teacher-score, importance and augmentation passes go through ``tracked``: every item comes through in
    order, a pipe gets plain lines ending at 100% and no carriage return, and disabled progress writes nothing."""
    pipe = io.StringIO()
    assert list(tracked(iter(range(30)), 30, "masked-LM candidates", True, stream=pipe)) == list(range(30))
    assert "\r" not in pipe.getvalue()
    assert pipe.getvalue().splitlines()[-1] == "masked-LM candidates: step 30/30 (100%)"
    quiet = io.StringIO()
    assert list(tracked(range(5), 5, "importance", False, stream=quiet)) == list(range(5))
    assert quiet.getvalue() == ""


def test_plan_line_and_durations() -> None:
    assert format_duration(7) == "7 s" and format_duration(754) == "13 min" and format_duration(7830) == "2 h 10 min"
    assert plan_line("intermediate", 13353, 417, 4170, 0, 1.9) == (
        "stage intermediate: 13,353 rows × 10 epochs = 4,170 steps, about 2 h 12 min at 1.9 s/step")
    assert plan_line("final", 800, 25, 50, 20, 0.25) == (
        "stage final: 800 rows × 2 epochs = 50 steps (resumed at step 20), about 8 s left at 0.25 s/step")
    clock = FakeClock(2.0)
    stage = StageClock("finetune", 96, 12, 24, 0, warmup=3, clock=clock)
    said = []
    for i in range(24):
        clock.now += 30.0 if i == 0 else 2.0  # a slow first step is left out of the estimate
        said.append(stage.step())
    assert said[:3] == [None] * 3 and all(x is None for x in said[4:])
    assert said[3] == "stage finetune: 96 rows × 2 epochs = 24 steps, about 48 s at 2 s/step"
    one = StageClock("prediction", 8, 1, 5, 4, clock=clock)  # resumed with one step left: said at once
    clock.tick()
    assert one.step() == "stage prediction: 8 rows × 5 epochs = 5 steps (resumed at step 4), about 2 s left at 2 s/step"


def test_training_in_a_pipe_says_its_plan_and_progress(tiny_model_dir: Path, toy_data_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "finetune", "--model", str(tiny_model_dir), "--data", str(toy_data_dir), "--out",
                 str(tmp_path / "run"), "--epochs", "2", "--batch-size", "8", "--max-length", "24"])
    assert code == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    plans = [x for x in lines if x.startswith("stage finetune: ")]
    assert len(plans) == 1 and plans[0].startswith("stage finetune: 96 rows × 2 epochs = 24 steps, about "), err
    progress = [x for x in lines if x.startswith("finetune: step ")]
    assert 2 <= len(progress) <= 13 and progress[-1] == "finetune: step 24/24 (100%)", err
