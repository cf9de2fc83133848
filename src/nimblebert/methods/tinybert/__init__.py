"""TinyBERT: a small student distilled layer by layer from a fine-tuned teacher (Jiao et al., Findings of
EMNLP 2020).

``nimblebert train tinybert --teacher runs/teacher --data mr --student-layers 3 --out runs/tiny`` builds a
student (M layers, from the teacher's layers, at random, or from ``--model``), distils the embeddings,
attention scores and hidden states of teacher layers g(m) = (N/M)·m into it, then its predictions — on an
augmented training set, with the teacher's outputs cached so that the teacher runs once per example — and
optionally first on unlabelled text from the pre-trained teacher (``--general-data``). See
:mod:`.objective` for the losses and stages, :mod:`.student` for the layer map and initialisation, and
:mod:`nimblebert.distill` for what other methods share with it: the augmentation (``distill.augment``) and the
teacher with its output cache (``distill.teacher``, ``distill.cache``).

The result is the student alone: a plain ``BertForSequenceClassification`` folder (the training-time
projection is discarded), which ``AutoModelForSequenceClassification.from_pretrained`` loads by itself.
Speed comes from its size, so it has no inference knob.
"""

from __future__ import annotations

import dataclasses

from ...distill.augment import Augmenter, EmbeddingNeighbours, MaskedLMCandidates, augment_dataset, make_variants
from ...distill.cache import TeacherCache, build_cache
from ...distill.teacher import Teacher
from ...model import NimbleModel
from ..registry import Method, register_method
from .config import TinyBertConfig
from .objective import config_of, layer_losses, prediction_loss, stages
from .student import build_student, copy_teacher_layers, hidden_map, layer_map, uniform_layer_map

__all__ = [
    "TINYBERT", "Augmenter", "EmbeddingNeighbours", "MaskedLMCandidates", "Teacher", "TeacherCache",
    "TinyBertConfig", "attach", "augment_dataset", "build_cache", "build_student", "copy_teacher_layers",
    "hidden_map", "layer_losses", "layer_map", "make_variants", "prediction_loss", "stages",
    "uniform_layer_map",
]


def attach(model: NimbleModel) -> None:
    """Validate the options; TinyBERT adds no inference module (the projection lives only while training)."""
    model.method_config = {**dataclasses.asdict(config_of(model)),
                           **{k: v for k, v in model.method_config.items() if k == "student_init_used"}}


TINYBERT = register_method(
    Method(
        name="tinybert",
        config_cls=TinyBertConfig,
        attach=attach,
        stages=stages,
        static=True,
        new_network=True,
        help="TinyBERT (Jiao et al. 2020): a small student distilled layer by layer (embeddings, attention scores, "
             "hidden states, then predictions) from --teacher, on augmented data; the result is a plain, smaller "
             "transformers model",
    )
)
