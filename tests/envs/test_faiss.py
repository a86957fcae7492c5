"""FAISS retrieval (envs/faiss_index.py) over an index built in the test from the packaged MiniLM: the same
passages and scores as a brute-force cosine search over the same embeddings, served through Search-R1's and
FlashRAG's routes, and recall@5 on real MuSiQue beside BM25's."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from memrl import net
from memrl.envs.faiss_index import CORPUS_FILE, INDEX_FILE, Encoder, FaissRetriever, build_index
from memrl.envs.retrieval import load_corpus, make_retriever, minilm_path
from memrl.envs.server import create_app
from memrl.testing import LiveServer

CORPUS = [{"title": t, "text": x} for t, x in [
    ("Paris", "Paris is the capital and largest city of France."),
    ("Berlin", "Berlin is the capital of Germany and its largest city."),
    ("Moon", "The Moon is Earth's only natural satellite."),
    ("Mars", "Mars is the fourth planet from the Sun, a dusty, cold desert world."),
    ("Violin", "The violin is a wooden string instrument played with a bow."),
    ("Python", "Python is a programming language that emphasizes code readability."),
    ("Nile", "The Nile is a major north-flowing river in northeastern Africa."),
    ("Everest", "Mount Everest is Earth's highest mountain above sea level."),
]]
QUERIES = ["capital of France", "a planet in the solar system", "", "which river flows through Africa",
           "musical instrument with strings"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src = tmp_path_factory.mktemp("corpus") / "corpus.json"
    src.write_text(json.dumps(CORPUS))
    out = build_index(src, minilm_path(), tmp_path_factory.mktemp("faiss") / "index", passage_prefix="")
    return out, FaissRetriever(out / INDEX_FILE, out / CORPUS_FILE, minilm_path(), query_prefix="")


def test_faiss_returns_what_brute_force_cosine_returns(built):
    out, retriever = built
    enc = Encoder(minilm_path())
    stored = [f'"{p["title"]}"\n{p["text"]}' for p in CORPUS]  # what build_index encoded, in Search-R1's layout
    assert [json.loads(line)["contents"] for line in (out / CORPUS_FILE).read_text().splitlines()] == stored
    emb = enc.encode(stored)
    for k in (1, 3, 8):
        got = retriever.batch_search(QUERIES, k)
        for q, hits in zip(QUERIES, got, strict=True):
            if not q:
                assert hits == []
                continue
            scores = emb @ enc.encode([q])[0]
            want = np.argsort(-scores, kind="stable")[:k]
            assert [h.id for h in hits] == want.tolist()
            assert [h.score for h in hits] == pytest.approx(scores[want].tolist(), abs=1e-5)
            assert [(h.title, h.text) for h in hits] == [(CORPUS[i]["title"], CORPUS[i]["text"]) for i in want]
    assert retriever.search("capital of France", 1)[0].title == "Paris"


def test_faiss_errors_name_what_does_not_match(built, tmp_path):
    out, _ = built
    short = tmp_path / "short.jsonl"
    short.write_text("".join(line + "\n" for line in (out / CORPUS_FILE).read_text().splitlines()[:3]))
    with pytest.raises(ValueError, match="holds 8 vectors but the corpus .* has 3 passages"):
        FaissRetriever(out / INDEX_FILE, short, minilm_path())
    with pytest.raises(FileNotFoundError, match="no encoder at"):
        FaissRetriever(out / INDEX_FILE, out / CORPUS_FILE, tmp_path)
    with pytest.raises(FileExistsError, match="not empty"):
        build_index(out / CORPUS_FILE, minilm_path(), out)
    with pytest.raises(ValueError, match=r"needs \['encoder', 'index'\]"):
        make_retriever("faiss", faiss={"corpus": str(out / CORPUS_FILE)})


def test_the_server_serves_faiss_through_search_r1_and_flashrag_routes(built):
    _, retriever = built
    server = LiveServer(create_app(retriever), net.free_port("127.0.0.1"))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            r1 = http.post("/retrieve", json={"queries": QUERIES[:2], "topk": 2, "return_scores": True}).json()
            flash = http.post("/batch_search", json={"query": QUERIES[:2], "top_n": 2, "return_score": True}).json()
        local = retriever.batch_search(QUERIES[:2], 2)
        flash_docs, flash_scores = flash  # FlashRAG: [document lists, score lists]
        for hits, r1_hits, docs, scores in zip(local, r1["result"], flash_docs, flash_scores, strict=True):
            assert [h["document"]["contents"] for h in r1_hits] == [f'"{h.title}"\n{h.text}' for h in hits]
            assert [d["contents"] for d in docs] == [f'"{h.title}"\n{h.text}' for h in hits]
            assert scores == pytest.approx([h.score for h in hits], abs=1e-5)
    finally:
        server.stop()


def _musique(folder, n: int) -> tuple[list[dict], list[tuple[str, set]]]:
    """The first `n` MuSiQue questions' own paragraphs as a corpus, and each question with its supporting
    (title, text) pairs."""
    rows = json.loads((folder / "musique_train.json").read_text())[:n]
    corpus = list({(p["title"], p["paragraph_text"]): {"title": p["title"], "text": p["paragraph_text"]}
                   for q in rows for p in q["paragraphs"]}.values())
    gold = [(q["question"], {(p["title"], p["paragraph_text"]) for p in q["paragraphs"] if p["is_supporting"]})
            for q in rows]
    return corpus, gold


def _hotpotqa(folder, n: int) -> tuple[list[dict], list[tuple[str, set]]]:
    """The first `n` HotpotQA questions' context paragraphs (distractor setting) as a corpus, and each question with
    its supporting paragraphs (title, text)."""
    rows = json.loads((folder / "hotpotqa_train.json").read_text())[:n]
    text = {title: "".join(sents) for q in rows for title, sents in q["context"]}
    corpus = [{"title": t, "text": x} for t, x in text.items()]
    gold = [(q["question"], {(t, text[t]) for t, _ in q["supporting_facts"]}) for q in rows]
    return corpus, gold


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["musique", "hotpotqa"])
def test_faiss_recall_at_5_beside_bm25(dataset, tmp_path):
    """30 questions of the shared real data over their own paragraphs (MuSiQue ~600, HotpotQA ~300 passages):
    MiniLM through a FAISS index built here vs BM25, recall@5 of the supporting paragraphs."""
    from memrl.paths import data_dir

    folder = data_dir() / "multihop" if data_dir() is not None else None
    if folder is None or not (folder / f"{dataset}_train.json").is_file():
        pytest.skip("real QA data not found: set MEMRL_DATA_DIR to a folder with multihop/*_train.json")
    corpus, gold = (_musique if dataset == "musique" else _hotpotqa)(folder, 30)
    src = tmp_path / "corpus.json"
    src.write_text(json.dumps(corpus))
    out = build_index(src, minilm_path(), tmp_path / "index", passage_prefix="")
    assert len(load_corpus(out / CORPUS_FILE)) == len(corpus)

    def recall(retriever) -> float:
        hits = retriever.batch_search([q for q, _ in gold], 5)
        return sum(len(g & {(h.title, h.text) for h in row}) / len(g) for (_, g), row in zip(gold, hits, strict=True)) / len(gold)

    faiss_recall = recall(FaissRetriever(out / INDEX_FILE, out / CORPUS_FILE, minilm_path(), query_prefix=""))
    bm25_recall = recall(make_retriever("bm25", corpus, persist=False))
    print(f"\nrecall@5 on 30 {dataset} questions ({len(corpus)} passages): FAISS (MiniLM) {faiss_recall:.3f}, "
          f"BM25 {bm25_recall:.3f}")
    assert faiss_recall > 0.3
