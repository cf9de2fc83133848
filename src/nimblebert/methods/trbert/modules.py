"""TR-BERT's token-selection policies and the hook that applies them inside the core's layer loop
(Ye et al., NAACL 2021, §3; official ``modeling_autobert.py`` ``BertEncoder``).

After each chosen layer ("cut") a small MLP reads every remaining token's hidden state and gives its keep
probability p_t = σ(W₂·GELU(W₁h_t)). Training samples a_t ~ Bernoulli(p_t); inference keeps p_t ≥ threshold.
Kept tokens really leave the tensors through :meth:`LoopState.keep_tokens` (a gather with index tensors,
not the official 0/1 "zoom" matmul); the next cut sees only the survivors (cuts are cumulative).

Always kept (never sampled, no log-probability): [CLS] (position 0, the pooler reads it), every [SEP], and
with ``keep_first_segment`` the first segment of a sentence pair (as the official QA / multiple-choice
variants keep the question). Deviation: the official code forces only [CLS]; keeping [SEP] costs a token or
two and keeps the segment structure the fine-tuned model saw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.encoder import LoopState

EPS = 1e-6  # the official log(p + 1e-6)


class TokenPolicy(nn.Module):
    """Linear(d→w), GELU, Linear(w→1), sigmoid: a keep probability per token (official ``linear_1``/``linear_2``)."""

    def __init__(self, hidden: int, width: int = 32) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(hidden, width)
        self.linear_2 = nn.Linear(width, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (b, t, d) -> keep probabilities (b, t), float32."""
        return torch.sigmoid(self.linear_2(F.gelu(self.linear_1(hidden))).squeeze(-1).float())

    def flops_per_token(self) -> int:
        """Matrix products only (2 FLOPs a multiply-add, as :mod:`nimblebert.core.flops`): 2dw + 2w."""
        return 2 * self.linear_1.in_features * self.linear_1.out_features + 2 * self.linear_2.in_features


def build_policies(hidden: int, cuts: list[int], width: int) -> nn.ModuleList:
    return nn.ModuleList(TokenPolicy(hidden, width) for _ in cuts)


def forced_tokens(batch: dict[str, torch.Tensor], special_ids: list[int], keep_first_segment: bool) -> torch.Tensor:
    """(b, t) bool: the tokens no policy may drop — position 0, every special token in ``special_ids``
    ([CLS], [SEP]), and with ``keep_first_segment`` the first segment of rows that have a second one."""
    ids = batch["input_ids"]
    forced = torch.zeros_like(ids, dtype=torch.bool)
    forced[:, 0] = True
    for i in special_ids:
        forced |= ids == i
    types = batch.get("token_type_ids")
    if keep_first_segment and types is not None:
        pair = (types == 1).any(dim=1, keepdim=True)  # (b, 1) rows with a second segment
        forced |= pair & (types == 0)
    return forced


