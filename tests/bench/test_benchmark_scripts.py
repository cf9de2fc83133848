"""The benchmark scripts' bookkeeping that decides what a published section says: which earlier rows an SSA
run carries over (and with which command), the command a section quotes, the TinyBERT students DynaBERT is
compared with. Hand-written files only; nothing is trained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import BENCHMARKS, benchmarks_on_path

OPTIONAL = {"fastapi", "uvicorn", "pydantic"}  # packages of an optional extra some scripts import at the top


@pytest.fixture(scope="module")
def scripts():
    with benchmarks_on_path():
        import common
        import dynabert_mr
        import ssa

        yield common, ssa, dynabert_mr


def verdict(gain: float) -> dict:
    return {"test_gain": gain, "spread": 0.01, "seeds": 3, "beats_spread": False}


def test_ssa_carries_over_only_the_datasets_not_run_with_the_command_that_measured_them(tmp_path, scripts) -> None:
    common, ssa, _ = scripts
    (tmp_path / "sections").mkdir()
    (tmp_path / "sections" / "ssa.md").write_text(
        "## SSA vs plain fine-tuning (`mr`, `chnsenti`)\n\n`python benchmarks/ssa.py --seeds 1,2` — MiniLM-L6\n")
    old = {"results": {"mr": {"plain": {}, "verdict": verdict(0.002)},
                       "chnsenti": {"plain": {}, "verdict": verdict(-0.001), "command": "python benchmarks/ssa.py X",
                                    "seeds": ["7"], "date": "then"},
                       "teacher_check": {"plain": {}}},
           "seeds": {"mr": ["1", "2"]}, "environment": {"date": "2026-01-01 00:00 UTC"}}
    (tmp_path / "ssa.json").write_text(json.dumps(old))

    carried = ssa.carry_over(tmp_path, ["chnsenti"])
    assert list(carried) == ["mr"]  # the dataset run now and the teacher check are not carried as datasets
    # an old file without per-dataset commands takes the command its section quotes (not the title's `mr`)
    assert carried["mr"]["command"] == "python benchmarks/ssa.py --seeds 1,2"
    assert carried["mr"]["seeds"] == ["1", "2"] and carried["mr"]["date"] == "2026-01-01 00:00 UTC"

    carried = ssa.carry_over(tmp_path, ["mr"])
    assert carried["chnsenti"]["command"] == "python benchmarks/ssa.py X" and carried["chnsenti"]["seeds"] == ["7"]
    assert ssa.carry_over(tmp_path, ["mr", "chnsenti"]) == {}
    assert ssa.carry_over(tmp_path / "nowhere", ["mr"]) == {}
    assert common.section_command("ssa", tmp_path) == "python benchmarks/ssa.py --seeds 1,2"
    assert common.section_command("absent", tmp_path) is None


def test_dynabert_compares_with_tinybert_students_not_teachers_or_ablations(tmp_path, scripts) -> None:
    _, _, dynabert_mr = scripts
    assert dynabert_mr.tinybert_students(tmp_path) == []
    row = {"flops_speedup": 2.0, "b32_speedup": 1.9, "b1_speedup": 1.8}
    rows = [{"label": "teacher (6×384)", "vs_teacher": None, **row},
            {"label": "TinyBERT 3×384", "vs_teacher": {"diff": -0.01}, **row},
            {"label": "TinyBERT 3×384 without augmentation", "vs_teacher": {"diff": -0.02}, **row},
            {"label": "3×384 fine-tuned directly", "vs_teacher": {"diff": -0.03}, **row}]
    (tmp_path / "tinybert_mr.json").write_text(json.dumps({"rows": rows}))
    students = dynabert_mr.tinybert_students(tmp_path)
    assert [s["label"] for s in students] == ["TinyBERT 3×384"] and students[0]["delta"] == -0.01


def test_results_page_keeps_variant_runs_next_to_the_benchmark_they_extend(scripts) -> None:
    common, _, _ = scripts
    stems = ["ssa", "zeta", "dynabert_mr_lr5e5", "trbert_mr_long", "dynabert_mr", "finetune_mr", "dynabert_mr_last",
             "fastbert_mr_x"]
    assert sorted(stems, key=common._section_rank) == [
        "finetune_mr", "fastbert_mr_x", "dynabert_mr", "dynabert_mr_lr5e5", "dynabert_mr_last", "trbert_mr_long",
        "ssa", "zeta"]


def test_readme_shows_only_the_featured_run_of_a_crowded_method(scripts) -> None:
    common, _, _ = scripts
    featured = common.README_FEATURED["dynabert"]
    names = ["finetune_mr", "dynabert_mr", "dynabert_mr_last", featured, "trbert_mr_long"]
    assert common.readme_sections(names) == ["finetune_mr", featured, "trbert_mr_long"]
    # Before the featured run is published, every run of the method stays in the README.
    assert common.readme_sections(["dynabert_mr", "dynabert_mr_last"]) == ["dynabert_mr", "dynabert_mr_last"]


def test_history_sections_leave_the_results_and_a_new_run_replaces_them(tmp_path, scripts, monkeypatch) -> None:
    common, _, _ = scripts
    docs = tmp_path / "docs"
    monkeypatch.setattr(common, "DOCS", docs)
    monkeypatch.setattr(common, "SECTIONS", docs / "sections")
    monkeypatch.setattr(common, "HISTORY", docs / "sections" / "history")
    monkeypatch.setattr(common, "ROOT", tmp_path)  # no README here: only docs/ is rebuilt
    common.HISTORY.mkdir(parents=True)
    (common.HISTORY / "dynabert_mr_aug.md").write_text("## an old recipe\n")
    (common.HISTORY / "fastbert_mr.md").write_text("## FastBERT, an earlier teacher\n")
    common.write_section("finetune_mr", "## the baseline\n", {"x": 1}, "**Baseline**")
    results, history = (docs / "results.md").read_text(), (docs / "history.md").read_text()
    assert "the baseline" in results and "old recipe" not in results and "old recipe" in history
    assert "FastBERT, an earlier teacher" in history
    common.write_section("fastbert_mr", "## FastBERT, today\n", {"x": 2})
    results, history = (docs / "results.md").read_text(), (docs / "history.md").read_text()
    assert "FastBERT, today" in results and "earlier teacher" not in history


def test_the_quoted_command_leaves_out_where_the_files_went(scripts, monkeypatch) -> None:
    """A section quotes the command that reproduces it: ``--docs DIR`` (a path on the machine that ran it) and
    ``--reuse`` change nothing measured, so they are left out; every other option stays, empty values included."""
    common = scripts[0]
    script = str(BENCHMARKS / "report.py")
    monkeypatch.setattr(sys, "argv", [script, "--data", "chnsenti", "--docs", "/tmp/x", "--reuse",
                                      "--docs=/tmp/y", "--seeds", "42", "--patience", ""])
    assert common.command_line() == "python benchmarks/report.py --data chnsenti --seeds 42 --patience ''"
    stored = "python benchmarks/report.py --data chnsenti --threads 1 --docs /work/logs/chn-docs"
    assert common.quoted_command(stored) == "python benchmarks/report.py --data chnsenti --threads 1"


def test_a_folder_on_the_command_line_is_relative_to_the_repository(scripts) -> None:
    """The sections' commands run from the repository root: a relative folder is under it wherever the script is
    started from; an absolute one stays as it is; an option left out (empty) stays empty instead of the root."""
    common = scripts[0]
    assert common.in_repo("runs/dyna") == str(common.ROOT / "runs" / "dyna")
    assert common.in_repo("/elsewhere/runs/dyna") == "/elsewhere/runs/dyna"
    assert common.in_repo("") == ""


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "common.py"))
def test_every_benchmark_builds_its_options(script: str, monkeypatch, capsys) -> None:
    """`--help` builds every script's parser (the shared options of common.add_options included: an option added
    twice fails here) without running anything."""
    import runpy

    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), "--help"])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    except ModuleNotFoundError as e:  # the [bench] extra (serve_baseline's FastAPI server), not in `make test`
        if e.name not in OPTIONAL:
            raise
        pytest.skip(f"{script} needs {e.name} (pip install -e '.[bench]')")
    assert stop.value.code == 0 and "--" in capsys.readouterr().out


def test_tinybert_small_means_over_seeds_pair_each_sentence_averaged_over_seeds(scripts) -> None:
    """tinybert_small.py's table of means: per recipe the mean validation and test accuracy over its seeds, and the
    paired interval of the per-sentence correctness averaged over seeds, against the teacher and the reference."""
    import numpy as np
    import tinybert_small  # importable: the scripts fixture holds benchmarks/ on the path

    teacher = np.array([1, 1, 1, 1, 0, 0, 1, 1])
    peer = [np.array([1, 1, 0, 0, 1, 0, 1, 1]), np.array([1, 0, 1, 0, 1, 0, 1, 1])]  # 5/8 and 5/8
    ours = [np.array([1, 1, 1, 0, 1, 0, 1, 1])]  # 6/8, one seed
    rows = [{"recipe": "peer", "seed": s, "peer": "x", "validation_accuracy": v, "test": {"accuracy": c.mean()},
             "train_seconds": None} for s, v, c in ((42, 0.5, peer[0]), (43, 0.7, peer[1]))]
    rows.append({"recipe": "joint", "seed": 42, "validation_accuracy": 0.65, "test": {"accuracy": ours[0].mean()},
                 "train_seconds": 10.0})
    groups = tinybert_small.aggregate(rows, [*peer, *ours], teacher, "peer", 200)
    assert groups["peer"]["seeds"] == [42, 43] and groups["peer"]["peer"] and not groups["joint"]["peer"]
    assert groups["peer"]["validation_accuracy"] == pytest.approx(0.6)
    assert groups["peer"]["test_accuracy"] == pytest.approx(0.625)
    assert "vs_reference" not in groups["peer"]  # the reference is not paired with itself
    # joint's 6/8 against the peer's mean over seeds, sentence by sentence: (0, +.5, +.5, 0, 0, 0, 0, 0) / 8
    assert groups["joint"]["vs_reference"]["diff"] == pytest.approx(0.125)
    assert groups["joint"]["vs_teacher"]["diff"] == pytest.approx(0.75 - 0.75)
    assert groups["joint"]["train_seconds"] == 10.0 and groups["peer"]["train_seconds"] is None
    # several references: each paired with every other recipe; the first also as vs_reference
    both = tinybert_small.aggregate(rows, [*peer, *ours], teacher, ["joint", "peer"], 200)
    assert set(both["peer"]["vs_references"]) == {"joint"} and set(both["joint"]["vs_references"]) == {"peer"}
    assert both["peer"]["vs_references"]["joint"]["diff"] == pytest.approx(-0.125)
    assert both["peer"]["vs_reference"] == both["peer"]["vs_references"]["joint"]
    assert "vs_reference" not in both["joint"]  # the first reference is not paired with itself
    assert tinybert_small.seed_folder(Path("r"), "joint", "42") == Path("r/joint")
    assert tinybert_small.seed_folder(Path("r"), "joint", "43") == Path("r/joint-s43")


def test_published_pages_show_paths_as_a_reader_has_them(scripts) -> None:
    common = scripts[0]
    text = f"`python benchmarks/int8_mr.py --teacher {common.ROOT}/runs/teacher-mr` and /elsewhere/runs/x"
    assert common.portable(text) == "`python benchmarks/int8_mr.py --teacher runs/teacher-mr` and /elsewhere/runs/x"


def test_nasbert_baselines_quote_every_command_that_made_them(scripts) -> None:
    import nasbert_mr

    chains = nasbert_mr.baseline_commands("runs/teacher-mr")
    assert set(chains) == {folder for folder, _ in nasbert_mr.BASELINES.values()}
    s3_dyna_w25 = chains["s3-dyna-w25"]  # the TinyBERT student, DynaBERT on it, the width-0.25 export, in order
    assert len(s3_dyna_w25) == 3
    assert "--student-layers 3 --out runs/s3 " in s3_dyna_w25[0]
    assert s3_dyna_w25[1].startswith("nimblebert train dynabert --model runs/s3 ")
    assert "--out runs/s3-dyna " in s3_dyna_w25[1]
    assert s3_dyna_w25[2] == "nimblebert export runs/s3-dyna --format hf --width 0.25 --out runs/s3-dyna-w25"
    assert "--student-layers 2 --out runs/s2 " in chains["s2"][0] and len(chains["s2"]) == 1


def test_nasbert_render_redraws_the_section_from_the_published_json(scripts, tmp_path: Path, monkeypatch) -> None:
    import nasbert_mr

    published = BENCHMARKS.parent / "docs" / "nasbert_mr.json"
    data = json.loads(published.read_text())
    (tmp_path / "nasbert_mr.json").write_text(json.dumps(data))
    monkeypatch.setattr(sys, "argv", ["nasbert_mr.py", "--render", "--docs", str(tmp_path)])
    nasbert_mr.main()
    md = (tmp_path / "nasbert_mr.md").read_text()
    assert md.startswith("## NAS-BERT on mr") and "| NAS-BERT 1/10 |" in md
    assert "then `nimblebert export runs/s2-dyna --format hf --width 0.25 --out runs/s2-dyna-w25`" in md
    assert json.loads((tmp_path / "nasbert_mr.json").read_text()) == data  # the measurements are not touched


def test_flops_gap_counts_products_apart_from_the_work_a_width_does_not_shrink(scripts) -> None:
    import flops_gap  # importable: the scripts fixture holds benchmarks/ on the path
    import torch
    import torch.nn.functional as F

    # a product big enough (34 MFLOPs a call) that dispatch cannot eat a fifth of it on a busy machine
    w = torch.randn(512, 512)
    x = torch.randn(128, 512)
    products, _ = flops_gap.product_share(lambda b: F.linear(b, w), [x] * 5)
    assert products > 0.8  # a pure product: nearly all its operator time counted as products
    elementwise, others = flops_gap.product_share(lambda b: F.layer_norm(F.gelu(b), (512,)), [x] * 5)
    assert elementwise == 0.0 and "gelu" in others  # no product at all: every microsecond is the rest

    row = {"batch": 1, "width": 0.25, "flops_x": 3.99, "measured_x": 2.85, "ratio": 0.714, "ms": 5.5}
    data = {"model": "runs/dyna", "data": "mr", "max_length": 64, "b1_examples": 100, "b32_examples": 320,
            "environment": {"cpu": "x"},
            "rows": [{**row, "mode": "eager", "products_ms": 4.17, "gflops": 36.0, "rest_ms": 1.33,
                      "rest_top": {"gelu": 0.05}}, {**row, "mode": "compiled"}]}
    md = flops_gap.render(data, "python benchmarks/flops_gap.py")
    assert "| 1 | 0.25 | eager | 5.500 | 3.99 | 2.85 | 0.71 | 4.170 | 36 | 1.330 | gelu 5% |" in md
    assert "| 1 | 0.25 | compiled | 5.500 | 3.99 | 2.85 | 0.71 | — | — | — | — |" in md
    assert "exits apart" not in md  # no exit rows measured: no second table

    exits = {"batch": 32, "speed": 0.9, "mean_layers": 1.55, "ms": 0.797, "flops_x": 3.27, "measured_x": 2.46,
             "ratio": 0.752, "products_ms": 0.609, "gflops": 75.0, "rest_ms": 0.188, "rest_top": {"tanh": 0.03},
             "vs_full_flops_x": 11.3, "vs_full_measured_x": 8.1, "vs_full_ratio": 0.717}
    md = flops_gap.render({**data, "exits": "runs/dyna-w25-fast", "exit_rows": [exits]}, "x")
    assert "runs/dyna-w25-fast at each speed" in md
    assert "| 32 | 0.9 | 1.55 | 0.797 | 3.27 | 2.46 | 0.75 | 0.609 | 75 | 0.188 | tanh 3% | 11.30 / 8.10 / 0.72 |" in md
