"""``export_model``: load a model folder, make it static, write it in one format, finish the folder last."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..model import FINISHED_MARKER, load
from .registry import ExportOptions, get_exporter
from .static import to_static


def export_model(
    source: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "onnx",
    knobs: dict[str, Any] | None = None,
    teacher_only: bool = False,
    options: ExportOptions | None = None,
) -> dict[str, Any]:
    """Export the model in ``source`` to ``out`` in format ``fmt``; returns the exporter's report.

    Files are written into ``out/.exporting`` and moved into ``out`` only after every check passed,
    ``config.json`` last: a failed export leaves no folder that looks finished.
    """
    options = options or ExportOptions()
    exporter = get_exporter(fmt)
    if options.int8 and not exporter.supports_int8:
        from .registry import list_formats

        with_int8 = ", ".join(n for n in list_formats() if get_exporter(n).supports_int8)
        raise UserError(f"--int8 does not apply to --format {fmt} (formats with int8: {with_int8})")
    out = Path(out)
    if out.exists() and Path(source).exists() and out.resolve() == Path(source).resolve():
        raise UserError(f"--out {out} is the model folder itself; give a new folder")
    model = load(source)
    given = {k: v for k, v in (knobs or {}).items() if v is not None}
    if exporter.extra.get("keeps_knobs") and not given and not teacher_only:
        static = model  # the format keeps the model dynamic: its knobs stay knobs
    else:
        static = to_static(model, knobs, teacher_only, keep_modules=exporter.keep_modules,
                           traces_core=bool(exporter.extra.get("traces_core")))
    out.mkdir(parents=True, exist_ok=True)
    (out / FINISHED_MARKER).unlink(missing_ok=True)
    for stale in [*out.glob("*.onnx"), out / "export.json"]:  # left by an earlier export, e.g. with --int8
        stale.unlink(missing_ok=True)
    shutil.rmtree(out / "ort-int8", ignore_errors=True)  # segments of an earlier --format ort-int8
    staging = out / ".exporting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        report = exporter.write(static, staging, options)
        for f in sorted(staging.iterdir(), key=lambda p: p.name == FINISHED_MARKER):
            os.replace(f, out / f.name)  # config.json goes last: it marks the folder finished
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fixed = {k: v for c in static.stack for k, v in c.fixed.items()}
    live = [k.name for k in static.knobs()]
    dropped = [k.name for k in model.knobs() if k.name not in fixed and k.name not in live]
    return {"format": fmt, "source": str(source), "out": str(out), "method": model.method,
            "exported_method": static.method, "exported_stack": static.describe(), "teacher_only": teacher_only,
            "fixed_knobs": fixed, "live_knobs": live, "dropped_knobs": dropped, **report}


def knobs_line(report: dict[str, Any]) -> str:
    """One line saying what became of the source's knobs in an export: fixed (at which values), still live, or
    dropped (``--teacher-only``, or a format with no control flow)."""
    fixed = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in report["fixed_knobs"].items())
    live, dropped = ", ".join(report["live_knobs"]), ", ".join(report["dropped_knobs"])
    parts = []
    if fixed:
        parts.append(f"fixed at export: {fixed}")
    if live:
        parts.append(f"still live: {live}")
    if dropped:
        why = "the teacher is exported as it is" if report["teacher_only"] else f"not in the {report['format']} format"
        parts.append(f"dropped ({why}): {dropped}")
    runtime = f" ({report['runtime']} runtime at load)" if report.get("runtime") in ("int8", "ort-int8") else ""
    return f"{report['format']} export{runtime}: " + ("; ".join(parts) if parts else "a static model, no knobs")
