"""A retrieval server speaking Search-R1's /retrieve JSON and FlashRAG's /search and /batch_search, so
Search-R1-style agents, MemSearcher-style agents and our `HttpRetriever` can share one index. Bad input is a
4xx with a message; a failing backend is a 503."""

# No `from __future__ import annotations`: FastAPI must see the request model built in create_app.

import argparse
import logging
import math
import threading
from typing import Annotated

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from memrl.envs.retrieval import Passage, Retriever, to_search_r1

log = logging.getLogger(__name__)
MAX_QUERY_CHARS = 4096

Query = Annotated[str, StringConstraints(max_length=MAX_QUERY_CHARS)]


def create_app(retriever: Retriever, max_queries: int = 256, max_topk: int = 100) -> FastAPI:
    """The FastAPI app over one `retriever`: POST /retrieve (Search-R1 format), POST /search and
    /batch_search (FlashRAG format) and GET /health. All share the limits `max_queries` and `max_topk`."""

    class RetrieveRequest(BaseModel):
        """Search-R1's request: `topk` passages for each of `queries`, with scores if `return_scores`."""

        model_config = ConfigDict(extra="forbid", strict=True)
        queries: list[Query] = Field(min_length=1, max_length=max_queries)
        topk: int = Field(3, gt=0, le=max_topk)
        return_scores: bool = False

    # FlashRAG's requests. Unknown fields are ignored, as FlashRAG's server does: MemSearcher posts the
    # model's tool-call arguments as the body. top_n defaults to FlashRAG's 10.
    class SearchRequest(BaseModel):
        """FlashRAG's /search: the `top_n` passages for `query`, with their scores if `return_score`."""

        model_config = ConfigDict(extra="ignore", strict=True)
        query: Query
        top_n: int = Field(min(10, max_topk), gt=0, le=max_topk)
        return_score: bool = False

    class BatchSearchRequest(SearchRequest):
        """FlashRAG's /batch_search: /search for each of a list of queries."""

        query: list[Query] = Field(min_length=1, max_length=max_queries)

    app = FastAPI(title="memrl retrieval", version="1")
    app.add_exception_handler(RequestValidationError, _invalid_request)
    lock = threading.Lock()  # one search at a time: backends (torch, bm25s) are not promised thread-safe
    corpus = getattr(retriever, "corpus", None) or ()

    def search(queries: list[str], k: int) -> list[list[Passage]]:
        try:
            with lock:
                hits = retriever.batch_search(queries, k)
        except Exception as exc:  # the backend failed, not the request: say so, keep serving
            log.exception("retriever failed on %d queries", len(queries))
            raise HTTPException(503, f"the retriever failed: {type(exc).__name__}: {exc}") from exc
        return [[_finite(p) for p in row] for row in hits]

    def flashrag_doc(p: Passage) -> dict:
        """FlashRAG's document: the corpus file's own id where it has one (else the index), as a string."""
        own = corpus[p.id].get("id") if 0 <= p.id < len(corpus) else None
        return {"id": str(p.id if own is None else own), "contents": to_search_r1(p, False)["contents"]}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "passages": len(corpus)}

    @app.post("/retrieve")
    def retrieve(req: RetrieveRequest) -> dict:
        hits = search(req.queries, req.topk)
        return {"result": [[to_search_r1(p, req.return_scores) for p in row] for row in hits]}

    @app.post("/search")
    def search_one(req: SearchRequest) -> list:
        """A list of {id, contents} documents, or [documents, scores] if `return_score`."""
        hits = search([req.query], req.top_n)[0]
        docs = [flashrag_doc(p) for p in hits]
        return [docs, [p.score for p in hits]] if req.return_score else docs

    @app.post("/batch_search")
    def batch_search(req: BatchSearchRequest) -> list:
        """One document list per query, or [document lists, score lists] if `return_score`."""
        hits = search(req.query, req.top_n)
        docs = [[flashrag_doc(p) for p in row] for row in hits]
        return [docs, [[p.score for p in row] for row in hits]] if req.return_score else docs

    return app


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field. FastAPI's default echoes the input, which can hold NaN (valid for
    Python's json, not for a JSON answer) and would become a 500; the offending value is not echoed."""
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid"), "type": e.get("type", "")}
              | ({"ctx": {k: str(v) for k, v in e["ctx"].items()}} if e.get("ctx") else {})
              for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def _finite(p: Passage) -> Passage:
    """JSON has no NaN/inf; a non-finite score would turn a good answer into a 500."""
    return p if math.isfinite(p.score) else Passage(p.id, p.title, p.text, 0.0)


class BackgroundServer:
    """uvicorn serving `app` on `host`:`port` in a daemon thread of this process (a retrieval service replica,
    tests); `stop()` shuts it down and waits."""

    def __init__(self, app, port: int, host: str = "127.0.0.1") -> None:
        import threading
        import time

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {host}:{port} (is the port taken?)")
            time.sleep(0.01)
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.thread.is_alive():
            raise RuntimeError("uvicorn did not stop within 10 s")


def serve(retriever: Retriever, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `retriever` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(retriever), host=host, port=port, log_level="info")


def run_cli(args: argparse.Namespace) -> int:
    """`memrl retriever serve` (its parser lives in memrl.cli so `memrl --help` needs no server deps)."""
    from memrl.envs.retrieval import load_corpus, make_retriever

    if args.kind == "faiss":
        if len(args.corpus) != 1 or not args.index or not args.encoder:
            raise SystemExit("--kind faiss needs --index, --encoder and one --corpus (the index's passages in order)")
        print(f"opening {args.index} over {args.corpus[0]}; serving on http://{args.host}:{args.port}")
        retriever = make_retriever("faiss", faiss={"index": args.index, "corpus": args.corpus[0],
                                                   "encoder": args.encoder, "query_prefix": args.query_prefix,
                                                   "pooling": args.pooling})
    else:
        corpus = [p for path in args.corpus for p in load_corpus(path)]
        print(f"indexing {len(corpus)} passages ({args.kind}); serving on http://{args.host}:{args.port}")
        retriever = make_retriever(args.kind, corpus)
    serve(retriever, host=args.host, port=args.port)
    return 0


def build_cli(args: argparse.Namespace) -> int:
    """`memrl retriever build`: a FAISS index in Search-R1's layout from any corpus file."""
    from memrl.envs.faiss_index import build_index

    out = build_index(args.corpus, args.encoder, args.out, passage_prefix=args.passage_prefix, pooling=args.pooling)
    print(f"wrote {out}/flat.index and {out}/corpus.jsonl; serve with: memrl retriever serve --kind faiss "
          f"--index {out}/flat.index --corpus {out}/corpus.jsonl --encoder {args.encoder}")
    return 0
