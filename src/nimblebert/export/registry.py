"""register_exporter / get_exporter / list_formats: the one table of export formats.

An exporter writes a **static** model (see :func:`nimblebert.export.static.to_static`) into a folder in
one format (``onnx``, ``hf``, ...) and returns a small report (files written, checks against PyTorch).
Adding a format is one :func:`register_exporter` call; ``nimblebert export --format`` lists what is
registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..model import NimbleModel


@dataclass(frozen=True)
class ExportOptions:
    """What the user asked for beyond the format.

    Attributes:
        int8: also write a dynamically int8-quantized copy (formats that support it).
        opset: ONNX opset (formats that use one).
        check: compare the written model's outputs with PyTorch before finishing.
    """

    int8: bool = False
    opset: int = 17
    check: bool = True


@dataclass(frozen=True)
class Exporter:
    """One output format.

    Attributes:
        name: the ``--format`` value.
        help: one line for ``--help``.
        write: ``write(model, folder, options) -> report``; writes every file of the format into
            ``folder`` (a staging folder: the caller moves it into place, ``config.json`` last) and
            returns a JSON-serializable report. Raises :class:`UserError` when a check fails.
        supports_int8: whether ``--int8`` means something for this format.
        keep_modules: the format keeps nimblebert's modules and stack beside the transformers model (``hf``: a model
            folder that ``nimblebert.load`` runs with its exits and token cuts live), so those need not be static.
    """

    name: str
    help: str
    write: Callable[[NimbleModel, Path, ExportOptions], dict[str, Any]]
    supports_int8: bool = False
    keep_modules: bool = False
    extra: dict = field(default_factory=dict)


_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter) -> Exporter:
    if exporter.name in _EXPORTERS:
        raise ValueError(f"export format {exporter.name!r} is registered twice")
    _EXPORTERS[exporter.name] = exporter
    return exporter


def _load_builtin() -> None:
    from . import nimble, onnx  # noqa: F401  (importing registers the built-in formats: nimble, hf, onnx)


def get_exporter(name: str) -> Exporter:
    _load_builtin()
    if name not in _EXPORTERS:
        raise UserError(f"unknown export format {name!r}; known: {', '.join(sorted(_EXPORTERS))}")
    return _EXPORTERS[name]


def list_formats() -> list[str]:
    _load_builtin()
    return sorted(_EXPORTERS)
