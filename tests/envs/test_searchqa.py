"""Search QA on the real MuSiQue / HotpotQA samples (read from the data dir, never copied here)."""

import json

import pytest

from memrl.envs import make
from memrl.paths import data_dir

pytestmark = pytest.mark.skipif(data_dir() is None, reason="no real QA data: set MEMRL_DATA_DIR (see README)")


def test_splits_are_disjoint_and_cover_both_datasets():
    train = make("memrl/SearchQA-v0", split="train").unwrapped.questions
    held = make("memrl/SearchQA-v0", split="eval").unwrapped.questions
    assert len(train) == 160 and len(held) == 40
    assert not {q.meta["id"] for q in train} & {q.meta["id"] for q in held}
    assert {q.meta["dataset"] for q in held} == {"musique", "hotpotqa"}


def test_oracle_reaches_the_gold_answer_and_its_searches_find_support():
    env = make("memrl/SearchQA-v0", dataset="hotpotqa", topk=5)
    found = total = 0
    for seed in range(10):
        _, info = env.reset(seed=seed)
        task = env.unwrapped.task
        for step in env.unwrapped.oracle_steps():
            obs, reward, terminated, _, info = env.step(step.action)
            if not terminated:
                total += 1
                found += any(f"(Title: {t})" in obs for t in task.meta["supporting_titles"])
        assert terminated and reward == 1.0
    assert found / total > 0.8  # searching a supporting title finds a supporting passage


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MEMRL_DATA_DIR"):
        make("memrl/SearchQA-v0", data_dir=str(tmp_path))


def test_search_r1_jsonl_and_parquet_questions_with_a_user_corpus(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "a", "question": "Who wrote Hamlet?", "golden_answers": ["William Shakespeare", "Shakespeare"]},
            {"id": "b", "question": "Capital of Peru?", "golden_answers": "Lima"}]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    listed = [{**r, "golden_answers": [r["golden_answers"]] if isinstance(r["golden_answers"], str)
               else r["golden_answers"]} for r in rows]  # parquet columns need one type
    pq.write_table(pa.Table.from_pylist(listed), tmp_path / "qa.parquet")
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([{"title": "Hamlet", "text": "Hamlet is a tragedy by William Shakespeare."},
                                  {"title": "Lima", "text": "Lima is the capital of Peru."}]))
    for name in ("qa.jsonl", "qa.parquet"):
        env = make("memrl/SearchQA-v0", dataset=str(tmp_path / name), corpus=str(corpus), data_dir=str(tmp_path))
        for seed in range(6):
            _, info = env.reset(seed=seed)
            steps = env.unwrapped.oracle_steps()
            obs = env.step(steps[0].action)[0]
            assert "Doc 1 (Title: " in obs
            *_, reward, terminated, _, info = env.step(steps[-1].action)
            assert terminated and reward == 1.0
        assert {q.answers[0] for q in env.unwrapped.questions} == {"William Shakespeare", "Lima"}
    (tmp_path / "bad.jsonl").write_text(json.dumps({"query": "x"}))
    with pytest.raises(ValueError, match="golden_answers"):
        make("memrl/SearchQA-v0", dataset=str(tmp_path / "bad.jsonl"), corpus=str(corpus))


def test_pick_by_seed_asks_each_question_of_a_split_once_over_consecutive_seeds():
    env = make("memrl/SearchQA-v0", split="eval", pick="by_seed")
    n = len(env.unwrapped.questions)
    asked = []
    for seed in range(1000, 1000 + n):  # any offset: eval seeds start at env.eval_seed_offset
        env.reset(seed=seed)
        asked.append(env.unwrapped.task.meta["id"])
    assert sorted(asked) == sorted(q.meta["id"] for q in env.unwrapped.questions)  # each once
    env.reset(seed=1000 + n)
    assert env.unwrapped.task.meta["id"] == asked[0]  # then round again
    drawn = [make("memrl/SearchQA-v0", split="eval").reset(seed=s)[0] for s in range(1000, 1000 + n)]
    assert len(set(drawn)) < n  # the default draws with replacement: some questions twice, some never
    with pytest.raises(ValueError, match=r"pick must be one of \('random', 'by_seed'\); got 'first'"):
        make("memrl/SearchQA-v0", pick="first")


def test_the_retriever_is_built_once_by_prepare_while_threads_wait(tmp_path, monkeypatch):
    """A worker's env threads that search while the index is being built wait for that one build; `prepare`
    (called by the rollout worker when it pools the env) builds it before any episode's timeout runs."""
    import threading

    from memrl.envs import retrieval, searchqa

    monkeypatch.setenv("MEMRL_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([{"title": f"T{i}", "text": f"passage {i} about city C{i}"} for i in range(30)]))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"q{i}?", "golden_answers": [f"C{i}"]}) + "\n" for i in range(5)))
    builds = []
    real = retriever_cls = retrieval.BM25Retriever

    class Counting(retriever_cls):
        def __init__(self, *a, **kw):
            builds.append(1)
            threading.Event().wait(0.3)  # a slow build: the other threads arrive meanwhile
            super().__init__(*a, **kw)

    monkeypatch.setattr(retrieval, "BM25Retriever", Counting)
    searchqa._build.cache_clear()
    env = make("memrl/SearchQA-v0", dataset=str(qa), corpus=str(corpus), split="all").unwrapped
    threads = [threading.Thread(target=env.tool_search, args=(f"city C{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    searchqa._build.cache_clear()
    env.prepare()  # builds now (BM25's on-disk cache is read, not rebuilt)
    assert len(builds) == 2 and searchqa._build.cache_info().currsize == 1
    assert "C3" in env.tool_search("city C3")
    assert len(builds) == 2
    monkeypatch.setattr(retrieval, "BM25Retriever", real)
    searchqa._build.cache_clear()
