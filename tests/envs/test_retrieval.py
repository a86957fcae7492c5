"""Retrievers: BM25 ranking, its on-disk cache, edge cases, corpus formats, and recall@5 on real MuSiQue."""

from __future__ import annotations

import json
import time

import pytest

from memrl.envs.retrieval import BM25Retriever, Passage, load_corpus, make_retriever
from memrl.paths import data_dir

CORPUS = [
    {"title": "Paris", "text": "Paris is the capital and largest city of France, on the Seine."},
    {"title": "Berlin", "text": "Berlin is the capital of Germany and its most populous city."},
    {"title": "Moon", "text": "The Moon is Earth's only natural satellite; it orbits the planet every 27 days."},
    {"title": "Python (language)", "text": "Python is a programming language created by Guido van Rossum."},
    {"title": "Seine", "text": "The Seine is a river flowing through Paris into the English Channel."},
]


@pytest.fixture(scope="module")
def bm25(tmp_path_factory):
    return BM25Retriever(CORPUS, cache_dir=tmp_path_factory.mktemp("bm25"))


@pytest.mark.parametrize("query, title", [
    ("capital of Germany", "Berlin"),
    ("who created the Python programming language", "Python (language)"),
    ("natural satellite orbiting Earth", "Moon"),
    ("river English Channel", "Seine"),
])
def test_bm25_ranks_the_matching_passage_first(bm25, query, title):
    hits = bm25.search(query, k=3)
    assert hits[0].title == title
    assert hits[0].text == next(p["text"] for p in CORPUS if p["title"] == title)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].id == [p["title"] for p in CORPUS].index(title)


def test_bm25_index_is_cached_on_disk_and_reloaded_without_rebuilding(tmp_path, monkeypatch):
    import bm25s

    first = BM25Retriever(CORPUS, cache_dir=tmp_path)
    assert first.cache_path.parent == tmp_path and first.cache_path.name.startswith("bm25-")
    assert first.cache_path.is_dir() and any(first.cache_path.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]  # no temp dir left behind

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached index should have been loaded, not rebuilt")

    monkeypatch.setattr(bm25s.BM25, "index", no_rebuild)
    second = BM25Retriever(CORPUS, cache_dir=tmp_path)
    assert second.cache_path == first.cache_path
    queries = ["capital city", "Seine river Paris", "programming"]
    assert second.batch_search(queries, 4) == first.batch_search(queries, 4)


def test_bm25_cache_key_changes_with_the_corpus(tmp_path):
    a = BM25Retriever(CORPUS, cache_dir=tmp_path)
    b = BM25Retriever(CORPUS[:-1] + [{"title": "Seine", "text": "A different text."}], cache_dir=tmp_path)
    assert a.cache_path != b.cache_path
    assert b.search("English Channel", 3) == []


@pytest.mark.parametrize("query", ["", "   ", "\n\t", "the of and", "zzyzx qwertyuiop"])
def test_bm25_query_without_known_words_returns_nothing(bm25, query):
    assert bm25.search(query, 3) == []


def test_bm25_batch_keeps_query_order_with_empty_queries(bm25):
    out = bm25.batch_search(["Moon", "", "Berlin"], 1)
    assert [[p.title for p in row] for row in out] == [["Moon"], [], ["Berlin"]]


def test_bm25_k_is_clamped_to_the_corpus(bm25):
    hits = bm25.search("capital city Paris Seine", k=1000)
    assert 0 < len(hits) <= len(CORPUS)
    assert len({h.id for h in hits}) == len(hits)
    assert bm25.search("Berlin", k=0) == []


def test_passage_renders_title_and_text():
    assert Passage(3, "Moon", "It orbits.", 1.5).render() == "(Moon) It orbits."


def test_make_retriever_rejects_an_unknown_kind_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="bm25.*dense.*http"):
        make_retriever("tfidf", CORPUS)


def test_empty_corpus_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        BM25Retriever([], cache_dir=tmp_path)


def test_load_corpus_reads_both_formats(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"title": "A", "text": "alpha"}, {"title": "B", "text": "beta"}]))
    by_title = tmp_path / "dict.json"
    by_title.write_text(json.dumps({"A": ["First sentence.", " Second one."], "B": ["Only."]}))
    assert load_corpus(listed) == [{"title": "A", "text": "alpha"}, {"title": "B", "text": "beta"}]
    assert load_corpus(by_title) == [{"title": "A", "text": "First sentence. Second one."},
                                     {"title": "B", "text": "Only."}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="title, text"):
        load_corpus(bad)


SEARCH_R1_ROWS = [
    {"id": "0", "contents": '"Paris"\nParis is the capital of France.'},
    {"id": "1", "contents": 'Berlin\nBerlin is the capital of Germany.\nIt has a second line.'},
    {"id": "2", "contents": '"A "quoted" title"\nText after a title holding quotes.'},
    {"id": 3, "contents": "No title line, just text."},
]


def write_jsonl(path, rows, blank_after: int | None = None) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")


def test_load_corpus_reads_search_r1_jsonl_line_by_line(tmp_path, monkeypatch):
    path = tmp_path / "wiki.jsonl"
    write_jsonl(path, SEARCH_R1_ROWS, blank_after=2)

    def whole_file(*args, **kwargs):
        raise AssertionError("a .jsonl corpus must be streamed, not read into one string")

    monkeypatch.setattr(type(path), "read_text", whole_file)
    monkeypatch.setattr(type(path), "read_bytes", whole_file)
    assert load_corpus(path) == [
        {"id": "0", "title": "Paris", "text": "Paris is the capital of France."},
        {"id": "1", "title": "Berlin", "text": "Berlin is the capital of Germany.\nIt has a second line."},
        {"id": "2", "title": 'A "quoted" title', "text": "Text after a title holding quotes."},
        {"id": "3", "title": "", "text": "No title line, just text."},
    ]


