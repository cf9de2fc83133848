"""methods.options.options_from: every method's options rebuilt from what a folder stored."""

from __future__ import annotations

import dataclasses

import pytest

from nimblebert.errors import UserError
from nimblebert.methods.dynabert.config import DynaBertConfig
from nimblebert.methods.fastbert.config import FastBertConfig
from nimblebert.methods.options import options_from
from nimblebert.methods.ssa.config import SsaConfig
from nimblebert.methods.tinybert.config import TinyBertConfig
from nimblebert.methods.trbert.config import TrBertConfig


@pytest.mark.parametrize("cls", [DynaBertConfig, FastBertConfig, SsaConfig, TinyBertConfig, TrBertConfig])
def test_saved_options_round_trip_and_recorded_extras_are_ignored(cls: type) -> None:
    saved = {**dataclasses.asdict(cls()), "recorded_by_the_method": [1, 2]}  # e.g. TR-BERT's cuts
    assert options_from(cls, saved) == cls()
    assert options_from(cls, {}) == cls()  # a folder from before every field existed: defaults


def test_values_are_taken_and_checked() -> None:
    assert options_from(TinyBertConfig, {"student_layers": 3, "student_init_used": "teacher"}).student_layers == 3
    with pytest.raises(UserError, match="--student-layers"):
        options_from(TinyBertConfig, {"student_layers": -1})  # __post_init__ still runs
