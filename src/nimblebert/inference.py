"""The one runner, batched inference over a loader, and the metrics every command reports.

:func:`run` is the only inference path: it asks every component of a model's stack what it contributes at the
given knob values (a Plan, hooks, a head; :class:`~nimblebert.methods.registry.Contribution`), merges them, and
calls the core encoder once. Rows leave (exits), tokens drop (token cuts) and widths shrink in that one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from .core.encoder import EncoderOutput
from .core.flops import sample_flops
from .core.plan import FULL
from .methods.registry import Contribution

if TYPE_CHECKING:
    from .model import NimbleModel


def contributions(model: NimbleModel, batch: dict[str, Any], knobs: dict[str, Any]) -> Contribution:
    """Every component's contribution at ``knobs`` (already checked: see ``NimbleModel.check_knobs``), merged:
    the plans into one (the smaller structure wins, :meth:`~nimblebert.core.plan.Plan.merged`), the hooks in
    ``Method.hook_order`` (exits before token cuts), at most one head. Components fixed at export contribute
    nothing: their structure is in the weights."""
    merged = Contribution(plan=FULL)
    ordered: list[tuple[int, int, Any]] = []
    for i, component in enumerate(model.stack):
        if component.fixed:
            continue
        spec = component.spec
        own = {k.name: knobs[k.name] for k in spec.knobs if k.name in knobs}
        with model.focus(i):
            part = spec.contribute(model, batch, own)
        merged.plan = merged.plan.merged(part.plan)  # type: ignore[union-attr]
        ordered += [(spec.hook_order, i, hook) for hook in part.hooks]
        merged.after += part.after
        if part.head is not None:
            if merged.head is not None:
                raise ValueError("two components of the stack replace the classification head")
            merged.head = part.head
    merged.hooks = [hook for _, _, hook in sorted(ordered, key=lambda x: (x[0], x[1]))]
    return merged


def run(model: NimbleModel, batch: dict[str, Any], knobs: dict[str, Any]) -> EncoderOutput:
    """One inference pass of ``model``'s whole stack at ``knobs`` (checked), through the core once (or, on the
    ``ort-int8`` runtime, through its onnxruntime segments: :mod:`nimblebert.runtime.segments`)."""
    if model.runtime == "ort-int8":
        from .runtime.segments import run as run_segments

        return run_segments(model, batch, knobs)
    parts = contributions(model, batch, knobs)
    out = model.encoder(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                        plan=parts.plan or FULL, hooks=parts.hooks, classify=parts.head is None)
    if parts.head is not None:
        out.logits = parts.head(out)
    for after in parts.after:
        after(out)
    return out


@dataclass
class Predictions:
    """Per-example results in the data's original order."""

    logits: torch.Tensor  # (N, C)
    labels: torch.Tensor | None  # (N,)
    layers: torch.Tensor  # (N,) layers run
    flops: torch.Tensor  # (N,) FLOPs of what ran
    tokens: torch.Tensor | None = None  # (N,) tokens kept after the last token cut (token reduction)
    cut_tokens: torch.Tensor | None = None  # (N, cuts) tokens kept at each token cut (token reduction)
    tokens_in: torch.Tensor | None = None  # (N,) real input tokens, when cut_tokens is given

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(dim=-1)


def move(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.inference_mode()
def predict_loader(model: NimbleModel, loader: DataLoader, **knobs: Any) -> Predictions:
    """Run ``model.infer`` over every batch; batches carry ``index`` so outputs return to input order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {"logits": [], "labels": [], "layers": [], "flops": [], "index": []}
    for batch in loader:
        batch = move(batch, device)
        out = model.infer(batch, **knobs)
        parts["logits"].append(out.logits.float().cpu())
        parts["layers"].append(out.layers_run.cpu())
        parts["flops"].append(sample_flops(model.encoder, out))
        parts["index"].append(batch["index"].cpu())
        # Token reduction methods report kept tokens per cut in extras["tokens_kept"] (b, cuts).
        if "tokens_kept" in out.extras:
            parts.setdefault("cut_tokens", []).append(out.extras["tokens_kept"].cpu())
            parts.setdefault("tokens_in", []).append(batch["attention_mask"].sum(dim=1).cpu())
        if "labels" in batch:
            parts["labels"].append(batch["labels"].cpu())
    model.train(was_training)
    order = torch.argsort(torch.cat(parts["index"]))
    cat = {k: torch.cat(v)[order] if v else None for k, v in parts.items()}
    cut = cat.get("cut_tokens")
    return Predictions(cat["logits"], cat["labels"], cat["layers"], cat["flops"],
                       tokens=cut[:, -1] if cut is not None and cut.size(1) else None, cut_tokens=cut,
                       tokens_in=cat.get("tokens_in"))


def macro_f1(pred: torch.Tensor, gold: torch.Tensor, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes (a class absent from both counts as 0)."""
    f1s = []
    for c in range(num_labels):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / num_labels


def metrics(p: Predictions, num_labels: int) -> dict[str, float]:
    """accuracy, macro_f1, examples, mean_layers, flops_per_sample (the ``evaluate --json`` contract)."""
    out: dict[str, float] = {
        "examples": int(p.logits.size(0)),
        "mean_layers": float(p.layers.float().mean()),
        "flops_per_sample": float(p.flops.mean()),
    }
    if p.cut_tokens is not None and p.tokens_in is not None:  # token reduction: tokens kept per cut
        out["mean_tokens_in"] = float(p.tokens_in.float().mean())
        out["mean_tokens_kept"] = [float(v) for v in p.cut_tokens.float().mean(dim=0)]  # type: ignore[assignment]
        out["kept_fraction"] = [float(v) for v in  # type: ignore[assignment]
                                (p.cut_tokens.float() / p.tokens_in[:, None].float()).mean(dim=0)]
    if p.labels is not None:
        pred = p.predicted
        out["accuracy"] = float((pred == p.labels).float().mean())
        out["macro_f1"] = macro_f1(pred, p.labels, num_labels)
    return out
