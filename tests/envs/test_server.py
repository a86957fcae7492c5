"""The retrieval server for real (uvicorn on a loopback port): Search-R1 and FlashRAG formats, bad input is
a 4xx with a message, a failing backend is a 503, and `HttpRetriever` retries through a server restart."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memrl import net
from memrl.envs.retrieval import BM25Retriever, HttpRetriever, Passage, RetrievalError
from memrl.envs.server import create_app
from memrl.testing import LiveServer

CORPUS = [
    {"title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"title": "Berlin", "text": "Berlin is the capital of Germany."},
    {"title": "Moon", "text": "The Moon is Earth's only natural satellite."},
    {"title": 'A "quoted" title', "text": "Line one.\nLine two of a passage with a newline."},
]
MAX_QUERIES, MAX_TOPK = 8, 10


def free_port() -> int:
    return net.free_port("127.0.0.1")


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    return BM25Retriever(CORPUS, cache_dir=tmp_path_factory.mktemp("bm25"))


@pytest.fixture(scope="module")
def app(retriever):
    return create_app(retriever, max_queries=MAX_QUERIES, max_topk=MAX_TOPK)


@pytest.fixture(scope="module")
def live(app):
    server = LiveServer(app, free_port())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, timeout=10) as client:
        yield client


def test_health_reports_the_corpus_size(http):
    assert http.get("/health").json() == {"status": "ok", "passages": len(CORPUS)}


def test_retrieve_answers_in_search_r1_format(http):
    body = http.post("/retrieve", json={"queries": ["capital of Germany", "satellite"], "topk": 2}).json()
    assert body["result"][0][0] == {"id": 1, "contents": '"Berlin"\nBerlin is the capital of Germany.'}
    assert body["result"][1] == [{"id": 2, "contents": "\"Moon\"\nThe Moon is Earth's only natural satellite."}]
    scored = http.post("/retrieve", json={"queries": ["capital of Germany"], "return_scores": True}).json()
    top = scored["result"][0][0]
    assert top["document"] == body["result"][0][0] and isinstance(top["score"], float) and top["score"] > 0


BERLIN = {"id": "1", "contents": '"Berlin"\nBerlin is the capital of Germany.'}
MOON = {"id": "2", "contents": "\"Moon\"\nThe Moon is Earth's only natural satellite."}


def test_search_answers_in_flashrag_format(http):
    docs = http.post("/search", json={"query": "capital of Germany", "top_n": 2}).json()
    assert docs[0] == BERLIN and len(docs) == 2 and all(set(d) == {"id", "contents"} for d in docs)
    scored = http.post("/search", json={"query": "capital of Germany", "top_n": 2, "return_score": True}).json()
    assert len(scored) == 2 and scored[0] == docs  # FlashRAG's (documents, scores) pair
    assert len(scored[1]) == 2 and scored[1] == sorted(scored[1], reverse=True) and scored[1][0] > 0
    assert http.post("/search", json={"query": ""}).json() == []


def test_search_ignores_unknown_fields_like_flashrag(http):
    """MemSearcher posts the model's tool-call arguments as the body; FlashRAG ignores fields it does not know."""
    resp = http.post("/search", json={"query": "natural satellite", "top_n": 1, "id": "call-7"})
    assert resp.status_code == 200 and resp.json() == [MOON]


def test_batch_search_answers_one_list_per_query(http):
    body = {"query": ["capital of Germany", "satellite", ""], "top_n": 1}
    assert http.post("/batch_search", json=body).json() == [[BERLIN], [MOON], []]
    docs, scores = http.post("/batch_search", json={**body, "return_score": True}).json()
    assert docs == [[BERLIN], [MOON], []]
    assert [len(row) for row in scores] == [1, 1, 0] and all(row[0] > 0 for row in scores[:2])


def test_flashrag_ids_are_the_corpus_files_own_ids(tmp_path):
    corpus = [{**p, "id": f"wiki-{i}"} for i, p in enumerate(CORPUS)]
    server = LiveServer(create_app(BM25Retriever(corpus, cache_dir=tmp_path)), free_port())
    try:
        assert httpx.post(f"{server.url}/search", json={"query": "Germany", "top_n": 1}).json() == [
            {**BERLIN, "id": "wiki-1"}]
    finally:
        server.stop()


