"""benchmarks/report.py's bookkeeping on hand-written results: which folder and command a seed's model has, which
setting the goal table names, and that the section and chart are drawn from the JSON alone. Nothing is trained or
timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import benchmarks_on_path


@pytest.fixture(scope="module")
def report():
    with benchmarks_on_path():
        import report

        yield report


def test_seed_folders_and_commands(report) -> None:
    assert report.seed_runs("runs", "mr", 42) == "runs"
    assert report.seed_runs("runs", "mr", 43) == "runs/seed43"
    assert report.seed_runs("runs", "chnsenti", 43) == "runs/chnsenti/seed43"
    grid = {g["name"]: g for g in report.grid_of("runs", "runs/teacher-chnsenti", "chnsenti", 128, 43)}
    dyna = grid["dynabert"]
    assert dyna["out"] == "runs/chnsenti/seed43/dyna"
    # the dataset, the importance data and the length follow the teacher; the seed is given
    assert "--data chnsenti" in dyna["command"] and "--importance-data chnsenti" in dyna["command"]
    assert "--max-length 128" in dyna["command"] and dyna["command"].endswith("--seed 43")
    assert "--model runs/teacher-chnsenti" in dyna["command"]
    # an export is not training: no seed
    assert "--seed" not in grid["dynabert w0.5"]["command"]
    assert grid["dynabert w0.5 → fastbert"]["command"].startswith(
        "nimblebert train fastbert --model runs/chnsenti/seed43/dyna-w50 ")
    # seed 42 is the default every recipe already trains with: its commands are the published ones
    assert "--seed" not in report.grid_of("runs", "runs/teacher-mr", "mr", 64, 42)[0]["command"]


def row(label: str, seed: int, budgets: list[float], b1: float, b32: float, runtime: str = "int8",
        diff: float = -0.005, ort: tuple[float, float] = (1.0, 1.0)) -> dict:
    return {"label": label, "name": label.split(" @")[0].split(" ·")[0], "knobs": {}, "seed": seed,
            "runtime": runtime, "budgets": budgets, "accuracy": 0.80, "mean_layers": 3.0, "flops_speedup": 2.0,
            "vs_teacher": {"diff": diff, "low": diff - 0.01, "high": diff + 0.01}, "b1_p50_ms": 2.0,
            "b1_mean_ms": 2.1, "b1_p90_ms": 3.0, "b1_speedup": b1, "b1_mean_speedup": b1, "b32_ms_per_sample": 1.0,
            "b32_speedup": b32, "b1_over_flops": b1 / 2, "b32_over_flops": b32 / 2,
            "vs_ort_int8": {"b1": ort[0], "b32": ort[1]}}


def result() -> dict:
    base = {"kind": "baseline", "accuracy": 0.8087, "mean_layers": 6.0, "flops_speedup": 1.0,
            "vs_teacher": {"diff": 0.0, "low": 0.0, "high": 0.0}, "b1_p50_ms": 10.0, "b1_mean_ms": 10.0,
            "b1_p90_ms": 12.0, "b1_mean_speedup": 1.0, "b32_ms_per_sample": 5.0, "b1_over_flops": 1.0,
            "b32_over_flops": 1.0}
    return {
        "data": "mr", "command": "python benchmarks/report.py --threads 1", "teacher": "runs/teacher-mr",
        "length": 64, "seeds": [42, 43], "budgets": [0.0, 0.01, 0.03], "goals": {"0.01": 10.0, "0.03": 20.0},
        "goal_vs_ort_int8": 3.0, "big_batch": 32, "b1_examples": 100, "big_examples": 640, "rounds": 3,
        "bootstrap": 1000, "sweeps": {"speed": [0.5, 0.9]},
        "teacher_test": {"accuracy": 0.8087, "flops_per_sample": 5.88e8}, "teacher_validation": {"accuracy": 0.8075},
        "validation_examples": 400, "test_examples": 800, "missing": [],
        "grid": [{"name": "fastbert", "seed": 42, "command": "nimblebert train fastbert ..."},
                 {"name": "dynabert", "seed": 42, "command": "nimblebert train dynabert ..."}],
        "candidates": [{"knobs": {"speed": 0.5}}],
        "latency": {"batch1": {"transformers-sdpa": {"p50_ms": 10.0}, "transformers-eager": {"p50_ms": 11.0}}},
        "baselines": [{**base, "label": "transformers-sdpa", "group": "transformers", "runtime": "fp32 (sdpa)",
                       "b1_speedup": 1.0, "b32_speedup": 1.0, "vs_ort_int8": {"b1": 0.25, "b32": 0.3}},
                      {**base, "label": "onnxruntime-int8", "group": "onnxruntime", "runtime": "int8",
                       "b1_speedup": 4.0, "b32_speedup": 3.3, "vs_ort_int8": {"b1": 1.0, "b32": 1.0}}],
        "rows": [row("fastbert @ speed 0.5 · int8 · seed 42", 42, [0.01, 0.03], 5.0, 4.0, ort=(1.25, 1.21)),
                 row("dynabert @ width 0.5 · int8 · seed 42", 42, [0.03], 4.0, 8.0, diff=-0.02, ort=(1.0, 2.42)),
                 row("fastbert @ speed 0.9 · fp32 · seed 43", 43, [0.03], 3.0, 2.0, runtime="fp32", diff=-0.035)],
        "environment": {"cpu_model": "AMD EPYC", "isa": "avx512_vnni", "threads": 1, "affinity": [0],
                        "torch": "2.13.0", "date": "today", "minutes": 20, "timing_minutes": 9},
    }


def test_only_takes_names_and_folder_names_and_names_what_it_left_out(report) -> None:
    grid = report.grid_of("runs", "runs/teacher-mr", "mr", 64, 42)
    # a name with a comma in it can only be given by its folder's name
    kept, left = report.only(grid, "fastbert, dyna-fast-w75")
    assert [g["name"] for g in kept] == ["fastbert", "dynabert → fastbert, w0.75 fixed"]
    assert len(left) == len(grid) - 2 and "tinybert3" in left and "fastbert" not in left
    with pytest.raises(SystemExit, match="no model of the grid is called dyna-fast-w33"):
        report.only(grid, "fastbert,dyna-fast-w33")


def test_goal_table_names_the_fastest_setting_within_each_budget(report) -> None:
    lines = report.goal_table(result()).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    by = {(c[0], c[1], c[2]): c for c in cells}
    # seed 42 within 3 points: the fastest at batch 1 is FastBERT, at batch 32 DynaBERT (each batch its own)
    assert by[("42", "≤ 3 pt", "1")][3].startswith("fastbert @ speed 0.5")
    assert by[("42", "≤ 3 pt", "32")][3].startswith("dynabert @ width 0.5")
    assert by[("42", "≤ 3 pt", "32")][5] == "8.00× (40% of 20×)" and by[("42", "≤ 3 pt", "32")][6].startswith("2.42×")
    assert by[("42", "≤ 1 pt", "1")][5] == "5.00× (50% of 10×)"
    # nothing of seed 43 was chosen within 1 point: the table says so instead of leaving the seed out
    assert by[("43", "≤ 1 pt", "1")][3] == "none within the budget"
    assert by[("43", "≤ 3 pt", "1")][3].startswith("fastbert @ speed 0.9 · fp32")
    # chosen within 3 points on validation, it lost 3.5 on test: the Δ cell says so; seed 42's rows are within
    assert by[("43", "≤ 3 pt", "1")][4] == "-3.50 [-4.50, -2.50] · over the budget on test"
    assert not any("over the budget" in c[4] for k, c in by.items() if k[0] == "42")


def test_goal_table_without_students_lists_the_baselines_instead_of_a_verdict(report) -> None:
    empty = {**result(), "rows": []}
    text = report.goal_table(empty)
    # no row of "none within the budget" (that reads as a measured miss): one line naming the baselines
    assert "none within the budget" not in text and "|" not in text
    assert "No student trained" in text and "onnxruntime-int8 (int8) 0.8087, 4.00× / 3.30×" in text


def test_render_from_json_alone_writes_section_and_chart(report, tmp_path: Path, monkeypatch) -> None:
    data = result()
    (tmp_path / "efficiency_mr.json").write_text(json.dumps(data))
    monkeypatch.setattr(sys, "argv", ["report.py", "--render", "--docs", str(tmp_path)])
    report.main()
    md = (tmp_path / "efficiency_mr.md").read_text()
    assert (tmp_path / "efficiency_mr.png").read_bytes()[:4] == b"\x89PNG"
    assert "0.8087 on the 800 test" in md and "0.8075 on the 400 validation" in md
    assert "teacher 0.8087 test / 0.8075 validation;" in report.render(data, "c.png")[1]  # the README's headline
    assert "AMD EPYC (avx512_vnni), 1 thread(s), pinned to CPU 0" in md
    assert "| **onnxruntime-int8** | int8 |" in md
    assert json.loads((tmp_path / "efficiency_mr.json").read_text())["rows"] == data["rows"]  # JSON untouched


def test_two_hosts_of_one_cpu_name_are_told_apart(report) -> None:
    # Two Xeon VMs reported the same name and flags but ran plain transformers 2x apart: the title carries the date
    # (no two sections share a title) and the headline the baseline's own speed, which every x is over.
    md, headline = report.render(result(), "c.png")
    assert md.startswith("## Efficiency report on `mr` (AMD EPYC, today):")
    assert "plain transformers 10.00 ms at batch 1, 5.00 ms per sentence at batch 32; AMD EPYC" in headline
    later = result()
    later["environment"] = dict(later["environment"], date="2026-12-07 19:09 UTC")
    later["baselines"][0] = dict(later["baselines"][0], b1_p50_ms=14.7)
    md, headline = report.render(later, "c.png")
    assert md.startswith("## Efficiency report on `mr` (AMD EPYC, 2026-12-07):")
    assert "plain transformers 14.70 ms at batch 1" in headline


def test_settings_chosen_on_a_validation_subset_say_so(report, tmp_path: Path, monkeypatch, capsys) -> None:
    data = dict(result(), validation_examples=868, validation_total=1736)
    (tmp_path / "efficiency_mr.json").write_text(json.dumps(data))
    monkeypatch.setattr(sys, "argv", ["report.py", "--render", "--docs", str(tmp_path)])
    report.main()
    md = " ".join((tmp_path / "efficiency_mr.md").read_text().split())
    assert "0.8075 on 868 of the 1736 validation examples (a fixed random subset" in md
    # the README's headline too: a subset's accuracy must not read as the teacher's validation accuracy
    assert "teacher 0.8087 test / 0.8075 validation (868 of 1736 rows);" in report.render(data, "c.png")[1]
    monkeypatch.setattr(sys, "argv", ["report.py", "--val-examples", "0"])
    with pytest.raises(SystemExit) as e:
        report.main()
    assert e.value.code == 2 and "--val-examples 0" in capsys.readouterr().err


def test_a_named_run_on_another_cpu_is_published_beside_the_default_one(report, tmp_path: Path, monkeypatch,
                                                                       capsys) -> None:
    import common

    data = dict(result(), name="efficiency_mr_epyc")
    (tmp_path / "efficiency_mr_epyc.json").write_text(json.dumps(data))
    monkeypatch.setattr(sys, "argv", ["report.py", "--render", "--name", "efficiency_mr_epyc", "--docs", str(tmp_path)])
    report.main()
    assert (tmp_path / "efficiency_mr_epyc.md").exists() and (tmp_path / "efficiency_mr_epyc.png").exists()
    assert not (tmp_path / "efficiency_mr.md").exists()
    # placed right after the default report in docs/results.md, and shown in the README with it
    names = ["finetune_mr", "efficiency_mr_epyc", "efficiency_mr", "efficiency_chnsenti"]
    assert sorted(names, key=common._section_rank)[:2] == ["efficiency_mr", "efficiency_mr_epyc"]
    assert "efficiency_mr_epyc" in common.readme_sections(names)
    monkeypatch.setattr(sys, "argv", ["report.py", "--render", "--name", "../mr"])
    with pytest.raises(SystemExit) as e:
        report.main()
    assert e.value.code == 2 and "--name '../mr'" in capsys.readouterr().err


def test_readme_shows_the_efficiency_report_alone_once_published(report) -> None:
    import common

    names = ["efficiency_mr", "finetune_mr", "dynabert_mr", "dynabert_mr_final5", "ssa"]
    assert sorted(names, key=common._section_rank)[0] == "efficiency_mr"  # first in docs/results.md
    assert common.readme_sections(names) == ["efficiency_mr"]
    # before the report exists, one headline per benchmark (DynaBERT's featured run only)
    assert common.readme_sections(names[1:]) == ["finetune_mr", "dynabert_mr_final5", "ssa"]


def test_two_runs_filling_the_cache_at_once_lose_nothing(report, tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    first, second = report.Cache(path, "code"), report.Cache(path, "code")  # both read the (empty) file first
    first.put("a", {"accuracy": 0.5})
    second.put("b", {"accuracy": 0.6})
    first.put("c", {"accuracy": 0.7})
    assert set(report.Cache(path, "code").data) == {"a", "b", "c"}


def test_a_killed_grid_training_resumes_and_a_finished_one_trains_again(report, tmp_path: Path) -> None:
    import common

    from nimblebert.train.loop import CHECKPOINT_DIR

    out = tmp_path / "dyna"
    assert common.train_flags(out) == ["--overwrite"]  # nothing there yet
    (out / CHECKPOINT_DIR).mkdir(parents=True)
    (out / CHECKPOINT_DIR / "state.json").write_text("{}")
    assert common.train_flags(out) == ["--resume"]  # a run killed mid-way continues
    (out / CHECKPOINT_DIR / "state.json").unlink()
    (out / "config.json").write_text("{}")
    assert common.train_flags(out) == ["--overwrite"]  # a finished older run is replaced


def test_batch1_time_over_flops_is_the_mean_as_flops_are(report) -> None:
    # an early-exit row: its median sentence leaves early (p50 8x), the mean time is 4x, its mean FLOPs 4x fewer
    exits = dict(row("fastbert @ speed 0.9 · fp32 · seed 42", 42, [0.01], 8.0, 4.0, runtime="fp32"),
                 b1_mean_speedup=4.0, flops_speedup=4.0)
    data = dict(result(), rows=[exits])
    assert report.over_flops(exits, 1, 32) == 1.0 and report.over_flops(exits, 32, 32) == 1.0
    checks = report.flops_checks(data)
    assert "| fp32 | 1 | 1.00 (fastbert @ speed 0.9 · fp32 · seed 42) | 1.00 |" in checks
    assert "| 8.00 | 4.00 | 1.000 | 4.00 | 1.00 | 1.00 |" in report.main_table(data)


def test_composition_section_names_the_values_that_ran_not_the_defaults(report) -> None:
    import compose_mr

    data = json.loads((Path(compose_mr.ROOT) / "docs" / "compose_mr_long.json").read_text())
    for c in data["candidates"]:  # as if run with --sweep speed=0.3,0.6
        if "speed" in c["knobs"]:
            c["knobs"]["speed"] = 0.3 if c["knobs"]["speed"] < 0.6 else 0.6
    md, _ = compose_mr.render(data)
    assert "(speed 0.3, 0.6; keep_threshold 0, 0.5)" in md
    assert "b1 ÷ FLOPs (mean)" in md
