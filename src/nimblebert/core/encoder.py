"""The one place that runs a BERT-family forward pass.

:class:`CoreEncoder` owns the layer loop over Hugging Face's own modules (embeddings, the Linear and
LayerNorm modules of each layer, the classification head). A :class:`~nimblebert.core.plan.Plan`
decides which layers run and at which width; hooks called after each layer may remove finished rows
from the batch (early exit) or drop tokens (token reduction), and the loop really runs on the smaller
tensors afterwards. With the full Plan and no hooks, the outputs equal the plain transformers model's
(guarded by ``tests/core/test_golden.py``).

The layer math is written out here rather than calling ``BertLayer.forward`` because the methods need
what that call hides: sliced widths (DynaBERT), pre-softmax scores (TinyBERT), shorter batches
(FastBERT, TR-BERT). It is also fewer Python-level operations per layer, which is what batch-1 latency
on a CPU is made of.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from . import tokens
from .families import Family, LayerParts, classify, embed, family_of, layer_parts
from .ops import OpSpec, run_ops
from .plan import FULL, Plan
from .tokens import RowLayout, attention_mask4d, gather_tokens, keep_index, pack_index, row_layout, unpack


@dataclass
class Step:
    """One layer step as it ran: which original rows, with how many real tokens, at which width."""

    layer: int
    rows: torch.Tensor  # (b,) original row ids that ran this layer
    lengths: torch.Tensor  # (b,) real tokens each of those rows had entering the layer
    heads: int
    ffn: int
    op: OpSpec | None = None  # a heterogeneous op (NAS-BERT, core/ops.py) instead of a BERT layer


@dataclass
class EncoderOutput:
    logits: torch.Tensor  # (B, C), in the original row order
    layers_run: torch.Tensor  # (B,) number of layers each sample ran
    steps: list[Step]
    hidden_states: list[torch.Tensor] | None = None  # [embeddings, layer 1, ...] — only without row removal
    scores: list[torch.Tensor] | None = None  # pre-softmax scores + additive mask, (B, h, T, T) per layer
    extras: dict = field(default_factory=dict)  # whatever hooks want to hand back (per-layer logits, ...)

    def add_flops(self, flops: torch.Tensor | Callable[[], torch.Tensor]) -> None:
        """Add (B,) FLOPs of what a hook or head ran (branches, policies) to ``extras["extra_flops"]``, which
        :func:`~nimblebert.core.flops.sample_flops` counts; each component adds its own, none overwrites.

        ``flops`` may be a function returning them: it is called only when the FLOPs are read
        (:meth:`extra_flops`), so that counting them costs nothing on a timed call that never asks (at batch 1,
        a FastBERT branch's FLOPs formula took about a tenth of a millisecond per call).
        """
        if callable(flops):
            self.extras.setdefault("extra_flops_lazy", []).append(flops)
            return
        flops = flops.double().cpu()
        current = self.extras.get("extra_flops")
        self.extras["extra_flops"] = flops if current is None else current.double().cpu() + flops

    def extra_flops(self) -> torch.Tensor | None:
        """The (B,) FLOPs that hooks and heads added (:meth:`add_flops`), the deferred ones computed now; None
        when none added any."""
        for fn in self.extras.pop("extra_flops_lazy", []):
            self.add_flops(fn())
        return self.extras.get("extra_flops")


class LoopState:
    """The live batch inside the layer loop, handed to hooks after every layer.

    Hooks may call :meth:`finish` (rows leave with their logits) and :meth:`keep_tokens` (tokens
    leave); the loop continues on what remains. A hook's own per-row state (b, ...) goes in
    :attr:`row_state` and its per-token state (b, t, ...) in :attr:`token_state`, under a key of its own: both
    are re-indexed here when rows leave or tokens drop, so that hooks of several methods (exits and token
    cuts) compose without knowing of each other.
    """

    def __init__(self, hidden: torch.Tensor, mask: torch.Tensor, num_labels: int) -> None:
        batch = hidden.size(0)
        self.hidden = hidden  # (b, t, d) the live rows' hidden states
        self.mask = mask  # (b, t) 1 = real token
        self.rows = torch.arange(batch, device=hidden.device)  # (b,) original row id of each live row
        self.lengths = mask.sum(dim=1)  # (b,)
        self.logits = hidden.new_zeros(batch, num_labels)  # (B, C) output buffer
        self.layers_run = torch.zeros(batch, dtype=torch.long, device=hidden.device)
        self.step = 0  # number of layers run so far by the live rows
        self.layer = -1  # model index of the last layer run
        self.extras: dict = {}
        self.row_state: dict[str, torch.Tensor] = {}  # (b, ...) per live row, kept in step with ``rows``
        self.token_state: dict[str, torch.Tensor] = {}  # (b, t, ...) per live token, kept in step with ``mask``
        self.removed = False  # whether any row has left (then outputs go through the row buffer)
        # Set by the encoder at CPU inference (see CoreEncoder.forward): the product rows' count for N real tokens
        # (the oneDNN runtimes' buckets, else N) and the key padding; then the layers read :attr:`layout` instead of
        # :attr:`pack`.
        self.bucket: Callable[[int], int] | None = None
        self.key_multiple: int | None = None
        self._masks: dict[str, object] = {}  # what the masks derive, made on first use, dropped when they change

    def _derived(self, name: str, make: Callable[[], object]):
        """``make()``, made once until the rows or tokens change (what the masks derive)."""
        if name not in self._masks:
            self._masks[name] = make()
        return self._masks[name]

    @property
    def attn_mask(self) -> torch.Tensor | None:
        """Boolean attention mask (b, 1, 1, t) of the live rows (see :func:`attention_mask4d`), cached until
        rows or tokens change. The explicit-scores path turns it into the additive mask itself."""
        return self._derived("mask4d", lambda: attention_mask4d(self.mask))

    @property
    def pack(self) -> torch.Tensor | None:
        """Flat positions (N,) of the live real tokens when the layers should run on them alone (see
        :func:`pack_index`), cached like :attr:`attn_mask`."""
        return self._derived("pack", lambda: pack_index(self.mask) if self.attn_mask is not None else None)

    @property
    def layout(self) -> RowLayout | None:
        """The live tokens' :class:`~nimblebert.core.tokens.RowLayout` when the encoder set :attr:`bucket` (else
        None), cached like :attr:`attn_mask`."""
        if self.bucket is None:
            return None
        return self._derived("layout", lambda: row_layout(self.mask, self.bucket, self.key_multiple))

    def finish(self, done: torch.Tensor, logits: torch.Tensor) -> None:
        """Rows with ``done`` (b,) True leave the batch with ``logits`` (b, C) as their answer."""
        if not bool(done.any()):
            return
        if bool(done.all()):  # every live row leaves (always so at batch 1): nothing left to re-index
            self.logits[self.rows] = logits.to(self.logits.dtype)
            self.layers_run[self.rows] = self.step
            self.removed = True
            # Empty views, not copies: the live batch is empty, as the general path below would leave it.
            self.hidden, self.mask, self.rows, self.lengths = (self.hidden[:0], self.mask[:0], self.rows[:0],
                                                               self.lengths[:0])
            for table in (self.row_state, self.token_state):
                for key, value in table.items():
                    table[key] = value[:0]
            self._masks.clear()
            return
        self.logits[self.rows[done]] = logits[done].to(self.logits.dtype)
        self.layers_run[self.rows[done]] = self.step
        live = ~done
        self.removed = True
        self.hidden, self.mask = self.hidden[live], self.mask[live]
        self.rows, self.lengths = self.rows[live], self.lengths[live]
        for table in (self.row_state, self.token_state):
            for key, value in table.items():
                table[key] = value[live]
        self._masks.clear()

    def keep_tokens(self, keep: torch.Tensor) -> torch.Tensor:
        """Keep the tokens where ``keep`` (b, t) is True ([CLS] always kept); the rest leave.

        Returns the gather index (b, k) (see :func:`keep_index`), so that a hook can carry its own per-token
        tensors (forced tokens, scores) along with the hidden states.
        """
        index, new_mask = keep_index(keep, self.mask)
        self.hidden = gather_tokens(self.hidden, index)
        for key, value in self.token_state.items():
            gather = index.view(*index.shape, *([1] * (value.dim() - 2))).expand(-1, -1, *value.shape[2:])
            self.token_state[key] = torch.gather(value, 1, gather)
        self.mask = new_mask
        self.lengths = new_mask.sum(dim=1)
        self._masks.clear()
        return index

    @property
    def empty(self) -> bool:
        return self.rows.numel() == 0


Hook = Callable[[LoopState], None]  # may also have ``start(state)``: called once before the first layer

# Bumped whenever any module is registered anywhere (``setattr(parent, name, module)``, ``ModuleList[i] = ...``):
# the only way rewiring, slicing, materializing or the int8 runtime can replace a layer's modules. The encoder
# rebuilds its cached per-layer parts when it changed; at inference nothing registers modules, so the cache holds.
_registrations = 0


def _count_registration(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
    global _registrations
    _registrations += 1


register_module_module_registration_hook(_count_registration)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _residual(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y + x``, the residual sum, in the promoted dtype (``y``: a product's fresh output, bfloat16 under bf16-onednn
    where ``x`` is float32: the sum is float32).

    Without autograd, added in place into ``y`` (or its float32 copy): at batch 32 on mr (~700 rows x 384) a
    sum into a new tensor works on three 1 MB buffers, past the 2 MB L2 cache of the Intel Xeon we measure on,
    in place on two; a bfloat16 + float32 sum also converts per element. Measured at 1 thread (Intel Xeon, AMX),
    one process, interleaved, same logits: the teacher at batch 32 1.06x faster in bf16-onednn, 1.01-1.02x in
    fp32 / int8, small models (tinybert3 -> dynabert w0.25 / w0.5 -> fastbert, bf16-onednn) 1.03-1.04x; batch 1
    1.00-1.04x. (700 x 384 float32 alone: 120 us out of place, 37 in place; bfloat16 + float32 175 against 82.)
    """
    if torch.is_grad_enabled():  # training, or a gradient through a model in eval mode
        return y + x
    return y.to(torch.promote_types(y.dtype, x.dtype)).add_(x)


