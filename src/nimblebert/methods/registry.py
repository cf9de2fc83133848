"""register_method / get_method / list_methods: the one table of methods.

A method is a :class:`Method` record of plain functions (no inheritance between methods): how it adds its
modules to a model, which training stages it runs, and what it **contributes** to one inference pass (a Plan,
hooks, a head) with its knobs. A model folder holds a *stack* of methods (:class:`~nimblebert.model.Component`):
the one runner (:func:`nimblebert.inference.run`) asks every component of the stack for its contribution and
calls the core once, so the methods compose.

Adding a method is one ``register_method`` call in its folder's ``__init__.py`` plus its name in
:data:`nimblebert.methods._load_all.BUILTIN`. The table imports a built-in method's folder only when it is
first asked for (start-up stays fast, and ``nimblebert.model`` can stand below ``methods/``: it reads this
table, never a method's package).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    import torch

    from ..core.encoder import EncoderOutput, Hook
    from ..core.plan import Plan
    from ..model import NimbleModel
    from ..train.stages import Stage, TrainData, TrainOptions


@dataclass(frozen=True)
class Knob:
    """An inference-time setting, e.g. FastBERT's ``speed``.

    ``sweep``: the settings worth measuring, from the most accurate to the cheapest (``bench --sweep`` and the
    calibrated ladder take them when the user names none). ``full``: the value at which the knob leaves the model
    whole (FastBERT's speed 0, DynaBERT's width 1): the component then contributes nothing, which the contract test
    checks for every method. None: no such value (a string knob, a baseline mode).
    """

    name: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    type: type = float
    sweep: tuple = ()
    full: Any = None

    @property
    def flag(self) -> str:
        return f"--{self.name.replace('_', '-')}"

    def check(self, value: Any) -> Any:
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise UserError(f"{self.flag} must be a {self.type.__name__}, got {value!r}") from None
        if isinstance(value, float) and value != value:  # NaN passes every comparison
            raise UserError(f"{self.flag} must be a number, got nan")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            high = "" if self.high is None else self.high
            raise UserError(f"{self.flag} {value} is out of range: use a value in [{self.low}, {high}]")
        return value


@dataclass
class Contribution:
    """What one component of a model's stack adds to one inference pass.

    Attributes:
        plan: structure (which layers, heads and FFN neurons run); merged with the others' by
            :meth:`~nimblebert.core.plan.Plan.merged`. None = no change.
        hooks: called by the core after every layer (exits, token cuts), in the order of :attr:`Method.hook_order`.
        head: replaces the model's own classification head: ``head(out) -> logits`` on the core's output run
            with ``classify=False`` (SSA's importance pooling).
        after: called on the core's output once the pass is done (FLOPs of branches and policies, tokens kept).
    """

    plan: Plan | None = None
    hooks: list[Hook] = field(default_factory=list)
    head: Callable[[EncoderOutput], torch.Tensor] | None = None
    after: list[Callable[[EncoderOutput], None]] = field(default_factory=list)


# What a method does to the model it starts from, which decides the order methods stack in (see
# :func:`nimblebert.model.check_stack`): structure first (a new or retrained network), then token cuts, then exits.
STRUCTURE, TOKENS, EXITS = 0, 1, 2
ROLE_NAMES = {STRUCTURE: "structure", TOKENS: "token reduction", EXITS: "early exits"}


def _no_contribution(model: NimbleModel, batch: dict, knobs: dict[str, Any]) -> Contribution:
    return Contribution()


@dataclass(frozen=True)
class Method:
    """What a method adds to the one core.

    Attributes:
        name: the CLI name (``nimblebert train NAME``).
        config_cls: dataclass of the method's options (saved in its component of the folder's stack).
        attach: adds the method's modules to ``model.extras`` from ``model.method_config`` (the component's own
            options while it runs); used both when training starts and when a saved model is loaded.
        stages: the training stages, run in order by the one trainer: ``stages(model, opts, data)``.
        contribute: ``contribute(model, batch, knobs) -> Contribution``: what the method adds to one inference
            pass at these knob values (its own knobs only). It never runs the encoder itself.
        knobs: the inference knobs.
        static: True when the method leaves a plain transformers model (no knobs, no modules at inference).
        role: :data:`STRUCTURE`, :data:`TOKENS` or :data:`EXITS`: a method may start from a folder whose stack
            holds components of its own role or an earlier one, never a later one (their modules were trained
            on the weights it would change).
        new_network: training builds a new network (TinyBERT's student): the folder it starts from is its
            teacher, and none of that folder's components carry over.
        continues: training on a folder whose top component is this method continues that component (e.g.
            DynaBERT's ``--phases final``) instead of stacking a second one.
        trains_at_settings: training runs the components below at their ``train_settings`` (FastBERT distils its
            exits at every DynaBERT width), so their knobs stay live; a method without it retrains the model at one
            size and may not start from a folder whose structure is still a knob.
        hook_order: where its hooks run after a layer, among the stack's (smaller first): exits before token cuts,
            so that a row that leaves is not cut first.
        train_settings: ``train_settings(model) -> [knobs, ...]``: the settings a component trained *on top of*
            this one should be trained at (DynaBERT: its widths; TR-BERT: its default threshold). None: [{}].
        head_is_classifier: ``head_is_classifier(config) -> bool``: whether the transformers head is what predicts
            (a hybrid SSA model's is not: its classifier reads the importance pooling).
        teacher_hint: appended to the refusal when such a model is used as a base or a teacher.
        materialize: ``materialize(model, **knobs) -> NimbleModel``: this component at fixed knob values as real
            smaller weights (DynaBERT), for ``export``; None when the method decides per sample at run time.
        export_refusal: why the method has no static form, when ``materialize`` is None (default: data-dependent
            control flow).
        check_base: ``check_base(stack, spec)``: raises :class:`UserError` when the method cannot train on a folder
            with this stack (beyond the general order rules of :func:`nimblebert.model.check_stack`).
        check_together: ``check_together(model, knobs)``: raises :class:`UserError` when this component's knobs
            cannot go with the others' values (e.g. exits distilled at full depth, asked to run at a smaller one).
    """

    name: str
    config_cls: type
    attach: Callable[[NimbleModel], None]
    stages: Callable[[NimbleModel, TrainOptions, TrainData | None], list[Stage]]
    contribute: Callable[[NimbleModel, dict, dict[str, Any]], Contribution] = _no_contribution
    knobs: tuple[Knob, ...] = ()
    static: bool = True
    help: str = ""
    role: int = STRUCTURE
    new_network: bool = False
    continues: bool = False
    trains_at_settings: bool = False
    hook_order: int = 0
    train_settings: Callable[[NimbleModel], list[dict[str, Any]]] | None = None
    head_is_classifier: Callable[[dict[str, Any]], bool] = lambda config: True
    teacher_hint: str = ""
    materialize: Callable[..., NimbleModel] | None = None
    export_refusal: str = ""
    check_base: Callable[[list, str], None] | None = None
    check_together: Callable[[NimbleModel, dict[str, Any]], None] | None = None

    def check_knobs(self, values: dict[str, Any]) -> dict[str, Any]:
        """This method's knobs alone: defaults filled in, each value validated; unknown knobs are an error."""
        known = {k.name: k for k in self.knobs}
        for name, value in values.items():
            if value is not None and name not in known:
                raise UserError(
                    f"--{name.replace('_', '-')} does not apply to a {self.name} model "
                    f"(its knobs: {', '.join(known) or 'none'})"
                )
        return {k.name: k.check(values[k.name]) if values.get(k.name) is not None else k.default for k in self.knobs}


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def _import_builtin(name: str) -> None:
    from ._load_all import BUILTIN

    if name in BUILTIN and name not in _METHODS:
        importlib.import_module(f"{__package__}.{name}")


def get_method(name: str) -> Method:
    method = _METHODS.get(name)
    if method is not None:  # the usual case, several times per inference call: no import machinery
        return method
    _import_builtin(name)
    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}; known: {', '.join(list_methods())}")
    return _METHODS[name]


def list_methods() -> list[str]:
    from ._load_all import BUILTIN

    for name in BUILTIN:
        _import_builtin(name)
    return sorted(_METHODS)
