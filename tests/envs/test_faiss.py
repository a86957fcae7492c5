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


@pytest.mark.slow
def test_faiss_recall_at_5_on_musique_beside_bm25(tmp_path):
    """The 30 MuSiQue questions' own paragraphs (600 passages, as the dense test): MiniLM through FAISS vs BM25."""
    from memrl.paths import data_dir

    folder = data_dir() / "multihop" if data_dir() is not None else None
    if folder is None or not (folder / "musique_train.json").is_file():
        pytest.skip("real QA data not found: set MEMRL_DATA_DIR to a folder with multihop/musique_train.json")
    questions = json.loads((folder / "musique_train.json").read_text())[:30]
    corpus = list({(p["title"], p["paragraph_text"]): {"title": p["title"], "text": p["paragraph_text"]}
                   for q in questions for p in q["paragraphs"]}.values())
    src = tmp_path / "corpus.json"
    src.write_text(json.dumps(corpus))
    out = build_index(src, minilm_path(), tmp_path / "index", passage_prefix="")
    assert len(load_corpus(out / CORPUS_FILE)) == len(corpus)

    def recall(retriever) -> float:
        fractions = []
        for q, hits in zip(questions, retriever.batch_search([q["question"] for q in questions], 5), strict=True):
            gold = {(p["title"], p["paragraph_text"]) for p in q["paragraphs"] if p["is_supporting"]}
            fractions.append(len(gold & {(h.title, h.text) for h in hits}) / len(gold))
        return sum(fractions) / len(fractions)

    faiss_recall = recall(FaissRetriever(out / INDEX_FILE, out / CORPUS_FILE, minilm_path(), query_prefix=""))
    bm25_recall = recall(make_retriever("bm25", corpus, persist=False))
    print(f"\nrecall@5 on 30 MuSiQue questions ({len(corpus)} passages): FAISS (MiniLM) {faiss_recall:.3f}, "
          f"BM25 {bm25_recall:.3f}")
    assert faiss_recall > 0.3
