"""An SSA model as the teacher of the other methods (issue 8: "serves as a teacher"): an SSA-Reg folder is a plain
fine-tuned classifier that FastBERT, TinyBERT and DynaBERT train from; a hybrid folder, whose classifier reads
the importance pooling and not the transformers head, is refused with one line that names ``--variant reg`` —
as ``--model`` and as a separate ``--teacher``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_tokenizer, tiny_model, toy_rows

from nimblebert.cli.main import main
from nimblebert.model import NimbleModel

LABELS = ["negative", "positive"]


def _ssa_folder(tmp_path: Path, variant: str) -> Path:
    folder = tmp_path / f"ssa-{variant}"
    model = NimbleModel(tiny_model(layers=4, seed=3), make_tokenizer(), "ssa", {"variant": variant}, LABELS)
    model.method_spec.attach(model)
    model.save(folder)
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for split, (n, seed) in {"train": (32, 0), "validation": (16, 1)}.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_rows(n, seed)))
    return folder


@pytest.mark.parametrize("method, flags", [
    ("fastbert", ["--model"]),
    ("tinybert", ["--teacher"]),
    ("dynabert", ["--model"]),
])
def test_ssa_reg_folder_is_a_teacher(tmp_path: Path, data: Path, method: str, flags: list[str]) -> None:
    reg = _ssa_folder(tmp_path, "reg")
    extra = {"tinybert": ["--aug-copies", "1", "--cache-dir", str(tmp_path / "cache")]}.get(method, [])
    out = tmp_path / method
    assert main(["train", method, *flags, str(reg), "--data", str(data), "--out", str(out), "--max-steps", "1",
                 "--batch-size", "8", "--max-length", "16", "--no-progress", *extra]) == 0
    assert (out / "config.json").exists()


@pytest.mark.parametrize("method, args", [
    ("fastbert", ["--model", "{hybrid}"]),
    ("tinybert", ["--teacher", "{hybrid}"]),
    ("tinybert", ["--model", "{plain}", "--teacher", "{hybrid}"]),  # the separate --teacher is checked too
    ("dynabert", ["--model", "{plain}", "--teacher", "{hybrid}"]),
])
def test_hybrid_folder_is_refused_as_teacher(tmp_path: Path, data: Path, capsys, method: str,
                                             args: list[str]) -> None:
    folders = {"hybrid": _ssa_folder(tmp_path, "hybrid"), "plain": tmp_path / "plain"}
    NimbleModel(tiny_model(layers=4, seed=4), make_tokenizer(), "finetune", {}, LABELS).save(folders["plain"])
    out = tmp_path / "out"
    assert main(["train", method, *[a.format(**folders) for a in args], "--data", str(data), "--out", str(out),
                 "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--variant reg" in err[0] and "ssa-hybrid" in err[0]
    assert not (out / "config.json").exists()


def test_a_trained_head_skips_fine_tuning_stages(tmp_path) -> None:
    """FastBERT's and TR-BERT's 'auto' stage 1 is skipped for any nimblebert folder whose head predicts (an SSA-Reg
    teacher included), and not for a hybrid SSA folder or a base model."""
    from conftest import make_tokenizer, tiny_model

    from nimblebert.model import NimbleModel, has_trained_head

    for variant, expected in (("reg", True), ("hybrid", False)):
        model = NimbleModel(tiny_model(layers=2), make_tokenizer(), "ssa", {"variant": variant}, ["neg", "pos"])
        model.method_spec.attach(model)
        model.save(tmp_path / variant)
        assert has_trained_head(str(tmp_path / variant)) is expected
    tiny_model(layers=2).save_pretrained(tmp_path / "base")
    assert not has_trained_head(str(tmp_path / "base")) and not has_trained_head(None)
