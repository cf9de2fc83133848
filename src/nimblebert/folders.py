"""Checks on a model folder before and while it loads, so that a damaged or foreign folder ends with one
:class:`~nimblebert.errors.UserError` line instead of a library traceback.

``model.py`` calls :func:`check_model_folder` when it resolves a local folder and :func:`load_classifier` where it
builds the transformers model; the checks live here so that the loader itself stays readable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError

WEIGHT_FILES = ("model.safetensors", "nimblebert.safetensors")
_RETRAIN = "copy the folder again or re-run the training that wrote it"


def check_weights_file(path: Path) -> None:
    """Refuse a safetensors file whose header or data is incomplete (a truncated copy, a killed download).

    ``safe_open`` reads the header and checks that the tensors it lists fit in the file, without reading them.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is damaged or truncated ({reason}); {_RETRAIN}") from None


def check_model_folder(folder: Path) -> None:
    """A local folder that claims to be a model: its config.json must be a JSON object and every weights file
    must be complete (the shards named by ``model.safetensors.index.json`` too)."""
    folder = Path(folder)
    config = folder / "config.json"
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{config} is not valid JSON ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
                        f"{_RETRAIN}") from None
    if not isinstance(parsed, dict):
        raise UserError(f"{config} is not a JSON object; {_RETRAIN}")
    files = [folder / name for name in WEIGHT_FILES if (folder / name).exists()]
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a safetensors index (no weight_map); {_RETRAIN}") from None
        files += [folder / s for s in shards]
    for path in files:
        if not path.exists():
            raise UserError(f"{path} is missing (named by {index.name}); {_RETRAIN}")
        check_weights_file(path)


def load_classifier(folder: str, config: Any) -> Any:
    """``AutoModelForSequenceClassification.from_pretrained(folder, config=config)``, refusing (UserError) weights
    whose shapes do not fit the config and a folder without a trained classifier head — a plain encoder such as
    a sentence-transformers folder, whose head transformers would fill with random numbers."""
    from transformers import AutoModelForSequenceClassification

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(folder, config=config,
                                                                         output_loading_info=True)
    except RuntimeError as e:
        if "mismatched" not in str(e) and "size mismatch" not in str(e):
            raise
        raise UserError(f"{folder}/model.safetensors does not fit its config.json (tensor shapes differ: a classifier "
                        "for another number of labels, or another model's weights); re-export or re-train it") from None
    prefix = f"{model.base_model_prefix}."
    head = [k for k in info.get("missing_keys", ()) if not k.startswith(prefix)]
    if head:
        hint = " (a sentence-transformers folder)" if (Path(folder) / "modules.json").exists() else ""
        raise UserError(f"{folder} holds an encoder without a trained classifier{hint} (missing {head[0]}); "
                        f"fine-tune it first: nimblebert train finetune --model {folder} --data ... --out ...")
    return model.eval()
