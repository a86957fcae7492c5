"""A retrieval server speaking Search-R1's /retrieve JSON, so Search-R1-style agents and our
`HttpRetriever` can share one index. Bad input is a 4xx with a message; a failing backend is a 503."""

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
    """The FastAPI app: POST /retrieve (Search-R1 format) and GET /health, over one `retriever`."""

    class RetrieveRequest(BaseModel):
        """Search-R1's request: `topk` passages for each of `queries`, with scores if `return_scores`."""

        model_config = ConfigDict(extra="forbid", strict=True)
        queries: list[Query] = Field(min_length=1, max_length=max_queries)
        topk: int = Field(3, gt=0, le=max_topk)
        return_scores: bool = False

    app = FastAPI(title="memrl retrieval", version="1")
    app.add_exception_handler(RequestValidationError, _invalid_request)
    lock = threading.Lock()  # one search at a time: backends (torch, bm25s) are not promised thread-safe
    n_passages = len(getattr(retriever, "corpus", None) or ())

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "passages": n_passages}

    @app.post("/retrieve")
    def retrieve(req: RetrieveRequest) -> dict:
        try:
            with lock:
                hits = retriever.batch_search(req.queries, req.topk)
        except Exception as exc:  # the backend failed, not the request: say so, keep serving
            log.exception("retriever failed on %d queries", len(req.queries))
            raise HTTPException(503, f"the retriever failed: {type(exc).__name__}: {exc}") from exc
        return {"result": [[to_search_r1(_finite(p), req.return_scores) for p in row] for row in hits]}

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


def serve(retriever: Retriever, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `retriever` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(retriever), host=host, port=port, log_level="info")


def run_cli(args: argparse.Namespace) -> int:
    """`memrl retriever serve` (its parser lives in memrl.cli so `memrl --help` needs no server deps)."""
    from memrl.envs.retrieval import load_corpus, make_retriever

    corpus = [p for path in args.corpus for p in load_corpus(path)]
    print(f"indexing {len(corpus)} passages ({args.kind}); serving on http://{args.host}:{args.port}")
    serve(make_retriever(args.kind, corpus), host=args.host, port=args.port)
    return 0
