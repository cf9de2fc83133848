"""The ladder: a model's knob settings calibrated on validation data, cheapest-for-its-accuracy only.

A dynamic model (FastBERT's ``speed``, DynaBERT's ``width``/``depth``, TR-BERT's ``keep_threshold``) can run
at many settings. :func:`calibrate` runs each setting of a grid over a validation split and records, per
setting, its accuracy, its agreement with the most accurate setting, the mean layers run, the FLOPs per
sample and the FLOPs speed-up over the whole model. Only the Pareto front is kept (no rung is both less
accurate and costlier than another), ordered from the most accurate rung to the cheapest: moving one rung
down the list always buys speed with accuracy. The ladder is stored as ``ladder.json`` in the model folder;
``nimblebert serve`` steps along it under load, and anything else that needs "the setting worth using at
this cost" can read it with :func:`load_ladder`.

The grid is the product of every knob's ``sweep`` values (``Knob.sweep``) over the whole stack of a composed
model (speed × width on DynaBERT → FastBERT); knobs without a sweep, counters such as FastBERT's ``patience``,
string knobs and TR-BERT's ``keep_threshold`` (its ``keep_fraction`` reaches every saving, where a threshold can be
a cliff) keep their defaults. A model without knobs has a one-rung ladder.

A fixed grid fits the models it was chosen on. On a model whose branches are never confident (an uncertain
teacher: a small training set, many classes) every FastBERT ``speed`` of the grid runs every layer, and asking
for 2× would find no rung. So continuous knobs whose cost falls monotonically with their value (:data:`REFINED`)
are refined per model: after the grid, :func:`refine` bisects the knob's value between the grid's settings until a
setting lands within :data:`REFINE_TOLERANCE` of each target speed-up in :data:`REFINE_TARGETS` that the knob can
reach at all (its cheapest end, e.g. ``speed`` 1: every row leaves at the first branch). The ladder then holds
settings near 2×, 3×, … whatever the scale of the model's entropies.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .io import write_json

if TYPE_CHECKING:  # torch only where a model runs: `nimblebert info` reads ladders without it (start-up)
    from .model import NimbleModel

LADDER_FILE = "ladder.json"
LADDER_VERSION = 1
MAX_SETTINGS = 60  # the product of the knobs' sweeps is thinned to at most this many settings

# Not calibrated, they keep their defaults: a second exit rule (not a speed setting), and the token threshold whose
# saving can jump from none to almost all on a new task (the keep fraction, swept instead, reaches every saving).
NOT_SWEPT = frozenset({"patience", "keep_threshold"})

# Continuous knobs whose cost falls monotonically as the value goes from the first bound to the second: (the full
# model's end, the cheapest end). FastBERT's speed: a row leaves at the first branch with entropy ≤ speed, so a larger
# speed never runs more layers. TR-BERT's keep fraction: fewer tokens at every cut.
REFINED: dict[str, tuple[float, float]] = {"speed": (0.0, 1.0), "keep_fraction": (1.0, 0.05)}
REFINE_TARGETS = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)  # FLOPs speed-ups the ladder should offer a setting near
REFINE_TOLERANCE = 0.05  # a setting within 5% above a target counts as near it
REFINE_PROBES = 12  # bisection steps per target at most (the bracket shrinks 4096×: entropies can bunch near 1)
REFINE_BUDGET = 40  # settings one knob's refinement may add in all (each is a pass over the calibration data)


def sweep_of(knob: Any) -> tuple[Any, ...] | None:
    """The values a knob is calibrated at (its ``sweep``, clipped to its range); None for knobs not swept."""
    if knob.name in NOT_SWEPT or getattr(knob, "type", float) is str:
        return None
    values = knob.sweep
    if not values:
        return None
    kept = [v for v in values if (knob.low is None or v >= knob.low) and (knob.high is None or v <= knob.high)]
    return tuple(kept) or None


def grid(model: NimbleModel, max_settings: int = MAX_SETTINGS) -> list[dict[str, Any]]:
    """Every combination of the swept knobs' values (others at their defaults), at most ``max_settings``.

    A larger product is thinned evenly (always keeping the first, all-most-accurate, setting and the last),
    so a three-knob model still gets a grid that covers its whole range.
    """
    swept = [(k.name, sweep_of(k)) for k in model.knobs()]
    swept = [(name, values) for name, values in swept if values]
    if not swept:
        return [model.check_knobs({})]
    names = [name for name, _ in swept]
    combos = list(itertools.product(*(values for _, values in swept)))
    if len(combos) > max_settings:
        step = (len(combos) - 1) / (max_settings - 1)
        combos = [combos[round(i * step)] for i in range(max_settings)]
    settings = []
    for combo in combos:
        try:
            settings.append(model.check_knobs(dict(zip(names, combo, strict=True))))
        except UserError:  # a combination the stack refuses (exits at a depth they were not distilled at)
            continue
    return settings


@dataclass
class Rung:
    """One calibrated setting."""

    knobs: dict[str, Any]
    accuracy: float
    agreement: float  # fraction of examples where it predicts what the most accurate setting predicts
    mean_layers: float
    flops_per_sample: float
    flops_speedup: float  # the whole model's FLOPs / this setting's FLOPs, per sample on average
    ms_per_sample: float | None = None  # measured when calibrate(measure_time=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rung:
        return cls(knobs=dict(d["knobs"]), accuracy=float(d["accuracy"]), agreement=float(d["agreement"]),
                   mean_layers=float(d["mean_layers"]), flops_per_sample=float(d["flops_per_sample"]),
                   flops_speedup=float(d["flops_speedup"]),
                   ms_per_sample=None if d.get("ms_per_sample") is None else float(d["ms_per_sample"]))


@dataclass
class Ladder:
    """The Pareto rungs, most accurate first (``rungs[0]``) to cheapest (``rungs[-1]``), and how they were
    made. ``settings`` holds every calibrated setting, including those off the front, so a reader can see
    why one was dropped; ``stuck`` names knobs that never changed the cost on this data."""

    rungs: list[Rung]
    settings: list[Rung] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": LADDER_VERSION, "rungs": [asdict(r) for r in self.rungs],
                "settings": [asdict(r) for r in self.settings], "stuck": list(self.stuck), "meta": dict(self.meta)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Ladder:
        if not isinstance(obj, dict) or obj.get("version") != LADDER_VERSION or not obj.get("rungs"):
            raise ValueError("not a nimblebert ladder (version 1 with at least one rung)")
        return cls(rungs=[Rung.from_dict(r) for r in obj["rungs"]],
                   settings=[Rung.from_dict(r) for r in obj.get("settings", [])],
                   stuck=list(obj.get("stuck", [])), meta=dict(obj.get("meta", {})))

    def floor_index(self, accuracy_floor: float | None) -> int:
        """The cheapest rung whose accuracy is at least ``accuracy_floor`` (0 when none is: the most accurate
        rung is always allowed)."""
        if accuracy_floor is None:
            return len(self.rungs) - 1
        allowed = [i for i, r in enumerate(self.rungs) if r.accuracy >= accuracy_floor]
        return max(allowed) if allowed else 0


def pareto(settings: Sequence[Rung]) -> list[Rung]:
    """The settings no other setting beats (at least as accurate and at most as costly, better in one),
    most accurate first. Of settings equal in both, the first in ``settings`` is kept."""
    order = sorted(range(len(settings)), key=lambda i: (settings[i].flops_per_sample, -settings[i].accuracy, i))
    front: list[Rung] = []
    best = -math.inf
    for i in order:  # cheapest first: a setting is on the front when it is more accurate than every cheaper one
        if settings[i].accuracy > best:
            front.append(settings[i])
            best = settings[i].accuracy
    return front[::-1]


def stuck_knobs(settings: Sequence[Rung], rel_tol: float = 1e-6) -> list[str]:
    """Knobs that never bought speed: among settings equal in every other knob, no value of this one ran
    fewer FLOPs per sample than its first value (the grid's most accurate end). E.g. FastBERT's ``speed`` when
    no branch is ever confident on the data: every speed runs every layer, plus the branches. Knobs with a
    single value are not reported. :func:`calibrate` judges the grid's settings only (the values a user would type):
    the ladder may still reach savings through the settings :func:`refine` added near the knob's end."""
    if not settings:
        return []
    stuck = []
    for name in settings[0].knobs:
        groups: dict[tuple, list[float]] = {}
        values = set()
        for s in settings:  # in grid order: each group's first entry has the knob's first value
            values.add(repr(s.knobs[name]))
            key = tuple((k, repr(v)) for k, v in sorted(s.knobs.items()) if k != name)
            groups.setdefault(key, []).append(s.flops_per_sample)
        if len(values) < 2:
            continue
        if all(min(g[1:], default=g[0]) >= g[0] * (1 - rel_tol) for g in groups.values()):
            stuck.append(name)
    return stuck


def refine(knob: str, base: dict[str, Any], run: Any, known: dict[float, float],
           targets: Sequence[float] = REFINE_TARGETS, tolerance: float = REFINE_TOLERANCE,
           probes: int = REFINE_PROBES, budget: int = REFINE_BUDGET) -> list[float]:
    """Knob values to add along ``knob`` (others as in ``base``) so that each reachable target speed-up has a setting
    within ``tolerance`` above it.

    ``known`` maps the knob values already run to their FLOPs speed-up; ``run(knobs)`` runs one more setting and
    returns its speed-up (the caller keeps the run). The cost is monotone in the value (:data:`REFINED`), so each
    target is bracketed by two known values and bisected, ``probes`` times at most. Returns the values added.
    """
    full_end, cheap_end = REFINED[knob]
    toward = 1.0 if cheap_end > full_end else -1.0  # the direction in which the value buys speed
    added: list[float] = []

    def probe(value: float) -> None:
        value = round(value, 6)
        if value not in known and len(added) < budget:
            known[value] = run({**base, knob: value})
            added.append(value)

    probe(cheap_end)  # how far the knob reaches at all
    for target in targets:
        for _ in range(probes):
            ordered = sorted(known, key=lambda v: toward * v)  # from the full end to the cheapest
            if known[ordered[-1]] < target or any(target <= known[v] <= target * (1 + tolerance) for v in ordered):
                break  # out of reach, or a setting is near enough
            above = next(v for v in ordered if known[v] >= target)  # the first value reaching it
            below = max((v for v in ordered if toward * v < toward * above), key=lambda v: toward * v, default=None)
            if below is None or abs(above - below) < 2e-6 or len(added) >= budget:
                break
            probe((above + below) / 2)
    return added


def calibrate(
    model: NimbleModel,
    encoded: Any,
    batch_size: int = 64,
    settings: list[dict[str, Any]] | None = None,
    measure_time: bool = False,
    meta: dict[str, Any] | None = None,
    refine_knobs: bool = True,
) -> Ladder:
    """Run every setting of :func:`grid` (or ``settings``) over ``encoded`` (a labelled dataset made by
    :func:`nimblebert.data.encode`) and keep the Pareto front.

    ``measure_time`` adds each setting's wall time per sample over the whole split (batches bucketed by
    length, as :func:`nimblebert.inference.predict_loader` runs them); it is a rough figure for humans:
    the server measures its own costs as it runs. ``refine_knobs`` adds the settings :func:`refine` finds for
    every knob of :data:`REFINED` the model has (meta ``refined`` lists them).
    """
    import torch

    with torch.inference_mode():
        return _calibrate(model, encoded, batch_size, settings, measure_time, meta, refine_knobs)


def _calibrate(model: NimbleModel, encoded: Any, batch_size: int, settings: list[dict[str, Any]] | None,
               measure_time: bool, meta: dict[str, Any] | None, refine_knobs: bool) -> Ladder:
    import torch

    from .bench.measure import full_model_flops
    from .data import make_loader
    from .inference import predict_loader

    if "labels" not in encoded.column_names:
        raise UserError("calibration needs labelled data: the split has no labels")
    if len(encoded) == 0:
        raise UserError("calibration needs data: the split is empty")
    loader = make_loader(encoded, model.tokenizer, batch_size, shuffle=False, bucket_by_length=True)
    full_flops = torch.cat([full_model_flops(model, batch["attention_mask"]) for batch in loader]).mean()
    runs = []

    def run(knobs: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        p = predict_loader(model, loader, **knobs)
        runs.append((knobs, p, time.perf_counter() - t0))
        flops = float(p.flops.mean())
        return float(full_flops) / flops if flops > 0 else 1.0

    grid_settings = settings if settings is not None else grid(model)
    for knobs in grid_settings:
        run(knobs)
    refined: dict[str, list[float]] = {}
    if refine_knobs:
        first = grid_settings[0] if grid_settings else {}
        for name in (k for k in REFINED if k in first and isinstance(first[k], float)):
            # Along this knob with every other knob at the grid's first (most accurate) value.
            base = {k: v for k, v in first.items() if k != name}
            known = {round(float(kn[name]), 6): float(full_flops) / max(float(p.flops.mean()), 1e-9)
                     for kn, p, _ in runs if {k: v for k, v in kn.items() if k != name} == base}
            refined[name] = refine(name, first, lambda kn: run(model.check_knobs(kn)), known)
    accuracies = [float((p.predicted == p.labels).float().mean()) for _, p, _ in runs]
    # The reference for agreement: the most accurate setting (of equals, the first, which is the grid's
    # most accurate end).
    ref = max(range(len(runs)), key=lambda i: (accuracies[i], -i))
    reference = runs[ref][1].predicted
    rows = []
    for (knobs, p, seconds), acc in zip(runs, accuracies, strict=True):
        flops = float(p.flops.mean())
        rows.append(Rung(
            knobs=dict(knobs), accuracy=acc, agreement=float((p.predicted == reference).float().mean()),
            mean_layers=float(p.layers.float().mean()), flops_per_sample=flops,
            flops_speedup=float(full_flops) / flops if flops > 0 else 1.0,
            ms_per_sample=1000 * seconds / len(encoded) if measure_time else None))
    info = {"examples": len(encoded), "batch_size": batch_size, "grid_size": len(rows),
            "agreement_with": dict(runs[ref][0]), "refined": refined,
            "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **(meta or {})}
    # Stuck: judged on the grid, the values a user would type (a refined knob reaches savings only near its end).
    return Ladder(rungs=pareto(rows), settings=rows, stuck=stuck_knobs(rows[:len(grid_settings)]), meta=info)


def save_ladder(folder: str | Path, ladder: Ladder) -> Path:
    """Write ``folder/ladder.json`` atomically (a killed calibration never leaves half a ladder)."""
    path = Path(folder) / LADDER_FILE
    write_json(path, ladder.to_json())
    return path


def load_ladder(folder: str | Path) -> Ladder | None:
    """The folder's ladder, or None when it has none. A file that is not a ladder is a UserError."""
    import json

    path = Path(folder) / LADDER_FILE
    if not path.exists():
        return None
    try:
        return Ladder.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a valid ladder ({e}); re-run `nimblebert calibrate {folder} --data ...`") \
            from None


def default_ladder(model: NimbleModel) -> Ladder:
    """A one-rung ladder at the knobs' defaults, not calibrated (accuracy unknown: NaN)."""
    knobs = model.check_knobs({})
    nan = float("nan")
    return Ladder(rungs=[Rung(knobs=knobs, accuracy=nan, agreement=1.0, mean_layers=nan, flops_per_sample=nan,
                              flops_speedup=1.0)], meta={"calibrated": False})


def choose(ladder: Ladder, target_speedup: float | None = None, max_accuracy_loss: float | None = None,
           target_layers: float | None = None) -> Rung:
    """The rung that meets what the user asked for, in their terms rather than a knob's (issue 20):

    - ``target_speedup``: at least this FLOPs speed-up over the whole model (×);
    - ``target_layers``: at most this many layers run on average;
    - ``max_accuracy_loss``: at most this many accuracy points below the most accurate rung (on the data the
      ladder was calibrated on).

    Of the rungs that meet every target given, the most accurate (a speed or layer target: the accuracy-cheapest
    way to reach it); with only an accuracy budget, the cheapest. Nothing meets them: :class:`UserError` naming
    the closest rung, so the user learns what the model can do (e.g. a knob that never buys speed on this data).
    """
    rungs = ladder.rungs
    ok = [r for r in rungs if (target_speedup is None or r.flops_speedup >= target_speedup - 1e-9)
          and (target_layers is None or r.mean_layers <= target_layers + 1e-9)
          and (max_accuracy_loss is None or r.accuracy >= rungs[0].accuracy - max_accuracy_loss / 100 - 1e-9)]
    if not ok:
        fastest = rungs[-1]
        stuck = f"; {', '.join(ladder.stuck)} never bought speed on the calibration data" if ladder.stuck else ""
        raise UserError(f"no calibrated setting meets that: the fastest is {_describe(fastest)}{stuck}")
    if target_speedup is None and target_layers is None:
        return min(ok, key=lambda r: r.flops_per_sample)
    return max(ok, key=lambda r: (r.accuracy, -r.flops_per_sample))


def stuck_message(ladder: Ladder, name: str) -> str:
    """One line for a knob that the grid found stuck: what it means, and what the ladder can still do."""
    flag = f"--{name.replace('_', '-')}"
    values = sorted({float(s.knobs[name]) for s in ladder.settings if name in s.knobs})
    added = ladder.meta.get("refined", {}).get(name) or []
    reach = max((r.flops_speedup for r in ladder.settings if name in r.knobs), default=1.0)
    tail = (f"; the ladder added {len(added)} values up to {max(added, key=abs):g}, reaching {reach:.2f}× FLOPs: ask "
            "with --target-speedup or --target-layers" if added and reach > 1.0 + 1e-6
            else "; asking for more speed through it does nothing")
    grid_values = [v for v in values if v not in added]
    shown = f"{grid_values[0]:g}…{grid_values[-1]:g}" if grid_values else "its usual values"
    return f"{flag} does not change the cost on this data at {shown} (no setting ran fewer FLOPs than the first){tail}"


def _describe(rung: Rung) -> str:
    knobs = ", ".join(f"{k} {v}" for k, v in rung.knobs.items()) or "the defaults"
    return (f"{knobs} ({rung.flops_speedup:.2f}× FLOPs, {rung.mean_layers:.2f} layers, accuracy {rung.accuracy:.4f} "
            "on calibration)")
