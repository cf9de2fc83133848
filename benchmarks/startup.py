"""Start-up: a whole ``nimblebert predict`` process on one sentence against a plain transformers script.

Each contender is a fresh Python process (the way a user runs a command), timed end to end, the contenders
interleaved round by round so that drift hits all alike; the median over ``--repeats`` rounds is reported.
Contenders: ``nimblebert predict MODEL`` on one JSON line, the same with another source tree (``--before``,
e.g. the main checkout, for a before/after comparison in one run), a plain transformers script that loads the
same folder and labels the same sentence, and ``python -c "import nimblebert"``. Then one ``python -X importtime``
run of the predict command, summarised by top-level package (cumulative microseconds).

    python benchmarks/startup.py --model runs/teacher-mr --before /path/to/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import ROOT, environment

SENTENCE = "a gorgeous , witty , seductive movie ."

PLAIN = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
torch.set_num_threads(1)
folder = sys.argv[1]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
texts = [json.loads(line)["text"] for line in open(sys.argv[2])]
with torch.inference_mode():
    probs = model(**tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)).logits.softmax(-1)
for p in probs:
    print(json.dumps({"label": model.config.id2label[int(p.argmax())], "score": float(p.max())}))
"""


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


# Packages whose import a command may or may not need: what `python -X importtime` is summarised by.
PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "datasets", "pandas", "pyarrow",
            "matplotlib", "onnx", "onnxruntime", "nimblebert")


def import_summary(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Milliseconds each package of :data:`PACKAGES` took to import (cumulative, where it was first imported,
    whoever imported it) in one ``python -X importtime`` run; absent = not imported."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True, cwd=ROOT)
    found: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") < 2:
            continue
        _, cumulative, name = line.split("|", 2)
        name = name.strip()
        if name in PACKAGES and cumulative.strip().isdigit():
            found[name] = round(int(cumulative) / 1000, 1)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/teacher-mr")
    ap.add_argument("--before", default=None, help="another nimblebert source tree (its src/ folder) to compare")
    ap.add_argument("--repeats", type=int, default=7)
    common.add_options(ap, bootstrap=False, threads_default=1)
    opts = ap.parse_args()
    common.use_threads(opts.threads)
    model = common.in_repo(opts.model)
    if not common.finished(model):
        raise SystemExit(f"{model} is missing: run benchmarks/finetune_mr.py first")
    work = Path(tempfile.mkdtemp(prefix="startup_"))
    texts = work / "one.jsonl"
    texts.write_text(json.dumps({"text": SENTENCE}) + "\n")
    plain = work / "plain.py"
    plain.write_text(PLAIN)

    def env_for(src: Path) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}

    here = env_for(ROOT / "src")
    predict = [sys.executable, "-m", "nimblebert", "predict", model, "--input", str(texts)]
    contenders = {"nimblebert predict": (predict, here),
                  "plain transformers script": ([sys.executable, str(plain), model, str(texts)], here),
                  "python -c 'import nimblebert'": ([sys.executable, "-c", "import nimblebert"], here)}
    if opts.before:
        contenders["nimblebert predict (before)"] = (predict, env_for(Path(opts.before)))
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for cmd, env in contenders.values():  # warm the file cache once
        run(cmd, env)
    for _ in range(opts.repeats):
        for name, (cmd, env) in contenders.items():
            times[name].append(run(cmd, env))
    rows = [{"name": n, "median_s": round(statistics.median(ts), 3), "min_s": round(min(ts), 3),
             "runs": [round(t, 3) for t in ts]} for n, ts in times.items()]
    imports = {"after": import_summary(predict, here)}
    if opts.before:
        imports["before"] = import_summary(predict, env_for(Path(opts.before)))
    data = {"model": opts.model, "sentence": SENTENCE, "rows": rows, "imports": imports, "environment": environment()}
    plain_s = next(r["median_s"] for r in rows if r["name"] == "plain transformers script")
    lines = ["| process | median s | min s | − plain script, s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['median_s'] - plain_s:+.2f} |")
    imp = ["| package | " + " | ".join(f"{k} ms" for k in imports) + " |", "|---|" + "---|" * len(imports)]
    for n in PACKAGES:
        cells = [str(v[n]) if n in v else "not imported" for v in imports.values()]
        imp.append(f"| {n} | " + " | ".join(cells) + " |")
    env = data["environment"]
    cpu = env.get("cpu", {})
    md = f"""## Start-up: `nimblebert predict` on one sentence against a plain transformers script

`{common.command_line()}`. Whole processes, {opts.repeats} interleaved rounds, median (and fastest) wall time;
model `{opts.model}`. "before" is the same command on the source tree given with `--before`.

{chr(10).join(lines)}

Import time of `nimblebert predict` by package (`python -X importtime`, cumulative where the package was first
imported, one run; nested: torch's time is inside transformers' when transformers imported it first):

{chr(10).join(imp)}

CPU: {cpu.get('model', '?')}; ISA: {', '.join(cpu.get('isa', [])) or '?'}; {opts.threads} thread(s), pinned;
torch {env['torch']}; {env['date']}.
"""
    common.publish("startup", md, data, headline=None, docs=common.docs_folder(opts))  # docs/ when not given
    print(md)


if __name__ == "__main__":
    main()
