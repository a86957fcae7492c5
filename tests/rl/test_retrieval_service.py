"""Retrieval as one service of the run (rl/services.py): replicas started as Ray actors serve every env over
HTTP; a replica killed mid-run fails the searches in flight with an error naming it, and comes back (Ray restarts
it on the same port) so that later searches succeed."""

from __future__ import annotations

import json

import pytest

from memrl import net
from memrl.envs import build as build_env
from memrl.envs.retrieval import HttpRetriever, RetrievalError
from memrl.recipes.schema import load_recipe
from memrl.rl.services import start_retrieval, stop_retrieval

NAMES = [f"Kor{chr(97 + i // 26)}{chr(97 + i % 26)}x" for i in range(40)]  # 40 distinct words BM25 can match
PASSAGES = [{"title": n, "text": f"{n} is a city founded by Founder{i}."} for i, n in enumerate(NAMES)]


@pytest.fixture
def recipe(tmp_path):
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps(PASSAGES))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"Who founded {NAMES[i]}?", "golden_answers": [f"Founder{i}"]}) + "\n"
                          for i in range(10)))
    kwargs = json.dumps({"dataset": str(qa), "corpus": str(corpus), "retriever": "bm25", "topk": 2})
    return load_recipe("quickstart", ["env.id=memrl/SearchQA-v0", f"env.kwargs={kwargs}", "env.objectives=1",
                                      "retrieval.serve=true", "retrieval.replicas=2", "retrieval.cpus_per_replica=0.01",
                                      f"retrieval.port={net.free_port('127.0.0.1')}"])


def test_the_runs_retrieval_service_serves_every_env_and_survives_a_killed_replica(recipe, ray_local):
    replicas, served = start_retrieval(recipe)
    try:
        kw = served.env.kwargs
        assert kw["retriever"] == "http" and len(kw["retriever_url"].split(",")) == 2  # the envs call the replicas
        env = build_env(served.env.at()).unwrapped
        assert "Founder7" in env.tool_search(f"Who founded {NAMES[7]}?")
        urls = kw["retriever_url"].split(",")
        ray_local.kill(replicas[0], no_restart=False)  # replica 0 dies mid-run; Ray restarts it
        in_flight = HttpRetriever(urls[0], retries=0)
        with pytest.raises(RetrievalError, match=f"retrieval server {urls[0]} did not answer"):
            in_flight.search(f"Who founded {NAMES[3]}?")  # a search that was in flight on it fails, naming it
        assert "Founder3" in env.tool_search(f"Who founded {NAMES[3]}?")  # the env's client moves to the other replica
        assert ray_local.get(replicas[0].address.remote(), timeout=120) == urls[0]  # back, at the same URL
        assert in_flight.search(f"Who founded {NAMES[5]}?")[0].title == NAMES[5]
    finally:
        stop_retrieval(replicas)


def test_serving_an_env_without_an_in_process_retriever_is_refused(recipe):
    bad = recipe.model_copy(update={"env": recipe.env.model_copy(update={"kwargs": {"retriever": "http"}})})
    with pytest.raises(ValueError, match="retrieval.serve needs an env that searches a corpus in-process"):
        start_retrieval(bad)