def test_a_search_r1_corpus_is_searchable_by_its_unquoted_titles(tmp_path):
    path = tmp_path / "wiki.jsonl"
    write_jsonl(path, SEARCH_R1_ROWS)
    hits = BM25Retriever(load_corpus(path), cache_dir=tmp_path / "bm25").search("Germany second line", 1)
    assert hits == [Passage(1, "Berlin", "Berlin is the capital of Germany.\nIt has a second line.",
                            pytest.approx(hits[0].score))]


@pytest.mark.parametrize("bad_line, match", [
    ("{not json", r"wiki\.jsonl line 4: not JSON"),
    (json.dumps({"id": "9", "body": "no contents"}), r"wiki\.jsonl line 4: expected a passage .*fields \['body', 'id'\]"),
    (json.dumps(["a", "list"]), r"wiki\.jsonl line 4: expected a passage .*a JSON list"),
])
def test_a_bad_corpus_line_names_the_file_and_its_line_number(tmp_path, bad_line, match):
    path = tmp_path / "wiki.jsonl"
    write_jsonl(path, [*SEARCH_R1_ROWS[:2], bad_line, SEARCH_R1_ROWS[3]], blank_after=1)  # line 2 is blank
    with pytest.raises(ValueError, match=match):
        load_corpus(path)


def test_load_corpus_reads_json_lines_saved_as_json_and_parquet(tmp_path):
    lines = tmp_path / "exported.json"  # `datasets`' to_json writes JSON lines, even to a .json name
    write_jsonl(lines, [{"title": "A", "text": "alpha"}, {"id": 7, "contents": '"B"\nbeta'}])
    assert load_corpus(lines) == [{"title": "A", "text": "alpha"}, {"id": "7", "title": "B", "text": "beta"}]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(SEARCH_R1_ROWS[:2]), tmp_path / "wiki.parquet")
    assert [p["title"] for p in load_corpus(tmp_path / "wiki.parquet")] == ["Paris", "Berlin"]


# --- real data -------------------------------------------------------------------------------

def _multihop():
    root = data_dir()
    folder = root / "multihop" if root else None
    if folder is None or not (folder / "musique_train.json").exists():
        pytest.skip("real QA data not found: set MEMRL_DATA_DIR to a folder with multihop/musique_train.json")
    return folder


@pytest.mark.parametrize("name, count", [("musique_train_corpus.json", 1890),
                                         ("hotpotqa_train_corpus.json", 994),
                                         ("2wikimultihopqa_corpus.json", 6119)])
def test_load_corpus_reads_the_shipped_corpora(name, count):
    corpus = load_corpus(_multihop() / name)
    assert len(corpus) == count
    assert all(isinstance(p["title"], str) and p["text"].strip() for p in corpus)


def recall_at_k(retriever, questions: list[dict], k: int) -> float:
    """Mean over questions of the fraction of supporting paragraphs (title + text) in the top k."""
    hits = retriever.batch_search([q["question"] for q in questions], k)
    fractions = []
    for q, row in zip(questions, hits, strict=True):
        gold = {(p["title"], p["paragraph_text"]) for p in q["paragraphs"] if p["is_supporting"]}
        fractions.append(len(gold & {(h.title, h.text) for h in row}) / len(gold))
    return sum(fractions) / len(fractions)


@pytest.fixture(scope="module")
def musique():
    folder = _multihop()
    questions = json.loads((folder / "musique_train.json").read_text())[:30]
    corpus = load_corpus(folder / "musique_train_corpus.json")
    texts = {(p["title"], p["text"]) for p in corpus}
    assert all((p["title"], p["paragraph_text"]) in texts for q in questions for p in q["paragraphs"]
               if p["is_supporting"]), "supporting paragraphs must be in the corpus verbatim"
    return questions, corpus


def test_bm25_recall_at_5_on_musique(musique, tmp_path_factory):
    questions, corpus = musique
    start = time.perf_counter()
    retriever = make_retriever("bm25", corpus, cache_dir=tmp_path_factory.mktemp("musique-bm25"))
    recall = recall_at_k(retriever, questions, 5)
    print(f"\nBM25 recall@5 on 30 MuSiQue questions ({len(corpus)} passages): {recall:.3f} "
          f"({time.perf_counter() - start:.1f} s)")
    assert recall > 0.3


@pytest.mark.slow
def test_dense_recall_at_5_on_musique(musique, tmp_path_factory):
    questions, _ = musique
    # the 30 questions' own 20 paragraphs each (600 passages): encoding all 1,890 takes minutes on 2 cores
    corpus = list({(p["title"], p["paragraph_text"]): {"title": p["title"], "text": p["paragraph_text"]}
                   for q in questions for p in q["paragraphs"]}.values())
    cache = tmp_path_factory.mktemp("musique-dense")
    start = time.perf_counter()
    retriever = make_retriever("dense", corpus, cache_dir=cache)
    recall = recall_at_k(retriever, questions, 5)
    print(f"\ndense (all-MiniLM-L6-v2) recall@5 on 30 MuSiQue questions ({len(corpus)} passages): {recall:.3f} "
          f"({time.perf_counter() - start:.1f} s)")
    assert recall > 0.3
    assert (retriever.cache_path / "emb.npy").exists()
    again = make_retriever("dense", corpus, cache_dir=cache)  # loads the .npy instead of re-encoding
    assert recall_at_k(again, questions, 5) == recall
