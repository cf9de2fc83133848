"""What a training says while it runs: a tqdm bar on a terminal, periodic plain lines in a pipe or a CI log,
and one line per stage saying what it will do (rows, epochs, steps) and about how long it will take.

A tqdm bar redraws itself with ``\\r`` several times a second; written to a file that is thousands of updates
in one line. Where stderr is not a terminal we write a plain line every ``every_s`` seconds or every tenth of
the stage instead, whichever comes first.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

WARMUP_STEPS = 3  # steps timed (after the first) before the stage's estimate is printed


def format_duration(seconds: float) -> str:
    """``7`` → "7 s", ``754`` → "13 min", ``7830`` → "2 h 10 min" (what a person reads at a glance)."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _per_step(seconds: float) -> str:
    return f"{seconds:.2g} s/step" if seconds < 10 else f"{seconds:.0f} s/step"


def plan_line(stage: str, rows: int, per_epoch: int, total: int, done: int, seconds_per_step: float) -> str:
    """E.g. "stage intermediate: 13,353 rows × 10 epochs = 4,170 steps, about 2 h 10 min at 1.9 s/step"."""
    epochs = total / per_epoch
    line = f"stage {stage}: {rows:,} rows × {epochs:.3g} epoch{'s' if epochs != 1 else ''} = {total:,} steps"
    left = format_duration((total - done) * seconds_per_step)
    if done:
        return f"{line} (resumed at step {done:,}), about {left} left at {_per_step(seconds_per_step)}"
    return f"{line}, about {left} at {_per_step(seconds_per_step)}"


class PlainProgress:
    """A progress report for a pipe: one plain line every ``every_s`` seconds or ``every_fraction`` of the total."""

    def __init__(self, total: int, initial: int, desc: str, stream: TextIO, every_s: float = 30.0,
                 every_fraction: float = 0.1, clock: Any = time.monotonic) -> None:
        self.total, self.n, self.desc, self.stream = total, initial, desc, stream
        self.every_s, self.clock = every_s, clock
        self.step_of_line = max(1, round(total * every_fraction))
        self.start = self.last = clock()
        self.first = initial
        self.next_mark = (initial // self.step_of_line + 1) * self.step_of_line
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.n >= self.next_mark or now - self.last >= self.every_s or self.n == self.total:
            self._line(now)

    def _line(self, now: float) -> None:
        self.last = now
        self.next_mark = (self.n // self.step_of_line + 1) * self.step_of_line
        line = f"{self.desc}: step {self.n:,}/{self.total:,} ({100 * self.n / max(1, self.total):.0f}%)"
        done = self.n - self.first
        if done > 0 and self.n < self.total:
            rate = (now - self.start) / done
            line += f", {_per_step(rate)}, about {format_duration(rate * (self.total - self.n))} left"
        self.write(line)

    def write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.closed = True


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def announce(line: str, stream: TextIO | None = None) -> None:
    """One line on stderr that does not garble a tqdm bar drawn there."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=stream if stream is not None else sys.stderr)


def progress_bar(total: int, initial: int, desc: str, enabled: bool, stream: TextIO | None = None,
                 every_s: float = 30.0) -> Any:
    """tqdm on a terminal, :class:`PlainProgress` elsewhere, nothing when disabled. All three have
    ``update(n)`` and ``close()``."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return _Silent()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False, file=stream)
    return PlainProgress(total, initial, desc, stream, every_s=every_s)


def tracked(items: Iterable[T], total: int, desc: str, enabled: bool, stream: TextIO | None = None) -> Iterator[T]:
    """``items`` with :func:`progress_bar` progress (for the passes before training: teacher scores, importance,
    augmentation), so that a pipe or a CI log gets plain lines there too instead of tqdm's carriage returns."""
    bar = progress_bar(total, 0, desc, enabled, stream)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


class StageClock:
    """Times the first steps of a stage, then returns :func:`plan_line` once (None before and after).

    The first step is left out of the rate (it pays for lazy initialisation and a cold cache), unless the stage has
    only one step left; the next ``warmup`` steps give the estimate.
    """

    def __init__(self, stage: str, rows: int, per_epoch: int, total: int, done: int,
                 warmup: int = WARMUP_STEPS, clock: Any = time.monotonic) -> None:
        self.stage, self.rows, self.per_epoch, self.total, self.done = stage, rows, per_epoch, total, done
        self.warmup = max(0, min(warmup, total - done - 1))
        self.clock, self.start, self.first, self.steps, self.said = clock, clock(), 0.0, 0, False

    def step(self) -> str | None:
        self.steps += 1
        if self.said:
            return None
        now = self.clock()
        if self.steps == 1:
            self.first = now
            if self.warmup:
                return None
            rate = now - self.start
        elif self.steps - 1 < self.warmup:
            return None
        else:
            rate = (now - self.first) / (self.steps - 1)
        self.said = True
        return plan_line(self.stage, self.rows, self.per_epoch, self.total, self.done, rate)
