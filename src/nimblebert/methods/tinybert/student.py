"""TinyBERT's student: its shape, its layer map onto the teacher, and its initialisation.

Layer map (Jiao et al. 2020, §3.2 "Distillation objective", and the official ``task_distill.py``): with
N teacher and M student layers, student layer m learns from teacher layer g(m) = k·m, k = N/M, and the
embeddings from the embeddings (g(0) = 0). In hidden-state lists that begin with the embedding output,
student index j ↔ teacher index g(j); attention scores of student layer m ↔ teacher layer g(m).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.families import family_of
from ...errors import UserError
from .config import TinyBertConfig, parse_layers


def uniform_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """g(m) = k·m for m = 1..M with k = N/M (the paper's uniform strategy); 1-based teacher layers."""
    if student_layers < 1 or student_layers > teacher_layers:
        raise UserError(f"a student of {student_layers} layers cannot be distilled from a teacher of "
                        f"{teacher_layers}: use --student-layers between 1 and {teacher_layers}")
    if teacher_layers % student_layers:
        divisors = [m for m in range(1, teacher_layers + 1) if teacher_layers % m == 0]
        example = ",".join(str(round(m * teacher_layers / student_layers)) for m in range(1, student_layers + 1))
        raise UserError(f"the uniform layer map needs the teacher's {teacher_layers} layers to be a multiple of "
                        f"the student's {student_layers}: use --student-layers in {divisors}, or give the teacher "
                        f"layers yourself with --layer-map (e.g. --layer-map {example})")
    k = teacher_layers // student_layers
    return [k * m for m in range(1, student_layers + 1)]


def layer_map(cfg: TinyBertConfig, teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer g(m) (1-based) of each student layer m = 1..M: ``--layer-map`` or the uniform map."""
    given = parse_layers(cfg.layer_map, "--layer-map")
    if given is None:
        return uniform_layer_map(teacher_layers, student_layers)
    if len(given) != student_layers:
        raise UserError(f"--layer-map {cfg.layer_map!r} names {len(given)} teacher layers for a student of "
                        f"{student_layers}; give one per student layer")
    if max(given) > teacher_layers:
        raise UserError(f"--layer-map {cfg.layer_map!r}: the teacher has only {teacher_layers} layers")
    return given


def hidden_map(mapping: list[int]) -> list[int]:
    """Teacher hidden-state index of each student hidden state j = 0..M (index 0 = embeddings)."""
    return [0, *mapping]


def student_shape(cfg: TinyBertConfig, teacher_config: Any) -> dict[str, int]:
    """Layers, hidden, FFN and heads of the student (0 in the config = derived from the teacher), checked."""
    t = teacher_config
    hidden = cfg.student_hidden or t.hidden_size
    ffn = cfg.student_ffn or max(1, round(t.intermediate_size * hidden / t.hidden_size))
    heads = cfg.student_heads or t.num_attention_heads
    layers = cfg.student_layers or max(1, t.num_hidden_layers // 2)
    check_heads(heads, hidden, t.num_attention_heads)
    return {"layers": layers, "hidden": hidden, "ffn": ffn, "heads": heads}


def check_heads(heads: int, hidden: int, teacher_heads: int) -> None:
    """The attention loss compares (b, h, t, t) maps element-wise: the student needs the teacher's h."""
    if heads != teacher_heads:
        raise UserError(f"the student has {heads} attention heads but the teacher has {teacher_heads}: TinyBERT's "
                        f"attention loss matches the maps head by head, so use --student-heads {teacher_heads} "
                        "(or 0 for the teacher's)")
    if hidden % heads:
        multiples = ", ".join(str(heads * i) for i in (8, 16, 26, 32))
        raise UserError(f"--student-hidden {hidden} is not divisible by the {heads} heads; use a multiple of "
                        f"{heads} (e.g. {multiples})")


def _backbone_layers_prefix(model: nn.Module) -> str:
    fam = family_of(model)
    return f"{fam.backbone}.{fam.layers}."


def copy_teacher_layers(teacher: nn.Module, student: nn.Module, layers: list[int]) -> None:
    """Load the teacher's weights into the student: embeddings, pooler and classifier as they are, teacher layer
    ``layers[m]`` (1-based) into student layer m + 1. Every student weight must be covered (strict load)."""
    prefix = _backbone_layers_prefix(teacher)
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    state = {}
    for key, value in teacher.state_dict().items():
        hit = pattern.fullmatch(key)
        if hit is None:
            state[key] = value  # embeddings, pooler, classifier
            continue
        teacher_layer, rest = int(hit.group(1)) + 1, hit.group(2)
        # Every student layer that takes this teacher layer (a map may use one twice) gets a copy.
        for student_index, chosen in enumerate(layers):
            if chosen == teacher_layer:
                state[f"{prefix}{student_index}.{rest}"] = value
    student.load_state_dict(state, strict=True)


def build_student(teacher: nn.Module, cfg: TinyBertConfig, init: str, seed: int = 0) -> nn.Module:
    """A student of the same family and vocabulary as ``teacher`` with the config's shape.

    ``init``: 'teacher' copies the embeddings, head and layers ``--init-layers`` (default: the layer map)
    from the teacher; 'random' draws every weight from the model's initializer (seeded).
    """
    shape = student_shape(cfg, teacher.config)
    mapping = layer_map(cfg, teacher.config.num_hidden_layers, shape["layers"])
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = shape["layers"]
    config.hidden_size = shape["hidden"]
    config.intermediate_size = shape["ffn"]
    config.num_attention_heads = shape["heads"]
    config.nimblebert = None  # the student's own section is written when it is saved
    torch.manual_seed(seed)
    student = type(teacher)(config)
    if init == "teacher":
        t = teacher.config
        if (shape["hidden"], shape["ffn"]) != (t.hidden_size, t.intermediate_size):
            raise UserError(f"--student-init teacher copies the teacher's layers, so the student needs the teacher's "
                            f"hidden size {t.hidden_size} and FFN size {t.intermediate_size} (got {shape['hidden']} "
                            f"and {shape['ffn']}); use --student-init random for a narrower student")
        chosen = parse_layers(cfg.init_layers, "--init-layers") or mapping
        if len(chosen) != shape["layers"] or max(chosen) > t.num_hidden_layers:
            raise UserError(f"--init-layers {cfg.init_layers!r} must name {shape['layers']} teacher layers "
                            f"between 1 and {t.num_hidden_layers}")
        copy_teacher_layers(teacher, student, chosen)
    elif init != "random":
        raise ValueError(f"build_student: init must be 'teacher' or 'random', got {init!r}")
    return student.train(teacher.training)


def check_student(student: nn.Module, teacher: nn.Module, cfg: TinyBertConfig) -> list[int]:
    """Check a given student (e.g. from --model) against its teacher; return the layer map."""
    s, t = student.config, teacher.config
    if type(student) is not type(teacher):
        raise UserError(f"the student ({type(student).__name__}) and the teacher ({type(teacher).__name__}) must be "
                        "of the same model family")
    if s.vocab_size != t.vocab_size:
        raise UserError(f"the student's vocabulary ({s.vocab_size} tokens) differs from the teacher's "
                        f"({t.vocab_size}): both must read the same token ids")
    check_heads(s.num_attention_heads, s.hidden_size, t.num_attention_heads)
    return layer_map(cfg, t.num_hidden_layers, s.num_hidden_layers)


def has_trained_classifier(folder: str) -> bool | None:
    """Whether a local model folder's weights hold a classification head (None: cannot tell, e.g. a hub id)."""
    path = Path(folder)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    files = [f for f in files if f.name != "nimblebert.safetensors"]
    if not files:
        return None
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            if any(k.startswith("classifier.") for k in handle.keys()):
                return True
    return False