BAD_FLASHRAG = {
    "search: missing query": ("/search", {"top_n": 3}, "query"),
    "search: query a list": ("/search", {"query": ["a"]}, "query"),
    "search: query too long": ("/search", {"query": "x" * 4097}, "query"),
    "search: top_n zero": ("/search", {"query": "q", "top_n": 0}, "top_n"),
    "search: top_n too large": ("/search", {"query": "q", "top_n": MAX_TOPK + 1}, "top_n"),
    "search: top_n as string": ("/search", {"query": "q", "top_n": "3"}, "top_n"),
    "search: return_score not a bool": ("/search", {"query": "q", "return_score": "yes"}, "return_score"),
    "batch: query a string": ("/batch_search", {"query": "capital"}, "query"),
    "batch: empty": ("/batch_search", {"query": []}, "query"),
    "batch: too many queries": ("/batch_search", {"query": ["q"] * (MAX_QUERIES + 1)}, "query"),
    "batch: a query not a string": ("/batch_search", {"query": ["q", 42]}, "query"),
    "batch: top_n negative": ("/batch_search", {"query": ["q"], "top_n": -1}, "top_n"),
}


@pytest.mark.parametrize("path, body, field", BAD_FLASHRAG.values(), ids=BAD_FLASHRAG.keys())
def test_bad_flashrag_request_is_a_422_naming_the_field(http, path, body, field):
    resp = http.post(path, json=body)
    assert resp.status_code == 422, resp.text
    assert any(field in err["loc"] for err in resp.json()["detail"]), resp.text


def test_http_retriever_round_trip_matches_the_local_retriever(live, retriever):
    client = HttpRetriever(live.url)
    queries = ["capital city", "Moon satellite", "", "line newline passage quoted"]
    assert client.batch_search(queries, 3) == retriever.batch_search(queries, 3)
    assert client.search("Berlin Germany", 1) == [Passage(1, "Berlin", CORPUS[1]["text"], pytest.approx(
        retriever.search("Berlin Germany", 1)[0].score))]
    assert client.batch_search([], 3) == []


BAD_REQUESTS = {
    "empty queries": {"queries": []},
    "too many queries": {"queries": ["q"] * (MAX_QUERIES + 1)},
    "topk zero": {"queries": ["q"], "topk": 0},
    "topk negative": {"queries": ["q"], "topk": -3},
    "topk too large": {"queries": ["q"], "topk": MAX_TOPK + 1},
    "topk as string": {"queries": ["q"], "topk": "3"},
    "topk as float": {"queries": ["q"], "topk": 2.5},
    "topk as bool": {"queries": ["q"], "topk": True},
    "query not a string": {"queries": [42]},
    "query is null": {"queries": [None]},
    "queries a string": {"queries": "capital"},
    "query too long": {"queries": ["x" * 4097]},
    "return_scores not a bool": {"queries": ["q"], "return_scores": "yes"},
    "unknown field": {"queries": ["q"], "top_k": 3},
    "missing queries": {"topk": 3},
    "body is a list": ["capital"],
    "body is a number": 7,
}


