"""Retrieval as one service for the whole run (`retrieval.serve`): the run starts its retrieval server(s) as Ray
actors, each building or opening the env's index once and serving it over HTTP (the app of `memrl retriever
serve`), and every rollout worker's envs call them (`retriever: http` with the replicas' URLs) instead of loading
the corpus and building an index inside every worker. This is how the papers run retrieval (one E5 + FAISS server
that every worker calls).

A replica is restarted by Ray when it dies (same node, same port: `retrieval.port` + its index, so its URL stays
valid); the episodes whose searches were in flight fail (the client retries with backoff, then raises
`RetrievalError` naming the server, which ends only that episode), later ones find it back. A step whose every
episode failed stops the run with the first error (rl/trainer.py), so a service that stays down is never silent.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
RETRIEVER_KEYS = ("retriever", "corpus", "index", "encoder", "query_prefix", "retriever_url")


class RetrievalServer:
    """One replica (a Ray actor): the retriever of `kind` over `corpus` (FAISS: `faiss`, the keyword arguments of
    `FaissRetriever`), served by uvicorn on `port` of its node in a background thread."""

    def __init__(self, kind: str, corpus: list[str], faiss: dict | None, port: int) -> None:
        import ray

        from memrl.envs.retrieval import load_corpus, make_retriever
        from memrl.envs.server import BackgroundServer, create_app

        if kind == "faiss":
            retriever = make_retriever("faiss", faiss={"corpus": corpus[0], **(faiss or {})})
        else:
            retriever = make_retriever(kind, [p for path in corpus for p in load_corpus(path)])
        self.server = BackgroundServer(create_app(retriever), port, host="0.0.0.0")
        self.url = f"http://{ray.util.get_node_ip_address()}:{port}"
        log.info("retrieval replica (%s over %s) serving at %s", kind, ", ".join(corpus), self.url)

    def address(self) -> str:
        """This replica's URL (the driver asks once it is up)."""
        return self.url


def service_kwargs(env_kwargs: dict) -> tuple[str, list[str], dict]:
    """What the service serves, from an env's kwargs: (kind, corpus files, FAISS options). The env must search with
    an in-process retriever over corpus files (`memrl/SearchQA-v0`'s retriever / corpus / index / encoder)."""
    kind = env_kwargs.get("retriever")
    if kind not in ("bm25", "dense", "faiss"):
        raise ValueError(f"retrieval.serve needs an env that searches a corpus in-process (env.kwargs.retriever bm25, "
                         f"dense or faiss, as memrl/SearchQA-v0), got retriever {kind!r}")
    from memrl.envs.searchqa import corpus_files

    corpus = corpus_files(env_kwargs.get("corpus"), env_kwargs.get("data_dir"))
    faiss = {k: env_kwargs[k] for k in ("index", "encoder", "query_prefix") if k in env_kwargs} if kind == "faiss" else {}
    return kind, corpus, faiss


def start_retrieval(recipe) -> tuple[list, object]:
    """With `retrieval.serve`: start the replicas (each `retrieval.cpus_per_replica` CPUs, restarted when they die),
    wait until they serve (`retrieval.start_timeout`), and return them with the recipe whose env now calls them
    (`retriever: http`, `retriever_url`: every replica's URL). Without it: ([], recipe)."""
    cfg = recipe.retrieval
    if not cfg.serve:
        return [], recipe
    import ray

    kind, corpus, faiss = service_kwargs(recipe.env.kwargs)
    actor = ray.remote(RetrievalServer).options(num_cpus=cfg.cpus_per_replica, max_restarts=-1, max_task_retries=-1)
    replicas = [actor.remote(kind, corpus, faiss, cfg.port + i) for i in range(cfg.replicas)]
    try:
        urls = ray.get([r.address.remote() for r in replicas], timeout=cfg.start_timeout)
    except Exception as exc:
        for r in replicas:
            ray.kill(r, no_restart=True)
        raise RuntimeError(f"the retrieval service ({kind} over {', '.join(corpus)}) did not start within "
                           f"{cfg.start_timeout:g} s (retrieval.start_timeout): {exc}") from exc
    kwargs = {k: v for k, v in recipe.env.kwargs.items() if k not in RETRIEVER_KEYS}
    kwargs.update(retriever="http", retriever_url=",".join(urls), corpus=corpus)
    log.info("retrieval service: %d replica(s) at %s", len(urls), ", ".join(urls))
    return replicas, recipe.model_copy(update={"env": recipe.env.model_copy(update={"kwargs": kwargs})})


def stop_retrieval(replicas: list) -> None:
    """Stop the service's replicas for good."""
    import ray

    for r in replicas:
        ray.kill(r, no_restart=True)
