"""The baseline server of ``serve_mr.py``: what a user would write with plain transformers and FastAPI.

One model, one sentence per request, no batching, no queue bound, no knob: FastAPI runs the plain
``def`` endpoint in its thread pool. Same request and answer shape as ``/predict`` for one string, so the
same load generator drives it.

    python benchmarks/serve_baseline.py MODEL_FOLDER --port 8090 [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class Request(BaseModel):
    inputs: str
    truncate: bool = True


def build(folder: str, max_length: int) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {}

    @app.post("/predict")
    def predict(req: Request) -> list[dict]:
        enc = tokenizer(req.inputs, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            probs = model(**enc).logits.softmax(-1)[0].tolist()
        return sorted(({"label": label, "score": p} for label, p in zip(labels, probs, strict=True)),
                      key=lambda d: -d["score"])

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-length", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    uvicorn.run(build(args.model, args.max_length), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
