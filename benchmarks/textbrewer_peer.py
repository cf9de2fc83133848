"""The peer of issue 20, run for real: TextBrewer's one-stage distillation of a 2-layer student (hidden + attention +
soft-logit losses together, lr 1e-4, 10 epochs), on the same teacher, rows and student initialisation as
``tinybert_small.py``.

TextBrewer is not a nimblebert dependency: run this with a separate environment that has it (``textbrewer==0.2.1.post1``
and ``tensorboardX``; it needs torch and transformers, the project's own versions work), e.g.

    python3 -m venv /work/tb-venv          # plus a .pth line naming the project venv's site-packages (torch)
    /work/tb-venv/bin/pip install --no-deps textbrewer==0.2.1.post1 && /work/tb-venv/bin/pip install tensorboardX
    /work/tb-venv/bin/python benchmarks/textbrewer_peer.py --data runs/robust/tinybert-mr400/data \\
        --teacher runs/robust/tinybert-mr400/teacher --out runs/robust/tinybert-mr400/textbrewer

The student: ``BertForSequenceClassification`` with 2 layers, the teacher's embeddings, layers 3 and 6 (g(m) = 3m)
and classifier copied in (as nimblebert's ``--student-init teacher``). Matches (TextBrewer's ``GeneralDistiller``):
hidden states 0↔0, 3↔1, 6↔2 with ``hidden_mse`` through one learnt linear projection each, attention maps of teacher
layers 3, 6 to student layers 1, 2 with ``attention_mse`` (transformers returns the softmax probabilities), and the
soft cross-entropy on the logits at temperature 1 (no hard labels), every weight 1. AdamW at 1e-4, 10% warm-up then
linear decay, batch 32, max length 64; the epoch with the best validation accuracy is kept. Writes the student (a
plain transformers folder) and ``predictions.json`` (validation and test predictions in the data's order, the
training time) that ``tinybert_small.py --peer textbrewer=FOLDER`` reports with the other recipes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with train/validation/test .jsonl (text, label)")
    ap.add_argument("--teacher", required=True, help="fine-tuned teacher folder (transformers-loadable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher, attn_implementation="eager").eval()
    label_id = {v: int(k) for k, v in teacher.config.id2label.items()}
    n_t = teacher.config.num_hidden_layers
    step = n_t // args.layers
    config = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "num_hidden_layers": args.layers})
    student = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    # The teacher's embeddings, layers g(m) = step·m and classifier (the same start as nimblebert's student).
    student.bert.embeddings.load_state_dict(teacher.bert.embeddings.state_dict())
    for m in range(args.layers):
        student.bert.encoder.layer[m].load_state_dict(teacher.bert.encoder.layer[step * (m + 1) - 1].state_dict())
    if teacher.bert.pooler is not None and student.bert.pooler is not None:
        student.bert.pooler.load_state_dict(teacher.bert.pooler.state_dict())
    student.classifier.load_state_dict(teacher.classifier.state_dict())

    data = Path(args.data)

    def encode(rows: list[dict]) -> list[dict]:
        enc = tok([r["text"] for r in rows], truncation=True, max_length=args.max_length)
        return [{k: enc[k][i] for k in enc} | {"label": label_id[r["label"]]} for i, r in enumerate(rows)]

    splits = {s: encode(read(data / f"{s}.jsonl")) for s in ("train", "validation", "test")}

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        padded = tok.pad([{k: v for k, v in b.items() if k != "label"} for b in batch], return_tensors="pt")
        return dict(padded)

    train_loader = torch.utils.data.DataLoader(splits["train"], batch_size=args.batch_size, shuffle=True,
                                               collate_fn=collate)

    @torch.no_grad()
    def predict(model: torch.nn.Module, rows: list[dict]) -> list[int]:
        model.eval()
        out = []
        for i in range(0, len(rows), 64):
            batch = collate(rows[i:i + 64])
            out += model(**batch).logits.argmax(-1).tolist()
        model.train()
        return out

    def accuracy(pred: list[int], rows: list[dict]) -> float:
        return sum(p == r["label"] for p, r in zip(pred, rows, strict=True)) / len(rows)

    best = {"accuracy": -1.0}
    out = Path(args.out)

    def callback(model: torch.nn.Module, step: int) -> None:  # TextBrewer calls it at each checkpoint (each epoch)
        acc = accuracy(predict(model, splits["validation"]), splits["validation"])
        print(f"textbrewer: step {step} validation accuracy {acc:.4f}", flush=True)
        if acc > best["accuracy"]:
            best.update(accuracy=acc, step=step)
            model.save_pretrained(out)
            tok.save_pretrained(out)

    def adaptor(batch: dict, outputs) -> dict:
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "attention": outputs.attentions}

    d = teacher.config.hidden_size
    matches = [{"layer_T": step * j, "layer_S": j, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
                "proj": ["linear", d, d, {}]} for j in range(args.layers + 1)]
    matches += [{"layer_T": step * (m + 1) - 1, "layer_S": m, "feature": "attention", "loss": "attention_mse",
                 "weight": 1} for m in range(args.layers)]
    teacher.config.output_hidden_states = student.config.output_hidden_states = True
    teacher.config.output_attentions = student.config.output_attentions = True
    train_config = TrainingConfig(device="cpu", output_dir=str(out / "tb-checkpoints"), log_dir=str(out / "tb-log"),
                                  ckpt_frequency=1)
    distill_config = DistillationConfig(temperature=1, hard_label_weight=0, kd_loss_type="ce", kd_loss_weight=1,
                                        intermediate_matches=matches)
    distiller = GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=teacher,
                                 model_S=student, adaptor_T=adaptor, adaptor_S=adaptor)
    # The distiller adds its projections to the optimizer itself (initialize_training).
    optimizer = torch.optim.AdamW(distiller.model_S.parameters(), lr=args.lr)
    total = len(train_loader) * args.epochs
    t0 = time.perf_counter()
    with distiller:
        distiller.train(optimizer, train_loader, num_epochs=args.epochs,
                        scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": int(0.1 * total), "num_training_steps": total},
                        callback=callback)
    seconds = time.perf_counter() - t0
    kept = AutoModelForSequenceClassification.from_pretrained(out).eval()
    result = {"peer": f"textbrewer {textbrewer.__version__}", "best_step": best.get("step"),
              "validation_accuracy": best["accuracy"], "train_seconds": round(seconds, 1),
              "validation": predict(kept, splits["validation"]), "test": predict(kept, splits["test"]),
              "label_names": [teacher.config.id2label[i] for i in range(teacher.config.num_labels)],
              "options": vars(args)}
    result["test_accuracy"] = accuracy(result["test"], splits["test"])
    (out / "predictions.json").write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items() if k not in ("validation", "test")}))


if __name__ == "__main__":
    main()
