"""register_method / get_method / list_methods: the one table of methods.

A method is a :class:`Method` record of plain functions (no inheritance between methods): how it
adds its modules to a model, which training stages it runs, how it infers with its knobs. Adding a
method is one ``register_method`` call in its folder's ``__init__.py`` plus one import line in
``nimblebert/methods/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..core.encoder import EncoderOutput
    from ..model import NimbleModel
    from ..train.stages import Stage, TrainData, TrainOptions


@dataclass(frozen=True)
class Knob:
    """An inference-time setting, e.g. FastBERT's ``speed``."""

    name: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    type: type = float

    def check(self, value: Any) -> Any:
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise UserError(f"--{self.name.replace('_', '-')} must be a {self.type.__name__}, got {value!r}") from None
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise UserError(
                f"--{self.name.replace('_', '-')} {value} is out of range: use a value in [{self.low}, {self.high}]"
            )
        return value


@dataclass(frozen=True)
class Method:
    """What a method adds to the one core.

    Attributes:
        name: the CLI name (``nimblebert train NAME``).
        config_cls: dataclass of the method's options (saved in config.json's ``nimblebert`` section).
        attach: adds the method's modules to ``model.extras`` from ``model.method_config``; used both
            when training starts and when a saved model is loaded.
        stages: the training stages, run in order by the one trainer: ``stages(model, opts, data)`` with
            ``data`` a :class:`~nimblebert.train.stages.TrainData`.
        infer: one forward pass at inference with the given knob values.
        knobs: the inference knobs.
        static: True when the result is a plain transformers model (no extras, no knobs).
    """

    name: str
    config_cls: type
    attach: Callable[[NimbleModel], None]
    stages: Callable[[NimbleModel, TrainOptions, TrainData | None], list[Stage]]
    infer: Callable[..., EncoderOutput]
    knobs: tuple[Knob, ...] = ()
    static: bool = True
    help: str = ""
    extra: dict = field(default_factory=dict)

    def check_knobs(self, values: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, each value validated; unknown knobs are an error."""
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


def get_method(name: str) -> Method:
    from . import _load_all  # noqa: F401  (importing registers every built-in method)

    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[str]:
    from . import _load_all  # noqa: F401

    return sorted(_METHODS)
