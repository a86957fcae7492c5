"""Search QA on real multi-hop questions (MuSiQue, HotpotQA) over a passage corpus.

Users bring the data (memrl ships loaders, never the data): a folder with `multihop/musique_train.json`,
`multihop/hotpotqa_train.json` and the corpora, found via `data_dir=`, `$MEMRL_DATA_DIR`, or
`../shared/data` next to a checkout. The default corpus is the union of the MuSiQue, HotpotQA and
2WikiMultihopQA passages (~9,000), so most passages a search returns are distractors.
Splits are fixed by question index: `train` = the first 80% of each dataset, `eval` = the rest.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from memrl.envs.core import OracleStep, Task, TaskEnv
from memrl.envs.retrieval import render_hits
from memrl.paths import data_dir

DATASETS = ("musique", "hotpotqa")
UNION = ("musique_train_corpus.json", "hotpotqa_train_corpus.json", "2wikimultihopqa_corpus.json")
SPLITS = ("all", "train", "eval")


def _folder(root: str | Path | None) -> Path:
    base = Path(root) if root else data_dir()
    if base is None or not (base / "multihop").is_dir():
        raise FileNotFoundError(
            f"no multi-hop QA data at {base or '$MEMRL_DATA_DIR / ../shared/data'}: point data_dir= or "
            "$MEMRL_DATA_DIR at a folder containing multihop/musique_train.json (see the README)")
    return base / "multihop"


def load_musique(path: Path) -> list[Task]:
    out = []
    for row in json.loads(path.read_text()):
        titles = [p["title"] for p in row["paragraphs"] if p.get("is_supporting")]
        steps = [(d["question"], d["answer"]) for d in row.get("question_decomposition", [])]
        out.append(Task(row["question"], [row["answer"], *row.get("answer_aliases", [])],
                        {"id": row["id"], "dataset": "musique", "supporting_titles": titles, "steps": steps}))
    return out


def load_hotpotqa(path: Path) -> list[Task]:
    out = []
    for row in json.loads(path.read_text()):
        titles = list(dict.fromkeys(title for title, _ in row["supporting_facts"]))
        out.append(Task(row["question"], [row["answer"]],
                        {"id": row["_id"], "dataset": "hotpotqa", "supporting_titles": titles,
                         "type": row.get("type")}))
    return out


def load_search_r1(path: Path) -> list[Task]:
    """Search-R1's QA format: .jsonl or .parquet rows with `question` and `golden_answers` (list or str)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
        rows = pq.read_table(path).to_pylist()
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for i, row in enumerate(rows):
        if "question" not in row or "golden_answers" not in row:
            raise ValueError(f"{path} row {i}: expected keys question and golden_answers, got {sorted(row)}")
        golds = row["golden_answers"]
        golds = [golds] if isinstance(golds, str) else [str(g) for g in golds]
        out.append(Task(str(row["question"]), golds, {"id": row.get("id", i), "dataset": path.stem,
                                                      "supporting_titles": []}))
    return out


def _load_file(path: Path) -> list[Task]:
    if path.suffix in (".jsonl", ".parquet"):
        return load_search_r1(path)
    rows = json.loads(path.read_text())
    return load_musique(path) if rows and "paragraphs" in rows[0] else load_hotpotqa(path)


@lru_cache(maxsize=4)
def load_questions(folder: str, dataset: str, split: str) -> tuple[Task, ...]:
    """`dataset`: musique | hotpotqa | all (files in the data folder), or a path to a Search-R1 .jsonl /
    .parquet file or a MuSiQue/HotpotQA-format .json file."""
    is_file = dataset.endswith((".json", ".jsonl", ".parquet"))
    if (not is_file and dataset not in (*DATASETS, "all")) or split not in SPLITS:
        raise ValueError(f"dataset must be one of {(*DATASETS, 'all')} or a .json/.jsonl/.parquet path, "
                         f"and split one of {SPLITS}; got {dataset!r}, {split!r}")
    names = [dataset] if is_file else DATASETS if dataset == "all" else (dataset,)
    tasks: list[Task] = []
    for name in names:
        rows = _load_file(Path(name) if is_file else Path(folder) / f"{name}_train.json")
        cut = int(0.8 * len(rows))
        tasks += rows if split == "all" else rows[:cut] if split == "train" else rows[cut:]
    return tuple(tasks)


@lru_cache(maxsize=4)
def _retriever(kind: str, corpus: tuple[str, ...], url: str | None):
    from memrl.envs.retrieval import load_corpus, make_retriever

    passages = None if kind == "http" else [p for path in corpus for p in load_corpus(path)]
    return make_retriever(kind, passages, url=url)


class SearchQAEnv(TaskEnv):
    """Real multi-hop questions answered with `<search>` over a corpus, then `<answer>`."""

    default_max_turns = 6

    def __init__(self, dataset: str = "all", split: str = "all", data_dir: str | None = None,
                 corpus: list[str] | str | None = None, retriever: str = "bm25", retriever_url: str | None = None,
                 topk: int = 3, max_turns: int | None = None) -> None:
        super().__init__(max_turns)
        own_files = dataset.endswith((".json", ".jsonl", ".parquet")) and corpus is not None
        folder = None if own_files else _folder(data_dir)  # user files need no data folder
        self.questions = load_questions(str(folder or ""), dataset, split)
        paths = [corpus] if isinstance(corpus, str) else corpus or [str(folder / name) for name in UNION]
        self.corpus = tuple(str(p) for p in paths)
        self.retriever_kind, self.retriever_url, self.topk = retriever, retriever_url, topk

    def sample_task(self, rng: np.random.Generator) -> Task:
        return self.questions[int(rng.integers(len(self.questions)))]

    def tool_search(self, query: str) -> str:
        """search Wikipedia passages; returns the top passages"""
        hits = _retriever(self.retriever_kind, self.corpus, self.retriever_url).search(query, self.topk)
        return render_hits(hits)

    def backend_of(self, name: str) -> object:
        return ("searchqa", self.retriever_kind, self.corpus, self.retriever_url, self.topk)

    def oracle(self, task: Task) -> list[OracleStep]:
        """MuSiQue: search each decomposed sub-question (earlier answers filled in); HotpotQA: search each
        supporting title. The memory note lists what was found."""
        found: list[str] = []
        steps: list[OracleStep] = []
        if task.meta.get("steps"):
            answers: list[str] = []
            for q, a in task.meta["steps"]:
                for k, prev in enumerate(answers):
                    q = q.replace(f"#{k + 1}", prev)
                steps.append(OracleStep(f"<search>{q}</search>", " ".join([*found, f"Look up: {q}"])))
                found.append(f"{q} {a}.")
                answers.append(a)
        else:
            for title in task.meta.get("supporting_titles") or [task.question]:
                steps.append(OracleStep(f"<search>{title}</search>", " ".join([*found, f"Look up {title}."])))
                found.append(f"Read {title}.")
        steps.append(OracleStep(f"<answer>{task.answers[0]}</answer>", " ".join([*found, f"Answer: {task.answers[0]}."])))
        return steps