def top_n_mask(scores: torch.Tensor, n: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(b, t) bool: per row, the ``n`` (b,) highest-scoring positions among ``allowed`` (b, t)."""
    scores = scores.float().masked_fill(~allowed, float("-inf"))
    order = scores.argsort(dim=1, descending=True, stable=True)  # (b, t)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.size(1), device=order.device).expand_as(order))
    return (ranks < n[:, None]) & allowed


def selection_nll(p: torch.Tensor, action: torch.Tensor, selectable: torch.Tensor) -> torch.Tensor:
    """ℓ_sel of one cut (official, METHODS.md §4): −Σ_t m_t [a_t log(p_t+ε) + (1−a_t) log(1−p_t+ε)] / Σ_t m_t,
    the length-normalised negative log-likelihood of the actions, over ``selectable`` tokens m (real tokens
    that are not forced; the official mask is all real tokens, [CLS] included). (b, t) -> (b,)."""
    a = action.float()
    nll = -(a * torch.log(p + EPS) + (1 - a) * torch.log(1 - p + EPS))
    m = selectable.float()
    return (nll * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


FORCED = "trbert.forced"  # the key of the forced-token mask in the core's per-token state


class CutHook:
    """Runs the policies after their layers and drops tokens, for inference or for a training rollout.

    Modes: ``sample`` (training: a ~ Bernoulli(p), or the heuristic's top-n action for ``guide_rows``, and ℓ_sel
    is accumulated in ``self.nll``), else a deterministic threshold (p ≥ ``threshold``) or, with ``fraction`` > 0,
    the policy's top ⌈fraction · n⌉ of a row's n selectable tokens at each cut, with ``drop_mode``
    "policy"; "random" / "first" keep the same number of tokens per row and cut as the policy would, chosen at
    random / the first ones (the baselines that show whether the policy learnt which tokens matter).

    Its per-token state (which tokens are forced, the heuristic's scores) lives in the core's
    ``LoopState.token_state`` and its results are indexed by original row, so rows may leave the batch between
    cuts (early exits stacked on token reduction): each row's figures are those of the cuts it reached.

    After the pass: ``kept`` (B, cuts) tokens each row kept at each cut (forced ones included; a row that left
    before a cut keeps the count it had), ``flops`` (B,) the policies' FLOPs (every real token entering a policy),
    ``nll`` (B,) Σ over cuts of ℓ_sel.
    """

    def __init__(self, policies: nn.ModuleList, cuts: list[int], forced: torch.Tensor, *, threshold: float = 0.5,
                 fraction: float = 0.0, drop_mode: str = "policy", sample: bool = False, detach_input: bool = False,
                 guide_rows: torch.Tensor | None = None, guide_scores: list[torch.Tensor] | None = None,
                 generator: torch.Generator | None = None, counts: torch.Tensor | None = None) -> None:
        self.policies = policies
        self.counts = counts  # (B, cuts) selectable tokens to keep per cut ("random" / "first"), from a policy pass
        self.at = {c - 1: i for i, c in enumerate(cuts)}  # model index of the layer -> cut number
        self.forced = forced  # (B, T) at the start; then in the loop's token state
        self.threshold, self.drop_mode, self.sample, self.detach_input = threshold, drop_mode, sample, detach_input
        self.fraction = fraction  # > 0: keep this share of each row's selectable tokens, the policy's top ones
        self.guide_rows = guide_rows  # (B,) by original row
        self.guide_scores = list(guide_scores) if guide_scores is not None else None
        self.generator = generator
        batch = forced.size(0)
        self.kept = forced.new_zeros(batch, len(cuts), dtype=torch.long)
        self.selected = torch.zeros(batch, len(cuts), dtype=torch.long, device=forced.device)  # kept, not forced
        self.flops = torch.zeros(batch, dtype=torch.float64, device=forced.device)
        self.nll = torch.zeros(batch, device=forced.device)
        self.probs: list[torch.Tensor] = []  # (b, t) per cut, for tests and logging

    def start(self, state: LoopState) -> None:
        """Hand the per-token state to the loop (it follows rows that leave and tokens that drop)."""
        self.kept[:] = state.lengths[:, None]  # until a cut: every real token
        state.token_state[FORCED] = self.forced
        for i, scores in enumerate(self.guide_scores or []):
            state.token_state[f"trbert.guide{i}"] = scores

    def __call__(self, state: LoopState) -> None:
        cut = self.at.get(state.layer)
        if cut is None:
            return
        policy = self.policies[cut]
        rows = state.rows  # (b,) original row of each live row
        hidden = state.hidden.detach() if self.detach_input else state.hidden
        with torch.enable_grad() if self.sample else torch.no_grad():
            p = policy(hidden) * state.mask  # (b, t) keep probability, 0 at padding (official: × mask)
        real = state.mask.bool()
        forced = state.token_state[FORCED] & real
        selectable = real & ~forced
        if self.sample:
            action = torch.bernoulli(p.detach(), generator=self.generator).bool() & selectable
            if self.guide_rows is not None and self.guide_scores is not None and bool(self.guide_rows[rows].any()):
                # Imitation guidance: the heuristic keeps its top-n tokens, n = round(Σ p) the policy's own
                # expected count, so guidance teaches which tokens, not how many.
                n = torch.round((p.detach() * selectable).sum(dim=1)).long()
                heuristic = top_n_mask(state.token_state[f"trbert.guide{cut}"], n, selectable)
                action = torch.where(self.guide_rows[rows][:, None], heuristic, action)
            with torch.enable_grad():  # the RL stage runs the frozen encoder under no_grad
                self.nll = self.nll.index_add(0, rows, selection_nll(p, action, selectable))
        else:
            if self.fraction > 0:  # the top of the policy's ranking: every saving reachable, whatever p's scale
                n = torch.ceil(self.fraction * selectable.sum(dim=1).float()).long()
                action = top_n_mask(p, n, selectable)
            else:
                action = (p >= self.threshold) & selectable
            if self.drop_mode != "policy":
                # The counts of the policy's own pass, cut by cut: the policy's probabilities on the baseline's
                # survivors would give other (smaller) counts at later cuts, an unfair comparison.
                n = self.counts[rows, cut] if self.counts is not None else action.sum(dim=1)
                if self.drop_mode == "random":
                    rand = torch.rand(p.shape, generator=self.generator, device="cpu").to(p.device)
                    action = top_n_mask(rand, n, selectable)
                else:  # "first": the first n selectable tokens (truncation)
                    position = -torch.arange(p.size(1), device=p.device, dtype=torch.float32).expand_as(p)
                    action = top_n_mask(position, n, selectable)
        self.probs.append(p.detach())
        keep = action | forced
        self.flops.index_add_(0, rows, state.lengths.double() * policy.flops_per_token())
        self.kept[rows, cut:] = keep.sum(dim=1, keepdim=True)
        self.selected[rows, cut] = action.sum(dim=1)
        state.keep_tokens(keep)
