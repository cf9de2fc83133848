"""nimblebert: fast, small BERT-family encoders with a speed knob.

Six published methods (FastBERT, TinyBERT, DynaBERT, TR-BERT, SSA, NAS-BERT) on one core so that they
compose. ``nimblebert.load(folder)`` brings a trained model back with its knobs.
"""

__version__ = "0.1.0"

__all__ = ["NimbleModel", "__version__", "load"]


def __getattr__(name: str):  # PEP 562: transformers is imported when a model is, not by `nimblebert --help`
    if name in ("NimbleModel", "load"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
