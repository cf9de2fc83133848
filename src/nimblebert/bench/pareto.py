"""The accuracy / speed trade-off of a bench run: Pareto frontier, chart, and picking within a budget.

Rows are ``nimblebert bench`` result rows (``results.jsonl``): ``accuracy``, ``b1_ms`` (batch-1 p50),
``b32_ms_per_sample``, ``b1_speedup`` / ``b32_speedup`` (measured against the plain transformers
baseline of the same run), ``method``, ``path``, ``knobs``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError

# batch size -> (latency key, speed-up key, how the latency is described)
BATCH_KEYS: dict[int, tuple[str, str, str]] = {
    1: ("b1_ms", "b1_speedup", "batch-1 p50 latency"),
    32: ("b32_ms_per_sample", "b32_speedup", "batch-32 latency per sentence"),
}


def _num(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and value == value else None  # NaN -> None


def pareto_front(rows: Sequence[dict[str, Any]], x: str, y: str = "accuracy") -> list[int]:
    """Indices of the rows on the frontier of (``x`` higher is better, ``y`` higher is better).

    A row is on it when no other row is at least as good on both and better on one; of exact duplicates
    the first is kept. Rows missing ``x`` or ``y`` are ignored. Returned in order of increasing ``x``.
    """
    points = [(i, _num(r, x), _num(r, y)) for i, r in enumerate(rows)]
    points = [(i, px, py) for i, px, py in points if px is not None and py is not None]
    # Fastest first; among equally fast, most accurate first: then a row is on the frontier exactly when
    # it beats the best accuracy seen so far.
    points.sort(key=lambda p: (-p[1], -p[2], p[0]))
    front, best = [], float("-inf")
    for i, _, py in points:
        if py > best:
            front.append(i)
            best = py
    return front[::-1]


def run_command(row: dict[str, Any]) -> str:
    """The command that runs a row's configuration (for ``nimblebert pick``)."""
    path = shlex.quote(str(row.get("path", "MODEL")))
    # Rows written by older benches (or by hand) may lack "runtime": the method says it for baselines.
    runtime = row.get("runtime") or {"onnxruntime": "onnxruntime", "transformers": "transformers",
                                     "baseline": "transformers"}.get(str(row.get("method")), "nimblebert")
    static = row.get("static", True)
    if runtime == "onnxruntime":
        int8 = " --int8" if "int8" in str(row.get("name", "")) else ""
        teacher = "" if static else " --teacher-only"
        out = shlex.quote(f"{row.get('path', 'MODEL')}-onnx")
        file = "model_int8.onnx" if int8 else "model.onnx"
        return f"nimblebert export {path} --format onnx{int8}{teacher} --out {out}  # then run {file} with onnxruntime"
    if runtime == "transformers":
        attn = row.get("attn_implementation", "sdpa")
        load = f"AutoModelForSequenceClassification.from_pretrained(<folder>, attn_implementation={attn!r})"
        if static:
            return f"nimblebert predict {path}  # the same weights as {load}"
        plain = shlex.quote(f"{row.get('path', 'MODEL')}-plain")
        return f"nimblebert export {path} --format hf --teacher-only --out {plain} && nimblebert predict {plain}"
    precision = [f"--runtime {row['precision']}"] if row.get("precision", "fp32") != "fp32" else []
    return " ".join([f"nimblebert predict {path}", *_knob_flags(row), *precision])


def _knob_flags(row: dict[str, Any]) -> list[str]:
    """``--name value`` for the row's knobs that differ from the method's defaults (all when unknown)."""
    knobs = dict(row.get("knobs") or {})
    try:
        from ..methods import get_method

        defaults = {k.name: k.default for m in str(row.get("method")).split("+") for k in get_method(m).knobs}
    except UserError:
        defaults = {}
    return [f"--{k.replace('_', '-')} {v}" for k, v in knobs.items() if k not in defaults or defaults[k] != v]


