"""The teacher of every distillation: a frozen model run by the core, and a snapshot of the student as its own
teacher.

The methods read different parts of one teacher run:

- TinyBERT (Jiao et al., Findings of EMNLP 2020, §3.1): the logits, the hidden states of the mapped layers and
  their pre-softmax attention scores, padding zeroed (:func:`zero_padding`), so that cached targets
  (:mod:`.cache`) stand in exactly for the teacher's;
- DynaBERT (Hou et al., NeurIPS 2020, §3.1-3.2): the logits and every hidden state, padding as the encoder
  leaves it — its official hidden-state MSE is unmasked, over padded positions too, so zeroing would change
  its loss;
- TR-BERT (Ye et al., NAACL 2021): the full model's logits (official ``--do_eval_logits``), through the cache.

One :class:`Teacher` gives all three; what differs is an argument of :meth:`Teacher.run`, not a class.
Scores are computed only when a loss reads them: they make the core run attention as explicit matrix
products instead of fused ``scaled_dot_product_attention``.

:class:`SnapshotTeacher` must stay apart: its weights are not known when the stage is built — they are the
student's as the stage starts (DynaBERT's width × depth stage distils the DynaBERT_W model that the width stage
produced) — and they must survive a restart. It builds a :class:`Teacher` on its first call.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core.encoder import CoreEncoder
from ..core.families import family_of
from ..io import load_tensors, save_tensors
from .fingerprint import tensors_fingerprint

if TYPE_CHECKING:
    from ..model import NimbleModel


@dataclass
class Targets:
    """The teacher's outputs for one batch, padded to the batch (zeros at padding unless the run kept it).

    hidden: the chosen hidden states, each (b, T, d_T); scores: the chosen pre-softmax attention scores,
    each (b, h, T, T), zero on padded query rows and key columns.
    """

    logits: torch.Tensor | None
    hidden: list[torch.Tensor]
    scores: list[torch.Tensor]


def zero_padding(hidden: list[torch.Tensor], scores: list[torch.Tensor], mask: torch.Tensor
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Hidden states (b, T, d) and scores (b, h, T, T) with every padded position set to 0.

    TinyBERT's official loss zeroes masked attention entries (≤ −100) in student and teacher alike; we do the
    same for every position that involves padding — also the padded query rows and padded hidden states,
    which the official code (padding every batch to 128) left in. They carry nothing to learn, and zeroing
    them makes the loss of a row independent of the batch it is in, which is what lets cached targets stand
    in exactly for the teacher's.
    """
    m = mask.to(hidden[0].dtype if hidden else scores[0].dtype)
    token = m[:, :, None]  # (b, T, 1)
    pair = (m[:, None, :, None] * m[:, None, None, :]).bool()  # (b, 1, T, T) both positions real
    return ([h * token for h in hidden],
            [torch.where(pair, s, torch.zeros((), dtype=s.dtype, device=s.device)) for s in scores])


class Teacher:
    """A frozen transformers classifier run by the core: eval mode (no dropout: deterministic targets, as the
    official teachers, which ``from_pretrained`` leaves in eval mode), no gradients.

    Deliberately not a submodule of the student: it is not saved, not trained, and not switched to train mode
    by the trainer. It follows the batch to its device on first use. ``examples_run`` counts the rows it has
    processed (tests check that a cached teacher runs once per example).
    """

    def __init__(self, hf: nn.Module) -> None:
        self.hf = hf.eval()
        for p in self.hf.parameters():
            p.requires_grad_(False)
        self.encoder = CoreEncoder(self.hf)
        self.examples_run = 0
        self._fingerprints: dict[bool, str] = {}

    def fingerprint(self, head: bool = True) -> str:
        """Hash of the weights the outputs depend on: all of them for logits; for hidden states and scores only
        the embeddings and layers (a pre-trained teacher gets a fresh random classifier at every load)."""
        if head not in self._fingerprints:
            backbone = f"{family_of(self.hf).backbone}."
            state = {k: v for k, v in self.hf.state_dict().items()
                     if head or (k.startswith(backbone) and ".pooler." not in k)}
            self._fingerprints[head] = tensors_fingerprint(state)
        return self._fingerprints[head]

    @torch.no_grad()  # not inference_mode: the online targets enter the student's loss, which autograd tracks
    def run(self, batch: dict[str, torch.Tensor], hidden_idx: list[int], score_idx: list[int], logits: bool = True,
            zero_pad: bool = True) -> Targets:
        """The teacher's targets for a batch, on the batch's device.

        Args:
            hidden_idx: the hidden states to return (0 = the embeddings' output, j = layer j's).
            score_idx: the layers (0-based) whose pre-softmax scores QKᵀ/√d_h + mask to return.
            logits: whether to run the classifier (else ``logits`` is None).
            zero_pad: zero every padded position of the hidden states and scores (TinyBERT's losses,
                :func:`zero_padding`); False keeps them as the encoder gives them (DynaBERT's unmasked MSE).
        """
        ids = batch["input_ids"]
        if next(self.hf.parameters()).device != ids.device:
            self.hf.to(ids.device)  # the trainer moved the student; the teacher follows on first use
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        out = self.encoder(ids, mask, batch.get("token_type_ids"), output_hidden_states=bool(hidden_idx),
                           output_scores=bool(score_idx), classify=logits)
        self.examples_run += ids.size(0)
        hidden = [out.hidden_states[j] for j in hidden_idx] if hidden_idx else []  # type: ignore[index]
        scores = [out.scores[a] for a in score_idx] if score_idx else []  # type: ignore[index]
        if zero_pad and (hidden or scores):
            hidden, scores = zero_padding(hidden, scores, mask)
        return Targets(out.logits.float() if logits else None, hidden, scores)

    def __call__(self, model: NimbleModel, batch: dict[str, torch.Tensor]) -> Targets:
        """The logits and every hidden state (``hidden[0]`` = the embeddings'), padding kept: what DynaBERT's
        objectives read. ``model``, the student, is not read; the signature is the one :class:`SnapshotTeacher`
        shares, so that an objective takes either."""
        return self.run(batch, list(range(self.encoder.num_layers + 1)), [], logits=True, zero_pad=False)


class SnapshotTeacher:
    """The student *as it is when the stage starts*, frozen: DynaBERT's width × depth stage distils from the
    DynaBERT_W model that the width stage produced.

    The snapshot is taken at the stage's first step and written to ``path`` (inside the trainer's
    checkpoint folder, which the trainer empties when a run starts and removes when it ends), so that a
    run killed during the stage and continued with ``--resume`` distils from the same teacher.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.teacher: Teacher | None = None

    def __call__(self, model: NimbleModel, batch: dict[str, torch.Tensor]) -> Targets:
        """:meth:`Teacher.__call__` of the snapshot, which the first call takes of ``model``."""
        if self.teacher is None:
            hf = copy.deepcopy(model.hf)
            if self.path is not None and self.path.exists():  # a resumed run: the stage's original teacher
                hf.load_state_dict(load_tensors(self.path, batch["input_ids"].device))
            elif self.path is not None and _is_main_process():
                save_tensors(self.path, hf.state_dict())
            self.teacher = Teacher(hf)
        return self.teacher(model, batch)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process
