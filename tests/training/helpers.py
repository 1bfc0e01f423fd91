"""Tiny random-weight models and generated tables for the training tests (nothing downloaded)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import yaml

WORDS = (
    "the spindle of machine line two is vibrating hard stopped noise bearing worn motor ok normal running smooth "
    "quiet clean all checks passed fault alarm overheating shift report invoice paid factoring contract bank"
).split()
CHINESE = "保理融资应收账款业务数控机床主轴异常正常运行检查通过银行合同振动停机"
FAULT_PHRASES = ["the spindle is vibrating hard", "bearing worn and motor overheating", "alarm noise line stopped"]
OK_PHRASES = ["all checks passed running smooth", "machine quiet and clean", "normal shift report ok"]


def tiny_bert(folder: Path, hidden: int = 32) -> Path:
    """A 2-layer BERT with a word-level vocabulary (English words + single Chinese characters), saved locally."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *sorted(set(CHINESE)), ",", "."]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def write_config(folder: Path, encoders: dict, labels: list[str], name: str | None = None) -> Path:
    """A one-encoder model folder: identity fusion and a classification head named 'kind'."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": name or folder.name,
        "version": 1,
        "seed": 0,
        "encoders": encoders,
        "fusion": {"name": "identity"},
        "heads": {"kind": {"name": "classification", "labels": labels, "params": {"scale": 30.0}}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def text_model(folder: Path, bert: Path) -> Path:
    """A text model folder holding a copy of `bert` (a config's paths stay inside its model folder)."""
    shutil.copytree(bert, folder / "bert", dirs_exist_ok=True)
    encoders = {"text": {"name": "text.hf", "params": {"path": "bert", "max_length": 16}}}
    return write_config(folder, encoders, ["fault", "ok"])


def text_table(path: Path, count: int, seed: int) -> Path:
    """Rows whose label follows from their words: fault phrases vs ok phrases, shuffled with filler words."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        label = "fault" if index % 2 == 0 else "ok"
        phrase = (FAULT_PHRASES if label == "fault" else OK_PHRASES)[rng.integers(3)]
        filler = " ".join(rng.choice(["the", "of", "line", "two", "shift"], size=2))
        rows.append({"text": f"{phrase} {filler}", "label": label})
    return write_rows(path, rows)


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def stripes(seed: int, vertical: bool, size: int = 32) -> np.ndarray:
    """A noisy image with vertical or horizontal stripes: a two-class image task."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    band = np.arange(size) % 8 < 4
    if vertical:
        image[:, band] += 150
    else:
        image[band, :] += 150
    return image