def pick(
    rows: Sequence[dict[str, Any]],
    max_latency_ms: float | None = None,
    min_accuracy: float | None = None,
    batch: int = 1,
) -> dict[str, Any]:
    """The best row within the budget.

    - only ``max_latency_ms``: the most accurate row at or under it (ties: the faster);
    - only ``min_accuracy``: the fastest row at or above it (ties: the more accurate);
    - both: the most accurate row meeting both (ties: the faster).

    Latency is the batch-1 p50 (``batch=1``) or the batch-32 time per sentence (``batch=32``). Raises
    :class:`UserError` naming the closest row when no row fits.
    """
    if max_latency_ms is None and min_accuracy is None:
        raise UserError("give a budget: --max-latency-ms X and/or --min-accuracy A")
    if batch not in BATCH_KEYS:
        raise UserError(f"--batch {batch}: bench measures batch 1 and 32; use one of those")
    lat_key, _, lat_words = BATCH_KEYS[batch]
    usable = [r for r in rows if _num(r, "accuracy") is not None and _num(r, lat_key) is not None]
    if not usable:
        raise UserError(f"no result row has both accuracy and {lat_words}; re-run nimblebert bench")

    def fits(r: dict[str, Any]) -> bool:
        return ((max_latency_ms is None or _num(r, lat_key) <= max_latency_ms)
                and (min_accuracy is None or _num(r, "accuracy") >= min_accuracy))

    inside = [r for r in usable if fits(r)]
    if inside:
        if max_latency_ms is not None:
            best = max(inside, key=lambda r: (_num(r, "accuracy"), -_num(r, lat_key)))
        else:
            best = min(inside, key=lambda r: (_num(r, lat_key), -_num(r, "accuracy")))
        return {**best, "command": best.get("command") or run_command(best), "latency_ms": _num(best, lat_key),
                "latency": lat_words}

    def shortfall(r: dict[str, Any]) -> float:
        # Relative distance outside the budget: 10% too slow weighs as much as 10% short of the accuracy.
        over = max(0.0, _num(r, lat_key) / max_latency_ms - 1) if max_latency_ms is not None else 0.0
        under = max(0.0, 1 - _num(r, "accuracy") / min_accuracy) if min_accuracy else 0.0
        return over + under

    closest = min(usable, key=lambda r: (shortfall(r), _num(r, lat_key)))
    budget = " and ".join(
        ([f"--max-latency-ms {max_latency_ms:g} ({lat_words})"] if max_latency_ms is not None else [])
        + ([f"--min-accuracy {min_accuracy:g}"] if min_accuracy is not None else []))
    raise UserError(
        f"no configuration meets {budget}; the closest is {closest.get('name')!r} at "
        f"{_num(closest, lat_key):.3g} ms with accuracy {_num(closest, 'accuracy'):.4f}: relax the budget or "
        f"bench more settings (--sweep)"
    )


# ---- the chart ------------------------------------------------------------------------------------

def _ticks(lo: float, hi: float) -> list[float]:
    """Speed-up ticks inside [lo, hi]: 1-2-5 steps, finer when the range is narrow (a log axis alone
    would label only "1×")."""
    for steps in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0**e for e in range(-3, 4) for m in steps]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 4:
            break
    return ticks


