"""The ladder (nimblebert.ladder) on a tiny FastBERT: Pareto front, order, stored and loaded back, stuck knobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_tokenizer, tiny_model, toy_rows
from serve_fakes import tiny_fastbert

from nimblebert.data import encode
from nimblebert.errors import UserError
from nimblebert.ladder import (
    LADDER_FILE,
    Ladder,
    Rung,
    calibrate,
    grid,
    load_ladder,
    pareto,
    save_ladder,
    stuck_knobs,
)
from nimblebert.methods import get_method
from nimblebert.model import NimbleModel

SPEED_SWEEP = next(k.sweep for k in get_method("fastbert").knobs if k.name == "speed")


def encoded_toy(n: int = 48):
    import datasets

    rows = toy_rows(n, seed=5)
    ds = datasets.Dataset.from_list([{"text": r["text"], "label": int(r["label"] == "positive")} for r in rows])
    return encode(ds, make_tokenizer(), 16, has_pair=False)


def rung(acc: float, flops: float, speed: float = 0.0) -> Rung:
    return Rung({"speed": speed}, acc, 1.0, 1.0, flops, 1.0)


def test_pareto_keeps_only_undominated_settings_most_accurate_first() -> None:
    settings = [rung(0.90, 100, 0), rung(0.90, 80, 0.1), rung(0.85, 90, 0.2), rung(0.80, 50, 0.3),
                rung(0.80, 50, 0.4), rung(0.70, 60, 0.5), rung(0.60, 20, 0.6)]
    front = pareto(settings)
    # 0.90@100 is beaten by 0.90@80; 0.85@90 by 0.90@80; 0.70@60 by 0.80@50; of the equal 0.80@50 the first stays
    assert [r.knobs["speed"] for r in front] == [0.1, 0.3, 0.6]


def test_grid_uses_the_knobs_sweeps_and_skips_patience() -> None:
    model = tiny_fastbert()
    settings = grid(model)
    assert [s["speed"] for s in settings] == list(SPEED_SWEEP)
    assert all(s["patience"] == 0 for s in settings)
    assert len(grid(model, max_settings=4)) == 4 and grid(model, max_settings=4)[0]["speed"] == 0.0


def test_calibrate_a_tiny_fastbert_store_and_load_back(tmp_path: Path) -> None:
    model = tiny_fastbert()
    ladder = calibrate(model, encoded_toy(), batch_size=16, meta={"data": "toy", "max_length": 16})
    # The grid, then the speeds the per-model refinement added (issue 20: targets between the grid's savings).
    added = ladder.meta["refined"]["speed"]
    assert [s.knobs["speed"] for s in ladder.settings] == [*SPEED_SWEEP, *added] and not ladder.stuck
    rungs = ladder.rungs
    assert rungs and len(rungs) <= len(ladder.settings)
    # Ordered from the most accurate to the cheapest, each rung strictly cheaper and strictly less accurate.
    for a, b in zip(rungs, rungs[1:], strict=False):
        assert a.accuracy > b.accuracy and a.flops_per_sample > b.flops_per_sample
    # No calibrated setting dominates a rung.
    for r in rungs:
        assert not any(s.accuracy >= r.accuracy and s.flops_per_sample < r.flops_per_sample
                       for s in ladder.settings)
    # speed 0 is the full model: FLOPs speed-up 1, agreement with the most accurate setting measured
    full = ladder.settings[0]
    assert full.knobs["speed"] == 0.0 and full.mean_layers == 4 and abs(full.flops_speedup - 1) < 1e-9
    best = max(s.accuracy for s in ladder.settings)
    reference = next(s for s in ladder.settings if s.accuracy == best)  # of equals, the grid's first
    assert rungs[0].accuracy == best and reference.agreement == 1.0
    assert ladder.meta["agreement_with"] == reference.knobs
    assert min(s.mean_layers for s in ladder.settings) < 4  # the branches do let rows leave
    save_ladder(tmp_path, ladder)
    back = load_ladder(tmp_path)
    assert back is not None and back.to_json() == ladder.to_json()
    assert json.loads((tmp_path / LADDER_FILE).read_text())["meta"]["data"] == "toy"
    assert back.floor_index(None) == len(rungs) - 1 and back.floor_index(2.0) == 0


def test_a_knob_that_cannot_move_is_reported(tmp_path: Path, toy_data_dir: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    from nimblebert.cli.main import main

    model = tiny_fastbert(confident=False)
    ladder = calibrate(model, encoded_toy(), batch_size=16)
    assert ladder.stuck == ["speed"]  # every speed of the grid ran the whole model
    grid_part = ladder.settings[:len(SPEED_SWEEP)]
    assert all(s.mean_layers == 4 for s in grid_part)
    # 50/50 branches: only speed 1 (entropy ≤ 1: every row leaves at the first branch) moves, the refinement's end
    assert ladder.meta["refined"]["speed"][0] == 1.0
    folder = tmp_path / "unsure"
    model.save(folder)
    capsys.readouterr()  # saving's own progress bar
    assert main(["calibrate", str(folder), "--data", str(toy_data_dir), "--max-length", "16"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--speed does not change the cost" in err[0] and "--target-speedup" in err[0]
    assert load_ladder(folder).stuck == ["speed"]


def test_a_model_without_knobs_has_one_rung() -> None:
    model = NimbleModel(tiny_model(layers=2), make_tokenizer(), "finetune", {}, ["negative", "positive"])
    ladder = calibrate(model, encoded_toy(), batch_size=16)
    assert len(ladder.rungs) == 1 and ladder.rungs[0].knobs == {} and ladder.stuck == []


def test_stuck_knobs_compares_within_the_other_knobs() -> None:
    a = [Rung({"width": w, "depth": d}, 0.5, 1, 1, 100 * w, 1) for w in (1.0, 0.5) for d in (1.0, 0.5)]
    assert stuck_knobs(a) == ["depth"]


def test_a_broken_ladder_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / LADDER_FILE).write_text('{"version": 1, "rungs": []}')
    with pytest.raises(UserError, match="not a valid ladder"):
        load_ladder(tmp_path)
    assert load_ladder(tmp_path / "none") is None
    assert Ladder.from_json(Ladder([rung(0.5, 1)]).to_json()).rungs[0].accuracy == 0.5


def test_refine_bisects_a_knob_whose_savings_bunch_at_its_end() -> None:
    """A speed whose saving appears only above 0.995 (entropies bunched near 1): the grid 0…0.9 sees none; the
    refinement adds values until each reachable target speed-up has a setting within the tolerance above it,
    and stops at the targets the knob cannot reach."""
    from nimblebert.ladder import REFINE_TARGETS, REFINE_TOLERANCE, refine

    def speedup(v: float) -> float:
        return 1.0 + 3.0 * max(0.0, (v - 0.995) / 0.005)  # 1× up to 0.995, 4× at speed 1

    calls = []

    def run(knobs: dict) -> float:
        calls.append(knobs)
        return speedup(knobs["speed"])

    known = {v: 1.0 for v in SPEED_SWEEP}
    added = refine("speed", {"speed": 0.0, "patience": 0}, run, known)
    assert added[0] == 1.0 and len(added) == len(calls) and all(c["patience"] == 0 for c in calls)
    for target in REFINE_TARGETS:
        near = [s for s in known.values() if target <= s <= target * (1 + REFINE_TOLERANCE)]
        assert bool(near) == (target <= 4.0), target  # 5× is out of reach: no probe can give it
    assert all(0.9 < v <= 1.0 for v in added)
