"""From any NimbleModel to a static one: a plain transformers model with no knobs left.

Every export format writes a static model, so this is the one place that decides what "the model at
these knob settings" is:

- a static method (plain fine-tuning, TinyBERT students, exported sub-networks: ``method_spec.static``)
  is already one;
- ``teacher_only=True`` takes ``model.hf`` as it is (for FastBERT: the backbone with its own head, the
  model that ``--speed 0`` runs);
- a dynamic method can offer a **materializer** in its registry record,
  ``Method.extra["materialize"]``: ``materialize(model, **knobs) -> NimbleModel`` returning a static
  model (e.g. DynaBERT at ``width=0.5, depth=0.5`` as real smaller weights). A dynamic method without
  one (FastBERT's early exit, TR-BERT's token dropping) decides per sample at run time, which no single
  static graph expresses, and is refused with a pointer to ``--teacher-only`` (a method whose reason is
  different, e.g. "not available for this method yet", says so in ``Method.extra["export_refusal"]``).
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from ..model import NimbleModel

MATERIALIZE = "materialize"  # the key in ``Method.extra`` a dynamic method registers its materializer under
REFUSAL = "export_refusal"  # optional ``Method.extra`` text: why the method has no static form (yet)
DATA_DEPENDENT = ("its forward pass has data-dependent control flow (it decides per sample at run time), which "
                  "one static exported model cannot express")


def teacher_of(model: NimbleModel) -> NimbleModel:
    """``model.hf`` as it is, as a plain fine-tuned model (its method's extras and knobs dropped)."""
    plain = NimbleModel(model.hf, model.tokenizer, "finetune", {}, model.label_names)
    plain.source = model.source
    return plain


def to_static(model: NimbleModel, knobs: dict[str, Any] | None = None, teacher_only: bool = False) -> NimbleModel:
    """The static model to export (see the module docstring); raises :class:`UserError` when there is none.

    Args:
        model: a loaded model.
        knobs: knob values given by the user (``None`` values mean "not given").
        teacher_only: export ``model.hf`` as it is, whatever the method.
    """
    given = {k: v for k, v in (knobs or {}).items() if v is not None}
    where = model.source or "the model"
    if teacher_only:
        if given:
            raise UserError(f"--{next(iter(given)).replace('_', '-')} does not apply with --teacher-only "
                            "(the teacher is exported as it is)")
        return teacher_of(model)
    spec = model.method_spec
    if spec.static:
        spec.check_knobs(given)  # a knob given to a static model is a mistake: say so
        return model
    materialize = spec.extra.get(MATERIALIZE)
    if materialize is None:
        reason = spec.extra.get(REFUSAL, DATA_DEPENDENT)
        raise UserError(f"{where} is a {model.method} model: {reason}; export its teacher (the plain transformers "
                        f"model inside it) with --teacher-only")
    static = materialize(model, **spec.check_knobs(given))
    if not static.method_spec.static:
        raise RuntimeError(f"{model.method}'s materializer returned a {static.method} model, which is not static")
    static.source = static.source or model.source
    return static
