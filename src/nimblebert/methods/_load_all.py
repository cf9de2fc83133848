"""Imports every built-in method so that its ``register_method`` call runs. One line per method."""

from . import (
    dynabert,  # noqa: F401
    fastbert,  # noqa: F401
    finetune,  # noqa: F401
    nasbert,  # noqa: F401
    ssa,  # noqa: F401
    tinybert,  # noqa: F401
    trbert,  # noqa: F401
)
