"""From any NimbleModel to what an export format can hold: no knob left for a static format, or (formats that keep
nimblebert's modules, ``hf``) a structure fixed into the weights with the exits and token cuts still live.

This is the one place that decides what "the model at these knob settings" is:

- a stack of static methods (plain fine-tuning, TinyBERT students, exported sub-networks) already is one;
- ``teacher_only=True`` takes ``model.hf`` as it is (for FastBERT: the backbone with its own head, the model
  that ``--speed 0`` runs);
- a component whose structure is a knob can offer a **materializer** (``Method.materialize``:
  ``materialize(model, **knobs) -> NimbleModel``, e.g. DynaBERT at ``width=0.5, depth=0.5`` as real smaller
  weights, its component then *fixed* at those values);
- a component that decides per sample at run time (FastBERT's exits, TR-BERT's token cuts) has no static form:
  a format that keeps nimblebert's modules (``keep_modules``) keeps it live, with its knobs; any other refuses with
  a pointer to ``--teacher-only`` (a method whose reason differs says so in ``Method.export_refusal``).
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import UserError
from ..model import NimbleModel

DATA_DEPENDENT = ("its forward pass has data-dependent control flow (it decides per sample at run time), which "
                  "one static exported model cannot express")


def teacher_of(model: NimbleModel) -> NimbleModel:
    """``model.hf`` as it is, as a plain fine-tuned model (its stack's modules and knobs dropped)."""
    plain = NimbleModel(model.hf, model.tokenizer, "finetune", {}, model.label_names)
    plain.source = model.source
    return plain


def to_static(model: NimbleModel, knobs: dict[str, Any] | None = None, teacher_only: bool = False,
              keep_modules: bool = False, traces_core: bool = False) -> NimbleModel:
    """The model to export (see the module docstring); raises :class:`UserError` when there is none.

    Args:
        model: a loaded model.
        knobs: knob values given by the user (``None`` values mean "not given").
        teacher_only: export ``model.hf`` as it is, whatever the stack.
        keep_modules: the format keeps nimblebert's modules (exits, token policies stay live).
        traces_core: the format traces the core's forward pass into a graph (ONNX), so a structure the core runs
            beyond ``model.hf`` (a searched NAS-BERT network's chain of ops) needs no plain transformers form: a
            materializer that takes ``traced`` is told so.
    """
    given = {k: v for k, v in (knobs or {}).items() if v is not None}
    where = model.source or "the model"
    if teacher_only:
        if given:
            raise UserError(f"--{next(iter(given)).replace('_', '-')} does not apply with --teacher-only "
                            "(the teacher is exported as it is)")
        return teacher_of(model)
    checked = model.check_knobs(given)  # a knob the model does not have is a mistake: say so
    result = model
    for component in [c for c in model.stack if not c.fixed and c.spec.materialize is not None]:
        spec = component.spec
        extra = {"traced": True} if traces_core and "traced" in inspect.signature(spec.materialize).parameters else {}
        result = spec.materialize(result, **{k.name: checked[k.name] for k in spec.knobs}, **extra)
        result.source = result.source or model.source
    live = [c for c in result.stack if not c.fixed and not c.spec.static and c.spec.materialize is None]
    if not live:
        return result
    if keep_modules:
        fixed = [k.name for c in live for k in c.spec.knobs if k.name in given]
        if fixed:
            raise UserError(f"--{fixed[0].replace('_', '-')} is not fixed at export: {live[0].method}'s knobs stay "
                            "live in the exported folder; give them when you run it")
        return result
    top = live[0]
    reason = top.spec.export_refusal or DATA_DEPENDENT
    raise UserError(f"{where} is a {model.describe()} model whose {top.method} component cannot be exported in "
                    f"this format: {reason}; export its teacher (the plain transformers model inside it) with "
                    "--teacher-only, or use --format hf, which keeps it live")
