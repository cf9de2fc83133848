"""``nimblebert search SUPERNET --max-latency-ms 2 --batch 1 --data mr --out DIR``: NAS-BERT's model selection
under a latency and/or parameter budget, then the chosen network's two-stage distillation (see
:mod:`nimblebert.methods.nasbert.search`). Prints one JSON object: the chosen architecture, its parameters,
predicted and measured latency (error in %), the evaluated candidates, search and training time, the CPU."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from .common import add_data_flags, positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="NAS-BERT: pick the best network of a supernet under a budget and train it")
    p.add_argument("supernet", help="a supernet folder written by `nimblebert train nasbert`")
    p.add_argument("--out", required=True, help="output model folder of the searched network")
    add_data_flags(p)
    b = p.add_argument_group("budget")
    b.add_argument("--max-latency-ms", type=positive(float, "--max-latency-ms"), default=None,
                   help="predicted latency of one forward pass at --batch and --length, from the latency table")
    b.add_argument("--max-params", type=positive(int, "--max-params"), default=None,
                   help="parameters of the searched chain (embeddings and head, shared with the teacher, excluded)")
    b.add_argument("--batch", type=int, choices=[1, 32], default=1, help="batch size the latency budget is for")
    b.add_argument("--length", type=positive(int, "--length"), default=None,
                   help="sequence length the latency budget is for (default: the median real length of the "
                        "validation texts)")
    s = p.add_argument_group("search")
    s.add_argument("--latency-table", default=None,
                   help="JSON file of the per-op latency table; measured and written when missing or from another "
                        "CPU (default: $NIMBLEBERT_HOME/cache/nasbert/latency-<cpu>-t<threads>-...json)")
    s.add_argument("--lengths", type=positive(int, "--lengths"), nargs="+", default=[16, 32, 64, 128],
                   help="sequence lengths of the latency table's grid")
    s.add_argument("--repeats", type=positive(int, "--repeats"), default=20, help="timed calls per table entry")
    s.add_argument("--top", type=positive(int, "--top"), default=10,
                   help="T: candidates with the lowest summed block loss evaluated exactly on validation (paper: 100)")
    s.add_argument("--beam", type=positive(int, "--beam"), default=5000,
                   help="partial architectures kept while combining blocks")
    s.add_argument("--block-candidates", type=positive(int, "--block-candidates"), default=500,
                   help="at most this many live architectures per block are scored (a seeded sample when more: a "
                        "supernet trained without shrinking keeps thousands)")
    s.add_argument("--held-out-batches", type=positive(int, "--held-out-batches"), default=5,
                   help="validation batches that score block losses (paper: 5)")
    s.add_argument("--ignore-shrinking", action="store_true",
                   help="draw block candidates from the whole space, also the architectures progressive shrinking "
                        "removed (the ablation 'without shrinking' on one supernet)")
    s.add_argument("--search-only", action="store_true", help="print the search's result; train and save nothing")
    s.add_argument("--arch", default="",
                   help="skip the search: train this architecture (e.g. a hand-designed BERT-shaped baseline "
                        "128:mha,ffn,mha,ffn/128:mha,ffn,mha,ffn/128:mha,ffn,mha,ffn) through the same distillation; "
                        "the budget flags are then not needed")
    t = p.add_argument_group("training the chosen network (two-stage distillation)")
    t.add_argument("--init", choices=["supernet", "random"], default="supernet",
                   help="start from the supernet's weights, or from random ones as the paper (re-trained from scratch)")
    t.add_argument("--transfers", choices=["block", "size"], default="block",
                   help="hidden transfers of the network: 'block' before every block with ops and before the head, as "
                        "in the supernet (needed by --init supernet: the network starts as exactly the path the "
                        "search scored); 'size' only where the hidden size changes (a plain stack, --init random)")
    t.add_argument("--general-data", default="",
                   help="unlabelled text for general distillation (a .txt/.jsonl file or a built-in name / folder); "
                        "default: the task's own training texts")
    t.add_argument("--general-epochs", type=positive(float, "--general-epochs", allow_zero=True), default=3.0,
                   help="epochs of general distillation (0: skip it)")
    t.add_argument("--epochs", type=positive(float, "--epochs"), default=3.0,
                   help="epochs of each task stage (intermediate, then prediction)")
    t.add_argument("--lr", type=positive(float, "--lr"), default=5e-4,
                   help="learning rate of every distillation stage (the chain starts from the supernet, not from a "
                        "pre-trained model: on mr, 1e-4 for 60 + 60 steps stayed at chance, 5e-4 for 150 + 150 "
                        "reached 0.635)")
    t.add_argument("--prediction-epochs", type=positive(float, "--prediction-epochs"), default=None,
                   help="epochs of the prediction stage (default: --epochs)")
    t.add_argument("--train-embeddings", action="store_true",
                   help="also train the teacher's embeddings (default: kept as they are; the first transfer adapts)")
    t.add_argument("--temperature", type=positive(float, "--temperature"), default=1.0)
    t.add_argument("--batch-size", type=positive(int, "--batch-size"), default=32)
    t.add_argument("--max-steps", type=positive(int, "--max-steps"), default=None, help="optimizer steps per stage")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--resume", action="store_true", help="continue a killed training run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace a finished model in --out")
    t.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import encode, load_task
    from ..errors import UserError
    from ..io import write_json
    from ..methods.nasbert.latency import (
        cpu_identity,
        default_table_path,
        load_or_measure,
        measure_model,
        predict_latency,
    )
    from ..methods.nasbert.objective import net_stages, space_of
    from ..methods.nasbert.search import build_searched, search
    from ..methods.nasbert.space import format_arch, parse_arch
    from ..model import load
    from ..train.loop import check_output_folder, train
    from ..train.stages import TrainData, TrainOptions

    if args.max_latency_ms is None and args.max_params is None and not args.arch:
        raise UserError("give a budget (--max-latency-ms and/or --max-params) or an architecture (--arch)")
    if args.init == "supernet" and args.transfers != "block":
        raise UserError("--init supernet needs --transfers block (the supernet's ops were trained behind a transfer "
                        "per block); use --init random with --transfers size")
    supernet = load(args.supernet)
    if supernet.method != "nasbert" or supernet.method_config.get("role") != "supernet":
        raise UserError(f"{args.supernet} is not a NAS-BERT supernet (it is a {supernet.method} model); train one "
                        "with `nimblebert train nasbert --teacher TEACHER --data DATA --out DIR`")
    opts = TrainOptions(out=args.out, teacher=args.supernet, epochs=args.epochs, max_steps=args.max_steps,
                        batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed,
                        resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if not args.search_only:
        check_output_folder(opts)
    task = load_task(args.data, text_column=args.text_column, text_pair_column=args.text_pair_column,
                     label_column=args.label_column, label_names=supernet.label_names)
    train_enc = encode(task.train, supernet.tokenizer, args.max_length, task.has_pair)
    val_enc = encode(task.validation, supernet.tokenizer, args.max_length, task.has_pair)
    length = args.length or int(statistics.median(len(ids) for ids in val_enc["input_ids"]))

    space = space_of(supernet)
    torch.manual_seed(args.seed)
    table_path = Path(args.latency_table) if args.latency_table else default_table_path(space)
    grid = sorted(set(args.lengths))
    table = load_or_measure(table_path, supernet, space, grid, [args.batch], args.repeats, not args.no_progress)
    chosen_file = Path(args.out) / "search.json"
    block_transfers = args.transfers == "block"
    if args.arch:  # a given architecture (a baseline): no search, the same training and report
        import dataclasses

        from ..methods.nasbert.space import arch_params

        best_arch = parse_arch(args.arch, space)
        built = dataclasses.replace(space, block_transfers=block_transfers)
        report = {"arch": format_arch(best_arch), "params": arch_params(best_arch, built), "block_loss": None,
                  "predicted_ms": round(predict_latency(table, built, best_arch, args.batch, length), 4),
                  "batch": args.batch, "length": length, "budget": None, "given_arch": True, "candidates": [],
                  "search_seconds": 0.0, "latency_table": str(table_path), "supernet": args.supernet,
                  "environment": cpu_identity()}
        if not args.search_only:
            chosen_file.parent.mkdir(parents=True, exist_ok=True)
            write_json(chosen_file, report)
    elif args.resume and chosen_file.is_file():
        # A killed run continues with the architecture it chose (a re-run search could choose another one if the
        # latency table were measured anew, and the checkpoint only fits its own architecture).
        report = json.loads(chosen_file.read_text())
        best_arch = parse_arch(report["arch"], space)
    else:
        found = search(supernet, val_enc, table, batch=args.batch, length=length,
                       max_latency_ms=args.max_latency_ms, max_params=args.max_params, top=args.top, beam=args.beam,
                       block_candidates=args.block_candidates, held_out=args.held_out_batches,
                       batch_size=args.batch_size, seed=args.seed, block_transfers=block_transfers,
                       shrunk=not args.ignore_shrinking)
        best = found["best"]
        best_arch = best.arch
        report = {"arch": format_arch(best.arch), "params": best.params, "block_loss": best.loss,
                  "predicted_ms": round(best.latency_ms, 4), "batch": args.batch, "length": length,
                  "budget": {"max_latency_ms": args.max_latency_ms, "max_params": args.max_params},
                  "candidates": [c.as_dict() for c in found["candidates"]], "feasible": found["feasible"],
                  "block_candidates": found["block_candidates"], "search_seconds": found["search_seconds"],
                  "lookup_seconds": found["lookup_seconds"], "latency_table": str(table_path),
                  "shrunk_space": not args.ignore_shrinking,
                  "supernet": args.supernet, "environment": cpu_identity()}
        if not args.search_only:
            chosen_file.parent.mkdir(parents=True, exist_ok=True)
            write_json(chosen_file, report)  # before training: what --resume continues with
    if not args.search_only:
        torch.manual_seed(args.seed)
        model = build_searched(supernet, best_arch, args.init, block_transfers)
        general = None
        if args.general_epochs > 0:
            if args.general_data:
                from ..distill.texts import general_dataset

                general = general_dataset(args.general_data, model.tokenizer, args.max_length)
            else:  # the task's own texts, unlabelled
                general = train_enc.remove_columns([c for c in ("labels",) if c in train_enc.column_names])
        stages = net_stages(model, supernet.hf, opts, TrainData(task, train_enc, val_enc), general,
                            args.general_epochs, args.epochs, args.lr, args.temperature, args.prediction_epochs,
                            args.train_embeddings)
        summary = train(model, stages, train_enc, val_enc, opts)
        measured = measure_model(model, args.batch, length)
        predicted = predict_latency(table, space_of(model), best_arch, args.batch, length)
        report.update(validation=summary["stages"], train_seconds=summary["train_seconds"], init=args.init,
                      transfers=args.transfers, train_embeddings=args.train_embeddings,
                      measured_ms=round(measured, 4), out=args.out,
                      latency_error_pct=round(100 * (predicted - measured) / measured, 1))
        from ..methods.nasbert.space import is_bert_shaped

        if is_bert_shaped(best_arch, space_of(model)):  # also as a plain transformers folder (see nasbert/plain.py)
            from ..methods.nasbert.plain import to_plain

            to_plain(model).save(Path(args.out) / "transformers")
            report["transformers"] = str(Path(args.out) / "transformers")
        write_json(Path(args.out) / "search.json", report)
        sys.stderr.write(f"nasbert: {report['arch']} ({report['params']} params, predicted {predicted:.3f} ms, "
                         f"measured {measured:.3f} ms at batch {args.batch}, length {length}) saved to {args.out}\n")
    print(json.dumps(report))
    return 0
