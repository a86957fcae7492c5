"""Dense retrieval over a prebuilt FAISS index, read as Search-R1 / FlashRAG ship it: `e5_Flat.index` (inner
product over L2-normalized e5-base-v2 embeddings), `wiki-18.jsonl` ({id, contents: '"Title"\\ntext'} a line, in
index order) and the encoder in a local directory (e.g. a downloaded `intfloat/e5-base-v2`).

The encoder follows the index's convention: mean pooling over the attention mask (E5, MiniLM; `pooling: cls`
for BGE-style models), L2-normalized, with the query prefix the model was trained with (E5: "query: "; the
passages were encoded with "passage: "). The corpus is opened with `datasets` (Arrow, memory-mapped: 21M
passages are not parsed into Python objects), and the index with FAISS's memory-mapped reader where the index
type allows it. `build_index` writes the same layout from any corpus file (`memrl retriever build`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from memrl import paths
from memrl.envs.retrieval import Passage, _passage, load_corpus

INDEX_FILE, CORPUS_FILE = "flat.index", "corpus.jsonl"  # what `build_index` writes (Search-R1: e5_Flat.index, wiki-18.jsonl)
POOLINGS = ("mean", "cls")


class Encoder:
    """A Hugging Face encoder from a local directory: texts -> L2-normalized float32 embeddings (n, d)."""

    def __init__(self, model_dir: str | Path, pooling: str = "mean", max_length: int = 256, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not (Path(model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"no encoder at {model_dir} (a Hugging Face model directory with config.json, "
                                    "e.g. a downloaded intfloat/e5-base-v2)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval()
        self.pooling, self.max_length, self.batch_size = pooling, max_length, batch_size

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings (len(texts), dim) float32, unit length, in batches of `batch_size`."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # (B, L, d)
                if self.pooling == "cls":
                    emb = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(emb, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)


def open_corpus(path: str | Path):
    """A Search-R1 / FlashRAG corpus .jsonl as a memory-mapped `datasets.Dataset` (row i = passage i of the index),
    cached as Arrow under memrl's cache directory."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import Dataset

    return Dataset.from_json(str(path), cache_dir=str(paths.cache_dir() / "datasets"), keep_in_memory=False)


def read_index(path: str | Path):
    """A FAISS index from disk, memory-mapped when its type supports it (flat indexes do), else loaded."""
    import faiss

    if not Path(path).is_file():
        raise FileNotFoundError(f"no FAISS index at {path}")
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return faiss.read_index(str(path))


class FaissRetriever:
    """Top-k passages by inner product of the query's embedding (`query_prefix` + query) with a prebuilt index."""

    def __init__(self, index: str | Path, corpus: str | Path, encoder: str | Path, query_prefix: str = "query: ",
                 pooling: str = "mean", nprobe: int | None = None) -> None:
        self.index = read_index(index)
        self.corpus = open_corpus(corpus)
        self.encoder = Encoder(encoder, pooling)
        self.query_prefix = query_prefix
        if self.index.ntotal != len(self.corpus):
            raise ValueError(f"the FAISS index {index} holds {self.index.ntotal} vectors but the corpus {corpus} has "
                             f"{len(self.corpus)} passages: they must be the same passages in the same order")
        if self.index.d != self.encoder.dim:
            raise ValueError(f"the FAISS index {index} has dimension {self.index.d} but the encoder {encoder} "
                             f"gives {self.encoder.dim}: use the encoder the index was built with")
        if nprobe is not None and hasattr(self.index, "nprobe"):
            self.index.nprobe = nprobe

    def search(self, query: str, k: int = 3) -> list[Passage]:
        return self.batch_search([query], k)[0]

    def batch_search(self, queries: list[str], k: int = 3) -> list[list[Passage]]:
        """The `k` best passages per query, best first (score: the inner product, the cosine for a normalized
        index); the non-blank queries are encoded and searched in one batch, a blank one gets []."""
        k = max(0, min(int(k), len(self.corpus)))
        out: list[list[Passage]] = [[] for _ in queries]
        live = [i for i, q in enumerate(queries) if q.strip()]
        if not live or k == 0:
            return out
        scores, ids = self.index.search(self.encoder.encode([self.query_prefix + queries[i] for i in live]), k)
        for row, i in enumerate(live):
            hits = []
            for pid, score in zip(ids[row].tolist(), scores[row].tolist(), strict=True):
                if pid < 0:  # fewer than k hits (an IVF index with few probes)
                    continue
                p = _passage(f"corpus row {pid}", self.corpus[pid])
                hits.append(Passage(int(pid), p["title"], p["text"], float(score)))
            out[i] = hits
        return out


def build_index(corpus: str | Path, encoder: str | Path, out_dir: str | Path, passage_prefix: str = "passage: ",
                pooling: str = "mean", batch_size: int = 64) -> Path:
    """Encode every passage of a corpus file (any `load_corpus` layout) as `passage_prefix` + '"Title"\\ntext'
    (FlashRAG's convention) and write a flat inner-product index with its corpus, in Search-R1's layout:
    `out_dir/flat.index` and `out_dir/corpus.jsonl` ({id, contents} a line, in index order). Returns out_dir."""
    import faiss

    from memrl.io import atomic_dir

    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty: remove it or choose another directory")
    passages = load_corpus(corpus)
    if not passages:
        raise ValueError(f"the corpus {corpus} is empty")
    enc = Encoder(encoder, pooling, batch_size=batch_size)
    contents = [f'"{p["title"]}"\n{p["text"]}' for p in passages]

    def build(tmp: Path) -> None:
        index = faiss.IndexFlatIP(enc.dim)
        index.add(enc.encode([passage_prefix + c for c in contents]))
        faiss.write_index(index, str(tmp / INDEX_FILE))
        with (tmp / CORPUS_FILE).open("w", encoding="utf-8") as f:
            for i, c in enumerate(contents):
                f.write(json.dumps({"id": str(i), "contents": c}, ensure_ascii=False) + "\n")

    return atomic_dir(Path(out_dir), build)
