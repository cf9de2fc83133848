"""Export: a chosen model (or sub-network) in a deployable format.

``export_model(source, out, fmt)`` loads a model folder, fixes what the format needs fixed
(:func:`~nimblebert.export.static.to_static`: a structure knob baked into real smaller weights, or the teacher
with ``teacher_only``) and writes it with the format's exporter (``onnx``, ``hf``; :func:`register_exporter` adds
more). A method whose structure is a knob becomes exportable by registering ``Method.materialize``.
"""

from .api import export_model
from .registry import Exporter, ExportOptions, get_exporter, list_formats, register_exporter
from .static import teacher_of, to_static

__all__ = [
    "ExportOptions", "Exporter", "export_model", "get_exporter", "list_formats", "register_exporter", "teacher_of",
    "to_static",
]
