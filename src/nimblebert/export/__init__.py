"""Export: a chosen model (or sub-network) as a static model in a deployable format.

``export_model(source, out, fmt)`` loads a model folder, turns it into a static model
(:func:`~nimblebert.export.static.to_static`: knobs fixed, or the teacher with ``teacher_only``) and
writes it with the format's exporter (``onnx``, ``hf``; :func:`register_exporter` adds more). A dynamic
method becomes exportable by registering ``Method.extra["materialize"]`` (see :mod:`.static`).
"""

from .api import export_model
from .registry import Exporter, ExportOptions, get_exporter, list_formats, register_exporter
from .static import MATERIALIZE, REFUSAL, teacher_of, to_static

__all__ = [
    "MATERIALIZE", "REFUSAL", "ExportOptions", "Exporter", "export_model", "get_exporter", "list_formats",
    "register_exporter", "teacher_of", "to_static",
]
