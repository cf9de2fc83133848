"""nimblebert: fast, small BERT-family encoders with a speed knob.

Six published methods (FastBERT, TinyBERT, DynaBERT, TR-BERT, SSA, NAS-BERT) on one core so that they
compose. ``nimblebert.load(folder)`` brings a trained model back with its knobs.
"""

__version__ = "0.1.0"

from .model import NimbleModel, load  # noqa: E402

__all__ = ["NimbleModel", "__version__", "load"]
