"""The two onnxruntime baselines ``benchmarks/ort_segments_mr.py`` adds around the segments: the teacher after
onnxruntime's transformer graph fusion (``onnxruntime-int8-fused``) and the floor of an exit after layer 1
(embeddings + layer 1 alone). Both must compute the model they stand for: their float32 graphs are compared with
PyTorch on a tiny random BERT (tolerance 1e-4 on logits / hidden states; float32 kernels differ by ~1e-6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import benchmarks_on_path, make_tokenizer, tiny_model

from nimblebert.export.onnx import check_batches

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def script():
    with benchmarks_on_path():
        import ort_segments_mr

        yield ort_segments_mr


def test_fused_teacher_fuses_the_eager_export_and_computes_the_same_model(tmp_path: Path, script) -> None:
    from nimblebert.runtime.segments import session

    hf = tiny_model(layers=2, attn_implementation="eager").eval()
    tokenizer = make_tokenizer()
    ort_model, ops = script.fused_teacher(hf, tokenizer, tmp_path)
    assert ops.get("Attention") == 2 and ops.get("SkipLayerNormalization")  # the attention really was fused
    fused = session(tmp_path / "model_fused.onnx", threads=1)
    for b in check_batches(tokenizer, hf.config):  # padded batches of other sizes: the fused mask path holds
        with torch.no_grad():
            ref = hf(**b).logits.numpy()
        out = fused.run(None, {k: v.numpy() for k, v in b.items()})[0]
        np.testing.assert_allclose(out, ref, atol=1e-4)
        assert ort_model(b).shape == ref.shape  # the int8 session the benchmark times


def test_first_layer_graph_is_the_cores_embeddings_and_first_layer(tmp_path: Path, script) -> None:
    from nimblebert.methods.registry import get_method
    from nimblebert.model import NimbleModel
    from nimblebert.runtime.segments import session

    model = NimbleModel(tiny_model(layers=3), make_tokenizer(), "fastbert", {}, ["neg", "pos"])
    get_method("fastbert").attach(model)
    model.eval()
    script.first_layer_graph(model, tmp_path)
    graph = session(tmp_path / "layer1.onnx", threads=1)
    enc = model.encoder
    for b in check_batches(model.tokenizer, model.hf.config):
        with torch.no_grad():
            ref = enc.layer(enc.parts[0], enc.embed(b["input_ids"], b["token_type_ids"]),
                            b["attention_mask"][:, None, None, :].bool())[0]
        out = graph.run(None, {k: v.numpy() for k, v in b.items()})[0]
        mask = b["attention_mask"].numpy().astype(bool)  # padding positions are never read downstream
        np.testing.assert_allclose(out[mask], ref.numpy()[mask], atol=1e-4)
    assert (tmp_path / "layer1_int8.onnx").exists()
