"""A battery of bad input across every command: each case ends with exit code 2, one line on stderr, no
traceback, and nothing that looks like a finished result.

Most cases run the real CLI in-process (``nimblebert.cli.main.main``): a subprocess costs about 10 s of
start-up on these machines. The cases whose failure would show only outside one process (bytes on standard
input, library warnings when a broken folder loads) run ``python -m nimblebert`` in a subprocess.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import make_tokenizer, tiny_model, toy_rows
from safetensors.torch import save_file

from nimblebert.cli.main import main


@dataclass
class World:
    root: Path
    base: Path  # a tiny random pretrained-style folder
    data: Path  # the toy task: train.csv, validation.jsonl, test.csv
    model: Path  # a fine-tuned finetune model of the toy task
    fast: Path  # a FastBERT model on it (knob: speed)


def _write_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = ("text", "label")) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def _quiet_main(argv: list[str]) -> int:
    code = main(argv)
    assert code == 0, argv
    return code


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad")
    base = root / "base"
    tiny_model(layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(base)
    make_tokenizer().save_pretrained(base)
    data = root / "toy"
    _write_csv(data / "train.csv", toy_rows(48, 1))
    (data / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_rows(16, 2)))
    _write_csv(data / "test.csv", toy_rows(16, 3))
    common = ["--data", str(data), "--batch-size", "8", "--max-length", "24", "--no-progress"]
    _quiet_main(["train", "finetune", "--model", str(base), "--out", str(root / "model"), "--max-steps", "2", *common])
    _quiet_main(["train", "fastbert", "--model", str(root / "model"), "--out", str(root / "fast"), "--max-steps", "1",
                 *common])
    return World(root, base, data, root / "model", root / "fast")


@dataclass
class Case:
    """``argv(world, tmp)`` → the command line; ``stdin``: bytes for standard input; ``words``: what the one
    stderr line must name; ``unfinished``: paths (relative to tmp) that must not hold a finished model."""

    argv: Callable[[World, Path], list[str]]
    words: tuple[str, ...] = ()
    stdin: bytes | None = None
    subprocess: bool = False
    unfinished: tuple[str, ...] = ("out",)
    setup: Callable[[World, Path], None] | None = None
    extra: dict = field(default_factory=dict)


def _train(w: World, t: Path, *more: str, data: Path | None = None, method: str = "finetune") -> list[str]:
    return ["train", method, "--model", str(w.base if method == "finetune" else w.model), "--out", str(t / "out"),
            "--data", str(data or w.data), "--max-steps", "1", "--batch-size", "8", "--max-length", "24",
            "--no-progress", *more]


def _data(t: Path, files: dict[str, bytes | str]) -> Path:
    folder = t / "data"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


GOOD_VAL = "text,label\ngood movie,pos\nbad movie,neg\n"


def _with_train(train: str | bytes, name: str = "train.csv", val: str = GOOD_VAL) -> Callable[[World, Path], list[str]]:
    return lambda w, t: _train(w, t, data=_data(t, {name: train, "validation.csv": val}))


def _eval(w: World, t: Path, *more: str, model: Path | None = None, data: Path | None = None) -> list[str]:
    return ["evaluate", str(model or w.model), "--data", str(data or w.data), "--max-length", "24", *more]


def _predict(w: World, t: Path, *more: str, model: Path | None = None) -> list[str]:
    return ["predict", str(model or w.model), "--max-length", "24", *more]


def _copy_model(w: World, t: Path, name: str = "m") -> Path:
    import shutil

    return Path(shutil.copytree(w.model, t / name))


def _truncated(w: World, t: Path) -> Path:
    m = _copy_model(w, t)
    blob = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    return m


def _torch_bin_only(w: World, t: Path) -> Path:
    m = _copy_model(w, t)
    (m / "model.safetensors").unlink()
    (m / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not read: we never unpickle")
    return m


def _sentence_transformers(w: World, t: Path) -> Path:
    """What sentence-transformers writes: a plain BertModel encoder (no classifier) plus its modules.json."""
    from conftest import tiny_config
    from transformers import BertModel

    m = t / "st"
    BertModel(tiny_config(layers=2)).save_pretrained(m)
    make_tokenizer().save_pretrained(m)
    (m / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type":
                                                 "sentence_transformers.models.Transformer"}]))
    (m / "config_sentence_transformers.json").write_text("{}")
    return m


def _wrong_head(w: World, t: Path) -> Path:
    """config.json says 3 labels but the saved classifier has 2 rows."""
    m = _copy_model(w, t)
    cfg = json.loads((m / "config.json").read_text())
    cfg["id2label"] = {"0": "negative", "1": "positive", "2": "neutral"}
    cfg["label2id"] = {"negative": 0, "positive": 1, "neutral": 2}
    cfg.get("nimblebert", {}).pop("label_names", None)
    (m / "config.json").write_text(json.dumps(cfg))
    return m


def _wrong_shapes(w: World, t: Path) -> Path:
    """A safetensors file whose tensors do not fit the config (another model's weights copied in)."""
    m = _copy_model(w, t)
    save_file({"bert.embeddings.word_embeddings.weight": tiny_model(hidden=16, heads=2).state_dict()[
        "bert.embeddings.word_embeddings.weight"].contiguous()}, str(m / "model.safetensors"))
    return m


def _bad_config(w: World, t: Path) -> Path:
    m = _copy_model(w, t)
    (m / "config.json").write_text('{"model_type": "bert", ')
    return m


def _finished_out(w: World, t: Path) -> None:
    (t / "out").mkdir()
    (t / "out" / "config.json").write_text("{}")


def _unfinished_out(w: World, t: Path) -> None:
    (t / "out" / "checkpoint").mkdir(parents=True)


CASES: dict[str, Case] = {
    # --- data files (train) ---
    "data-missing": Case(lambda w, t: _train(w, t, data=t / "nope"), ("nope",)),
    "data-is-a-file": Case(lambda w, t: _train(w, t, data=w.data / "train.csv"), ("is a file",)),
    "data-no-train-file": Case(lambda w, t: _train(w, t, data=_data(t, {"validation.csv": GOOD_VAL})),
                               ("no train file",)),
    "train-empty": Case(_with_train(""), ("train.csv", "empty")),
    "train-header-only": Case(_with_train("text,label\n"), ("train.csv", "no rows")),
    "train-wrong-label-column": Case(lambda w, t: _train(w, t, "--label-column", "stars"), ("stars",)),
    "train-wrong-text-column": Case(_with_train("sentence,label\ngood,pos\nbad,neg\n"), ("'text'",)),
    "train-one-class": Case(_with_train("text,label\ngood movie,pos\ngreat film,pos\nfun,pos\n",
                                        val="text,label\ngood,pos\n"), ("one label", "pos")),
    "train-not-utf8": Case(_with_train(b"text,label\n\xff\xfe bad,neg\ngood,pos\n"), ("UTF-8",)),
    "train-empty-text": Case(_with_train('text,label\ngood movie,pos\n"  ",neg\n'), ("empty",)),
    "train-missing-label": Case(_with_train("text,label\ngood movie,pos\nbad movie,\n"), ("no label",)),
    "validation-unknown-label": Case(_with_train("text,label\ngood movie,pos\nbad movie,neg\n",
                                                 val="text,label\nok movie,neutral\n"), ("neutral",)),
    "validation-broken-jsonl": Case(lambda w, t: _train(w, t, data=_data(t, {
        "train.csv": GOOD_VAL, "validation.jsonl": '{"text": "good", "label": "pos"}\n{"text": \n'})),
        ("line 2", "JSON")),
    "train-unsupported-type": Case(_with_train("good\tpos\n", name="train.txt"), ("no train file",)),
    # --- training flags and the output folder ---
    "max-steps-zero": Case(lambda w, t: _train(w, t, "--max-steps", "0"), ("--max-steps",)),
    "batch-size-negative": Case(lambda w, t: _train(w, t, "--batch-size", "-3"), ("--batch-size",)),
    "epochs-not-a-number": Case(lambda w, t: _train(w, t, "--epochs", "three"), ("--epochs",)),
    "train-without-model": Case(lambda w, t: ["train", "finetune", "--data", str(w.data), "--out", str(t / "out")],
                                ("--model",)),
    "train-model-missing": Case(lambda w, t: [*_train(w, t)[:3], str(t / "ghost"), *_train(w, t)[4:]], ("ghost",)),
    "out-is-a-file": Case(lambda w, t: _train(w, t), ("is a file",), unfinished=(),
                          setup=lambda w, t: (t / "out").write_text("x")),
    "out-finished-no-overwrite": Case(lambda w, t: _train(w, t), ("--overwrite",), unfinished=(),
                                      setup=_finished_out),
    "out-unfinished-no-resume": Case(lambda w, t: _train(w, t), ("--resume",), setup=_unfinished_out),
    "resume-nothing": Case(lambda w, t: _train(w, t, "--resume"), ("nothing to resume",)),
    "resume-finished": Case(lambda w, t: _train(w, t, "--resume"), ("finished",), unfinished=(),
                            setup=_finished_out),
    "fastbert-on-plain-data-labels": Case(lambda w, t: _train(w, t, method="fastbert", data=_data(t, {
        "train.csv": "text,label\ngood,a\nbad,b\n", "validation.csv": "text,label\ngood,a\n"})), ("labels",)),
    # --- model folders (evaluate / predict) ---
    "model-missing": Case(lambda w, t: _eval(w, t, model=t / "ghost"), ("ghost",), unfinished=()),
    "model-not-a-model": Case(lambda w, t: _eval(w, t, model=w.data), ("not a model folder",), unfinished=()),
    "model-truncated-safetensors": Case(lambda w, t: _eval(w, t, model=_truncated(w, t)),
                                        ("model.safetensors",), subprocess=True, unfinished=()),
    "model-pytorch-bin-only": Case(lambda w, t: _eval(w, t, model=_torch_bin_only(w, t)), ("safetensors",),
                                   unfinished=()),
    "model-sentence-transformers": Case(lambda w, t: _eval(w, t, model=_sentence_transformers(w, t)),
                                        ("classifier",), subprocess=True, unfinished=()),
    "model-head-does-not-fit": Case(lambda w, t: _eval(w, t, model=_wrong_head(w, t)), ("classifier",),
                                    unfinished=()),
    "model-weights-do-not-fit": Case(lambda w, t: _eval(w, t, model=_wrong_shapes(w, t)), ("model.safetensors",),
                                     unfinished=()),
    "model-config-not-json": Case(lambda w, t: _eval(w, t, model=_bad_config(w, t)), ("config.json",),
                                  unfinished=()),
    "evaluate-unknown-label": Case(lambda w, t: _eval(w, t, data=_data(t, {
        "validation.csv": "text,label\ngood,positive\n", "test.csv": "text,label\ngood,positive\nok,maybe\n"})),
        ("data row 2", "maybe", "positive"), unfinished=()),
    # --- knobs ---
    "knob-out-of-range": Case(lambda w, t: _eval(w, t, "--speed", "2", model=w.fast), ("--speed",), unfinished=()),
    "knob-wrong-type": Case(lambda w, t: _eval(w, t, "--speed", "fast", model=w.fast), ("--speed",), unfinished=()),
    "knob-not-a-number": Case(lambda w, t: _eval(w, t, "--speed", "nan", model=w.fast), ("--speed",), unfinished=()),
    "knob-of-another-method": Case(lambda w, t: _eval(w, t, "--width", "0.5", model=w.fast), ("--width",),
                                   unfinished=()),
    "knob-on-a-plain-model": Case(lambda w, t: _predict(w, t, "--speed", "0.5"), ("--speed",), stdin=b'"good"\n',
                                  unfinished=()),
    # --- standard input of predict ---
    "stdin-empty": Case(lambda w, t: _predict(w, t), ("no input texts",), stdin=b"", unfinished=()),
    "stdin-blank-lines": Case(lambda w, t: _predict(w, t), ("no input texts",), stdin=b"\n  \n", unfinished=()),
    "stdin-not-utf8": Case(lambda w, t: _predict(w, t), ("UTF-8",), stdin=b'{"text": "good \xff\xfe movie"}\n',
                           subprocess=True, unfinished=()),
    "stdin-broken-json": Case(lambda w, t: _predict(w, t), ("line 2", "JSON"), stdin=b'"good"\n{"text": \n',
                              unfinished=()),
    "stdin-empty-text": Case(lambda w, t: _predict(w, t), ("line 2", "empty"), stdin=b'"good"\n{"text": "  "}\n',
                             unfinished=()),
    "stdin-no-text-key": Case(lambda w, t: _predict(w, t), ("text",), stdin=b'{"sentence": "good"}\n',
                              unfinished=()),
    "stdin-number": Case(lambda w, t: _predict(w, t), ("line 1",), stdin=b"42\n", unfinished=()),
    "input-file-missing": Case(lambda w, t: _predict(w, t, "--input", str(t / "in.jsonl")), ("in.jsonl",),
                               unfinished=()),
    "input-is-a-folder": Case(lambda w, t: _predict(w, t, "--input", str(t)), ("folder",), unfinished=()),
    # --- other commands ---
    "export-model-missing": Case(lambda w, t: ["export", str(t / "ghost"), "--out", str(t / "out")], ("ghost",)),
    "export-dynamic-without-teacher-only": Case(lambda w, t: ["export", str(w.fast), "--out", str(t / "out")],
                                                ("--teacher-only",)),
    "bench-model-missing": Case(lambda w, t: ["bench", str(t / "ghost"), "--data", str(w.data), "--out",
                                              str(t / "out")], ("ghost",)),
    "bench-bad-sweep": Case(lambda w, t: ["bench", str(w.fast), "--data", str(w.data), "--out", str(t / "out"),
                                          "--sweep", "speed"], ("--sweep",)),
    "export-out-is-a-file": Case(lambda w, t: ["export", str(w.model), "--out", str(t / "out"), "--format", "hf"],
                                 ("is a file",), unfinished=(), setup=lambda w, t: (t / "out").write_text("x")),
    "bench-out-is-a-file": Case(lambda w, t: ["bench", str(w.model), "--data", str(w.data), "--out", str(t / "out"),
                                              "--no-onnx"], ("is a file",), unfinished=(),
                                setup=lambda w, t: (t / "out").write_text("x")),
    "evaluate-max-length-zero": Case(lambda w, t: _eval(w, t, "--max-length", "0"), ("--max-length",),
                                     unfinished=()),
    "evaluate-untrained-base": Case(lambda w, t: _eval(w, t, model=w.base), ("not fine-tuned", "train finetune"),
                                    unfinished=()),
    "data-prepare-unknown": Case(lambda w, t: ["data", "prepare", "imdb-ish"], ("imdb-ish",), unfinished=()),
    "unknown-method": Case(lambda w, t: ["train", "bertology", "--out", str(t / "out")], ("bertology",)),
}


def _lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.strip()]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    if case.setup:
        case.setup(world, tmp_path)
    argv = case.argv(world, tmp_path)
    if case.subprocess:
        proc = subprocess.run([sys.executable, "-m", "nimblebert", *argv], input=case.stdin or b"",
                              capture_output=True, timeout=300)
        code, stderr = proc.returncode, proc.stderr.decode("utf-8", "replace")
        assert proc.stdout == b"", proc.stdout
    else:
        if case.stdin is not None:
            # What Python gives a process whose stdin is a pipe: text over the raw bytes.
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(case.stdin), encoding="utf-8",
                                                               errors="surrogateescape"))
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code
        captured = capsys.readouterr()
        stderr = captured.err
        assert captured.out == "", captured.out
    lines = _lines(stderr)
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    for word in case.words:
        assert word.lower() in lines[0].lower(), lines[0]
    for rel in case.unfinished:
        assert not (tmp_path / rel / "config.json").exists(), f"{rel} looks finished"
        assert not (tmp_path / rel / "model.safetensors").exists(), f"{rel} holds weights"


def test_battery_is_broad(world: World, tmp_path: Path) -> None:
    """The issue asks for at least 30 kinds of bad input across every command."""
    assert len(CASES) >= 30
    commands = set()
    for i, case in enumerate(CASES.values()):
        (tmp_path / str(i)).mkdir()
        commands.add(case.argv(world, tmp_path / str(i))[0])
    assert commands >= {"train", "evaluate", "predict", "export", "bench", "data"}