def _place_labels(ax: Any, points: list[tuple[float, float, str]], markers: list[tuple[float, float]],
                  fontsize: float) -> None:
    """Annotate each point with its name, moving a label down or up when it would cover a marker or a
    label already placed (rows of equal accuracy and similar speed are common, e.g. a model and its plain
    baseline)."""
    px_per_pt = ax.figure.dpi / 72
    height = fontsize * 1.35 * px_per_pt
    r = 4 * px_per_pt  # a marker's half size
    placed: list[tuple[float, float, float, float]] = []
    for x, y in markers:
        mx, my = ax.transData.transform((x, y))
        placed.append((mx - r, my - r, mx + r, my + r))
    for x, y, text in sorted(points, key=lambda p: (p[0], -p[1])):
        cx, cy = ax.transData.transform((x, y))
        width = len(text) * fontsize * 0.55 * px_per_pt
        for k in (0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5):
            dy = 4 * px_per_pt + k * height
            box = (cx + 5 * px_per_pt, cy + dy, cx + 5 * px_per_pt + width, cy + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset pixels", xytext=(5 * px_per_pt, dy), fontsize=fontsize,
                    color="0.25", arrowprops=None if k == 0 else {"arrowstyle": "-", "color": "0.7", "lw": 0.6})


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Accuracy against measured speed-up over the baseline (log x), batch 1 and batch 32 side by side.

    One colour per method, the frontier as a step line, the baseline (speed-up 1 by definition) as a star, a row
    marked ``reference`` (a competitor to beat) as a diamond with a dotted line at its speed-up.
    """
    # The object API with the Agg canvas: no pyplot global state, no display needed (servers, tests).
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    from ..io import atomic_write

    methods = list(dict.fromkeys(str(r.get("method")) for r in rows))
    cmap = colormaps["tab10"]
    colour = {m: cmap(i % 10) for i, m in enumerate(methods)}
    fig = Figure(figsize=(13, 5.5), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    accs = [a for a in (_num(r, "accuracy") for r in rows) if a is not None] or [0.0, 1.0]
    pad = max(0.01, 0.08 * (max(accs) - min(accs)))
    label_all = len(rows) <= 16  # beyond that, names of off-frontier points only clutter
    placements = []
    for ax, batch in zip(axes, (1, 32), strict=True):
        _, x_key, words = BATCH_KEYS[batch]
        drawn = [(r, _num(r, x_key), _num(r, "accuracy")) for r in rows]
        drawn = [(r, x, y) for r, x, y in drawn if x is not None and y is not None and x > 0]
        front = set(pareto_front([r for r, _, _ in drawn], x_key))
        xs = [x for _, x, _ in drawn] or [1.0]
        lo, hi = min(min(xs), 1.0) / 1.25, max(max(xs), 1.0) * 1.25
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(min(accs) - pad, max(accs) + pad)
        ax.xaxis.set_major_locator(FixedLocator(_ticks(lo, hi)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        labels = []
        for i, (r, x, y) in enumerate(drawn):
            base = r.get("baseline")
            is_base = f"b{batch}" in base if isinstance(base, list) else bool(base)
            is_ref = bool(r.get("reference"))  # a point to beat (e.g. onnxruntime int8), always named
            ax.scatter(x, y, s=220 if is_base else 90 if is_ref else 55, marker="*" if is_base else "D" if is_ref
                       else "o", color=colour[str(r.get("method"))], edgecolors="black" if i in front else "none",
                       linewidths=1.2, zorder=4 if is_base or is_ref else 3)
            if is_ref:
                ax.axvline(x, color=colour[str(r.get("method"))], lw=0.8, ls=":", zorder=1)
            if label_all or i in front or is_base or is_ref:
                labels.append((x, y, str(r.get("name"))))
        if front:
            pts = sorted((drawn[i][1], drawn[i][2]) for i in front)
            # steps-pre: between two frontier speed-ups the best reachable accuracy is the faster point's.
            ax.plot([p[0] for p in pts], [p[1] for p in pts], drawstyle="steps-pre", color="0.35", lw=1.3,
                    ls="--", zorder=2)
        ax.axvline(1.0, color="0.6", lw=0.8, ls=":", zorder=1)
        ax.set_xlabel(f"measured speed-up over the baseline ({words}, log scale)")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="major", alpha=0.3)
        placements.append((ax, labels, [(x, y) for _, x, y in drawn]))
    axes[0].set_ylabel("accuracy")
    handles = [Line2D([], [], marker="o", ls="", color=colour[m], label=m) for m in methods]
    if any(r.get("reference") for r in rows):
        handles.append(Line2D([], [], marker="D", ls=":", color="0.4", label="reference"))
    handles += [Line2D([], [], marker="*", ls="", color="0.4", markersize=12, label="baseline"),
                Line2D([], [], marker="o", ls="", mfc="none", mec="black", label="on the frontier"),
                Line2D([], [], color="0.35", ls="--", label="Pareto frontier")]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.draw_without_rendering()  # settle the constrained layout: label collisions are tested in final pixels
    for ax, labels, markers in placements:
        _place_labels(ax, labels, markers, fontsize=7)
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