@pytest.mark.parametrize("body", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_is_a_4xx_with_a_message(http, body):
    resp = http.post("/retrieve", json=body)
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["detail"], "the answer must say what was wrong"


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"queries": ["a"]', "\udcff".encode("utf-8", "surrogatepass")])
def test_malformed_json_is_a_4xx(http, content):
    resp = http.post("/retrieve", content=content, headers={"content-type": "application/json"})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["detail"]


def test_server_still_answers_after_bad_requests(http):
    for body in BAD_REQUESTS.values():
        http.post("/retrieve", json=body)
    assert http.get("/health").status_code == 200
    assert http.post("/retrieve", json={"queries": ["Paris"], "topk": 1}).json()["result"][0][0]["id"] == 0


def test_a_4xx_is_not_retried_and_says_why(live):
    client = HttpRetriever(live.url, retries=3)
    start = time.monotonic()
    with pytest.raises(RetrievalError, match="rejected"):
        client.search("x" * 5000)
    assert time.monotonic() - start < 0.2  # no backoff sleeps


class Broken:
    corpus = CORPUS

    def batch_search(self, queries, k=3):
        raise MemoryError("index shard unavailable")


def test_a_failing_retriever_is_a_503_and_the_server_stays_up():
    server = LiveServer(create_app(Broken()), free_port())
    try:
        resp = httpx.post(f"{server.url}/retrieve", json={"queries": ["q"]})
        assert resp.status_code == 503
        assert "index shard unavailable" in resp.json()["detail"]
        for path, body in (("/search", {"query": "q"}), ("/batch_search", {"query": ["q"]})):
            resp = httpx.post(f"{server.url}{path}", json=body)
            assert resp.status_code == 503 and "index shard unavailable" in resp.json()["detail"]
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
        with pytest.raises(RetrievalError, match="503.*index shard unavailable"):
            HttpRetriever(server.url, retries=1, backoff=0.01).search("q")
    finally:
        server.stop()


def test_closed_port_raises_retrieval_error_after_retries():
    url = f"http://127.0.0.1:{free_port()}"
    client = HttpRetriever(url, timeout=0.5, retries=2, backoff=0.05)
    start = time.monotonic()
    with pytest.raises(RetrievalError, match=f"{url}.*3 attempts") as err:
        client.search("anything")
    assert "onnect" in str(err.value)  # the last error (connection refused) is named
    assert time.monotonic() - start >= 0.05 + 0.1  # it backed off between attempts


def test_client_retries_through_a_server_restart(app, retriever):
    port = free_port()
    first = LiveServer(app, port)
    client = HttpRetriever(first.url, timeout=2, retries=6, backoff=0.1)
    assert client.search("Berlin", 1)[0].title == "Berlin"
    first.stop()
    restarted: list[LiveServer] = []
    starter = threading.Timer(0.4, lambda: restarted.append(LiveServer(app, port)))
    starter.start()
    try:
        assert client.search("Moon", 1) == retriever.search("Moon", 1)  # refused, backs off, then answered
        assert restarted, "the answer must come from the restarted server"
    finally:
        starter.join()
        for server in restarted:
            server.stop()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
NEAR_VALID = st.fixed_dictionaries({}, optional={
    "queries": st.lists(st.text(max_size=30) | JSON, max_size=MAX_QUERIES + 2) | JSON,
    "topk": st.integers(-5, MAX_TOPK + 5) | JSON,
    "return_scores": st.booleans() | JSON,
    "extra": JSON,
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=NEAR_VALID | JSON)
def test_fuzzed_json_bodies_never_get_a_5xx(http, body):
    resp = http.post("/retrieve", content=json.dumps(body, allow_nan=True),
                     headers={"content-type": "application/json"})
    assert resp.status_code < 500, (body, resp.text)


NEAR_VALID_FLASHRAG = st.fixed_dictionaries({}, optional={
    "query": st.text(max_size=30) | st.lists(st.text(max_size=30) | JSON, max_size=MAX_QUERIES + 2) | JSON,
    "top_n": st.integers(-5, MAX_TOPK + 5) | JSON,
    "return_score": st.booleans() | JSON,
    "extra": JSON,
})


@pytest.mark.parametrize("path", ["/search", "/batch_search"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=NEAR_VALID_FLASHRAG | JSON)
def test_fuzzed_flashrag_bodies_never_get_a_5xx(http, path, body):
    resp = http.post(path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    assert resp.status_code < 500, (body, resp.text)


def test_openapi_schema_fuzz_never_gets_a_5xx(app):
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (dev extra)")
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @given(case=schema["/retrieve"]["POST"].as_strategy())
    @settings(max_examples=100, deadline=None)
    def check(case):
        case.call_and_validate(checks=[not_a_server_error], excluded_checks=[])

    check()


def test_cli_registers_retriever_serve():
    from memrl.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["retriever", "serve", "--corpus", "a.json", "--port", "9001"])
    assert (args.command, args.action, args.corpus, args.kind, args.host, args.port) == (
        "retriever", "serve", ["a.json"], "bm25", "127.0.0.1", 9001)
    with pytest.raises(SystemExit):
        parser.parse_args(["retriever", "serve", "--corpus", "a.json", "--kind", "tfidf"])