def _same(rows: int) -> int:
    return rows


def narrow_linear(linear: nn.Module, x: torch.Tensor, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    """``linear`` restricted to its first ``rows`` outputs (with their biases) or its first ``cols`` inputs.

    A float32 ``nn.Linear`` runs on views of its weight; a module with its own ``narrow`` (the int8 runtime's
    :class:`~nimblebert.runtime.int8.Int8Linear`, which packs each width once) runs that.
    """
    if type(linear) is not nn.Linear and hasattr(linear, "narrow"):
        return linear.narrow(x, rows, cols)
    if rows is not None:
        return F.linear(x, linear.weight[:rows], None if linear.bias is None else linear.bias[:rows])
    return F.linear(x, linear.weight[:, :cols], linear.bias)


class CoreEncoder(nn.Module):
    """Runs a Hugging Face ``*ForSequenceClassification`` model under a Plan.

    Args:
        model: e.g. ``BertForSequenceClassification``; its modules are used, not copied.
        heads: the heads each layer really has, when fewer than the config says: a sub-network exported at a
            smaller width stores its dropped heads as zeros (transformers cannot store fewer heads of the same
            size), and the core then runs only the first ``heads`` — in training and at inference alike, so
            every method built on such a folder is physically narrow. Widths are fractions of these heads.
    """

    def __init__(self, model: nn.Module, heads: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.family: Family = family_of(model)
        cfg = model.config
        self.num_layers: int = cfg.num_hidden_layers
        self.stored_heads: int = cfg.num_attention_heads  # heads in the weight matrices (zeroed ones included)
        self.num_heads: int = heads or cfg.num_attention_heads  # heads that run at full width
        self.head_dim: int = cfg.hidden_size // cfg.num_attention_heads
        self.ffn_size: int = cfg.intermediate_size
        self.num_labels: int = cfg.num_labels
        # Heterogeneous ops (NAS-BERT) that a Plan with ``ops`` runs instead of the BERT layers; set by the method.
        self.op_modules: nn.ModuleDict | None = None
        self.train(model.training)  # follow the wrapped model's mode (dropout on or off)
        self._parts: list[LayerParts] | None = None
        self._parts_at = -1  # the value of ``_registrations`` when ``_parts`` was built

    @property
    def parts(self) -> list[LayerParts]:
        """The modules of every layer, looked up through the family's paths once and cached until any module is
        registered anywhere (which is how rewiring, slicing or the int8 runtime replace them)."""
        if self._parts is None or self._parts_at != _registrations:
            self._parts = layer_parts(self.model, self.family)
            self._parts_at = _registrations
        return self._parts

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return embed(self.model, self.family, input_ids, token_type_ids)

    def classify(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return classify(self.model, self.family, sequence_output)

    def layer(
        self,
        p: LayerParts,
        x: torch.Tensor,
        mask4d: torch.Tensor | None,
        heads: int | None = None,
        ffn: int | None = None,
        need_scores: bool = False,
        pack: torch.Tensor | None = None,
        layout: RowLayout | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One post-LayerNorm Transformer layer (Vaswani et al. 2017; BERT's layer) on ``x`` (b, t, d).

        ``heads`` / ``ffn`` keep only the first heads / FFN neurons as smaller matrix products.
        ``pack`` (N,), the flat positions of the real tokens (:func:`~nimblebert.core.tokens.pack_index`):
        every per-token product runs on those N tokens alone and only the attention sees the padded
        (b, t) layout; the output is then zero at padding (a value nothing reads: padding is masked).
        ``layout`` (:class:`~nimblebert.core.tokens.RowLayout`; inference only, not with ``need_scores``): instead
        of ``pack``: the real tokens gathered once into the product rows (as many as the layout says: the oneDNN
        runtimes' buckets), gathered back for attention (keys padded as the layout says: same result, the added
        keys are masked; faster on the CPU, see :data:`~nimblebert.core.tokens.KEY_MULTIPLE`) and at the output.
        Returns the layer output and, when ``need_scores``, the pre-softmax scores QKᵀ/√d_h + mask
        (b, h, t, t) that TinyBERT distils.
        """
        b, t, d = x.shape
        h = self.num_heads if heads is None else heads
        f = self.ffn_size if ffn is None else ffn
        n = h * self.head_dim
        training = self.model.training
        if layout is not None and need_scores:
            raise ValueError("the row layout pads keys; explicit scores run without it")
        # The int8 and oneDNN runtimes pack Q, K, V as one product: one call (and, in int8, one input
        # quantization) instead of three, at each narrower width too (their ``width``).
        fused = getattr(p.query, "fused_qkv", None)
        if fused is not None and h != self.stored_heads:
            fused = fused.width(n)
        if layout is not None:
            x = layout.rows(x.reshape(b * t, d))  # (R, d) the real tokens, then filler rows
        elif pack is not None:
            x = x.reshape(b * t, d).index_select(0, pack)  # (N, d) the real tokens only

        if fused is not None:  # 3 tensor ops instead of 7 (one scatter of the packed tokens instead of 3)
            if layout is not None:
                qkv = layout.to_keys(fused(x))  # (b, t', 3n), t' ≥ t
            else:
                qkv = fused(x) if pack is None else unpack(fused(x), pack, b, t)  # (b, t, 3n)
            q, k, v = qkv.view(b, qkv.size(1), 3, h, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (b, h, t', dh)
            if q.size(2) != t:  # queries at the real positions only; the added keys are masked
                q = q[:, :, :t]
        else:
            if h == self.stored_heads:
                q, k, v = p.query(x), p.key(x), p.value(x)  # (b, t, n) or (N, n) each
            else:
                q, k, v = (narrow_linear(m, x, rows=n) for m in (p.query, p.key, p.value))
            if layout is not None:  # attention's layout, keys padded as the layout says
                q, k, v = (layout.to_keys(z) for z in (q, k, v))
            elif pack is not None:  # attention needs the (b, t) layout: zeros at padding (masked as keys)
                q, k, v = (unpack(z, pack, b, t) for z in (q, k, v))
            q, k, v = (z.view(b, z.size(1), h, self.head_dim).transpose(1, 2) for z in (q, k, v))  # (b, h, t', dh)
            if q.size(2) != t:
                q = q[:, :, :t]

        scores = None
        if need_scores:
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5  # (b, h, t, t)
            if mask4d is not None:  # the additive mask, as BERT adds it: min-float at padding
                scores = scores.masked_fill(~mask4d, torch.finfo(scores.dtype).min)
            probs = F.dropout(torch.softmax(scores, dim=-1), p.attn_dropout_p, training)
            ctx = torch.matmul(probs, v)  # (b, h, t, dh)
        else:
            if layout is not None:
                mask4d = layout.key_mask
            ctx = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask4d, dropout_p=p.attn_dropout_p if training else 0.0
            )
        ctx = ctx.transpose(1, 2).reshape(b, t, n)  # (b, t, n)
        if layout is not None:
            ctx = layout.rows(ctx.reshape(b * t, n))  # (R, n)
        elif pack is not None:
            ctx = ctx.reshape(b * t, n).index_select(0, pack)  # (N, n)

        if h == self.stored_heads:
            a = p.attn_out(ctx)
        else:
            a = narrow_linear(p.attn_out, ctx, cols=n)
        if training:  # at inference not even a no-op call: at batch 1 every Python-level op shows
            a = F.dropout(a, p.dropout_p, True)
        a = p.attn_norm(_residual(a, x))  # (b, t, d) or (N, d)

        # the oneDNN runtimes may apply the activation inside the first product (their ``fused_act``)
        act = _identity if getattr(p.ffn_in, "fused_act", None) else p.ffn_act
        if f == self.ffn_size:
            y = p.ffn_out(act(p.ffn_in(a)))
        else:
            y = narrow_linear(p.ffn_out, act(narrow_linear(p.ffn_in, a, rows=f)), cols=f)
        if training:
            y = F.dropout(y, p.dropout_p, True)
        out = p.ffn_norm(_residual(y, a))
        if layout is not None:
            return layout.to_batch(out), scores
        return (unpack(out, pack, b, t) if pack is not None else out), scores

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        plan: Plan = FULL,
        hooks: Sequence[Hook] = (),
        output_hidden_states: bool = False,
        output_scores: bool = False,
        classify: bool = True,
    ) -> EncoderOutput:
        """Run the encoder under ``plan``; hooks run after every layer, in order.

        Rows still live after the last layer get their logits from the model's own head (unless
        ``classify`` is False: then the logits are zeros and the last hidden state is in
        ``extras["last_hidden"]``).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.embed(input_ids, token_type_ids)  # (B, T, d)
        state = LoopState(hidden, attention_mask, self.num_labels)
        hiddens = [hidden] if output_hidden_states else None
        scores_out: list[torch.Tensor] | None = [] if output_scores else None
        steps: list[Step] = []
        parts = self.parts
        # At inference on the CPU (training and explicit scores keep the plain path) the layers run on a row layout
        # (core/tokens.RowLayout: the real tokens gathered once, keys padded for the CPU attention kernel):
        # - products compiled per row count (the oneDNN runtimes: ``row_bucket``) always, at their buckets' counts;
        #   the others (fp32, int8) on batches of more than one row. Measured on mr (1 thread, Intel Xeon with AMX,
        #   one process, modes interleaved; noise about 5 %): at batch 32 fp32 / int8 1.02-1.12x faster with the
        #   layout, at batch 1 (nothing to gather) 0.96-1.05x: left out there.
        # - keys padded where the products are bfloat16 (batch 32 1.13-1.25x on the teacher, batch 1 too), and at
        #   batch > 1 in float32 (1.00-1.09x; at batch 1 0.95-0.98x): in the layout the padding rides on the gathers.
        products = getattr(parts[0].query, "compute_dtype", parts[0].query.weight.dtype) if parts else None
        inference = not self.model.training and not output_scores
        pad_keys = inference and hidden.device.type == "cpu" and products == torch.bfloat16
        # Not when the hidden states are asked for: at padding the layout leaves a copy of a real token, where the
        # packed path gives zeros, and DynaBERT's unmasked hidden-state loss reads the teacher's there (such calls,
        # distillation teachers, run the plain path with unpadded keys).
        if inference and not output_hidden_states and parts and hidden.device.type == "cpu":
            batched = hidden.size(0) > 1
            # ``row_bucket``: products that want bucket row counts on every call (the oneDNN float runtimes);
            # ``batch_row_bucket``: only on batches (int8, whose oneDNN products start at ONEDNN_MIN_ROWS rows)
            state.bucket = getattr(parts[0].query, "row_bucket", None)
            if state.bucket is None and (batched or pad_keys):
                state.bucket = getattr(parts[0].query, "batch_row_bucket", None) or _same
            state.key_multiple = tokens.KEY_MULTIPLE if pad_keys or batched else None
        for hook in hooks:  # hooks that keep per-row or per-token state register it before rows or tokens move
            start = getattr(hook, "start", None)
            if start is not None:
                start(state)
        if plan.ops is not None:  # a chain of heterogeneous ops: the same state, steps and hooks (core/ops.py)
            if self.op_modules is None:
                raise ValueError("the plan names ops, but this encoder has no op_modules")
            run_ops(self.op_modules, plan.ops, state, hooks, hiddens, steps)

        for i in plan.layer_indices(self.num_layers):
            heads = plan.heads_at(i, self.num_heads)
            ffn = plan.ffn_at(i, self.ffn_size)
            steps.append(Step(i, state.rows, state.lengths, heads, ffn))
            layout = state.layout
            if layout is not None:
                state.hidden, scores = self.layer(parts[i], state.hidden, state.attn_mask, heads, ffn, layout=layout)
            else:
                state.hidden, scores = self.layer(parts[i], state.hidden, state.attn_mask, heads, ffn, output_scores,
                                                  state.pack)
            state.step += 1
            state.layer = i
            if hiddens is not None:
                hiddens.append(state.hidden)
            if scores_out is not None:
                scores_out.append(scores)
            for hook in hooks:
                hook(state)
                if state.empty:  # every row has left: the later hooks have nothing to work on
                    break
            if state.empty:
                break

        logits = state.logits
        if not state.empty:
            state.layers_run[state.rows] = state.step
            state.extras["head_rows"] = state.rows
            if not classify:
                state.extras["last_hidden"] = state.hidden
            elif state.removed:
                logits[state.rows] = self.classify(state.hidden).to(logits.dtype)
            else:  # the common full-batch case: no scatter needed
                logits = self.classify(state.hidden)
        return EncoderOutput(
            logits=logits,
            layers_run=state.layers_run,
            steps=steps,
            hidden_states=hiddens,
            scores=scores_out,
            extras=state.extras,
        )
