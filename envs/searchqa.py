"""Search QA on real multi-hop questions (MuSiQue, HotpotQA) over a passage corpus.

Users bring the data (memrl ships loaders, never the data): a folder with `multihop/musique_train.json`,
`multihop/hotpotqa_train.json` and the corpora, found via `data_dir=`, `$MEMRL_DATA_DIR`, or
`../shared/data` next to a checkout. The default corpus is the union of the MuSiQue, HotpotQA and
2WikiMultihopQA passages (~9,000), so most passages a search returns are distractors.
Splits are fixed by question index: `train` = the first 80% of each dataset, `eval` = the rest.

A user's own question file (`dataset="path"`) may be .json, .jsonl (read line by line) or .parquet, in
MuSiQue's, HotpotQA's (official or Hugging Face `hotpot_qa`) or Search-R1's layout, told apart by the
first row's fields; a bad row is a ValueError naming the file and the line / row."""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from memrl.envs.core import OracleStep, Task, TaskEnv
from memrl.envs.retrieval import hf_dataset_path, read_rows, render_hits
from memrl.paths import data_dir

DATASETS = ("musique", "hotpotqa")
UNION = ("musique_train_corpus.json", "hotpotqa_train_corpus.json", "2wikimultihopqa_corpus.json")
SPLITS = ("all", "train", "eval")
PICKS = ("random", "by_seed")
log = logging.getLogger(__name__)


def corpus_files(corpus: list[str] | str | None, data_dir: str | Path | None) -> list[str]:
    """The corpus files of a SearchQA env: `corpus` (one path or a list), else the union of the data folder's
    corpora (`UNION`)."""
    if corpus is not None:
        return [corpus] if isinstance(corpus, str) else list(corpus)
    folder = _folder(data_dir)
    return [str(folder / name) for name in UNION]


def _folder(root: str | Path | None) -> Path:
    base = Path(root) if root else data_dir()
    if base is None or not (base / "multihop").is_dir():
        raise FileNotFoundError(
            f"no multi-hop QA data at {base or '$MEMRL_DATA_DIR / ../shared/data'}: point data_dir= or "
            "$MEMRL_DATA_DIR at a folder containing multihop/musique_train.json (see the README)")
    return base / "multihop"


def _musique(row: dict, where: str, path: Path) -> Task:
    titles = [p["title"] for p in row["paragraphs"] if p.get("is_supporting")]
    steps = [(d["question"], d["answer"]) for d in row.get("question_decomposition") or []]
    return Task(str(row["question"]), [str(a) for a in [row["answer"], *(row.get("answer_aliases") or [])]],
                {"id": row.get("id", where), "dataset": "musique", "supporting_titles": titles, "steps": steps})


def _supporting_titles(facts: object) -> list[str]:
    """Titles of HotpotQA's supporting facts, in order: [[title, sent_id], ...] (official JSON) or
    {"title": [...], "sent_id": [...]} (the Hugging Face `hotpot_qa` layout)."""
    if isinstance(facts, dict):
        if len(facts["title"]) != len(facts["sent_id"]):
            raise ValueError(f"supporting_facts has {len(facts['title'])} titles but {len(facts['sent_id'])} sent_ids")
        return list(dict.fromkeys(facts["title"]))
    return list(dict.fromkeys(title for title, _ in facts))


def _hotpotqa(row: dict, where: str, path: Path) -> Task:
    """`context` is not read, so its two layouts ([[title, sentences]] or {title, sentences}) both load."""
    return Task(str(row["question"]), [str(row["answer"])],
                {"id": row.get("_id", row.get("id", where)), "dataset": "hotpotqa", "type": row.get("type"),
                 "supporting_titles": _supporting_titles(row["supporting_facts"])})


def _search_r1_golds(row: dict) -> object:
    """`golden_answers`, else the verl/Search-R1 parquet's `reward_model.ground_truth.target`."""
    if row.get("golden_answers") is not None:
        return row["golden_answers"]
    try:
        return row["reward_model"]["ground_truth"]["target"]
    except (KeyError, TypeError):
        raise KeyError("golden_answers") from None


def _search_r1(row: dict, where: str, path: Path) -> Task:
    golds = _search_r1_golds(row)
    golds = [str(g) for g in (golds if isinstance(golds, (list, tuple)) else [golds])]
    if not golds:
        raise ValueError("no gold answers")
    return Task(str(row["question"]), golds, {"id": row.get("id", where), "supporting_titles": [],
                                               "dataset": row.get("data_source") or path.stem})


def _has_search_r1_golds(row: dict) -> bool:
    try:
        _search_r1_golds(row)
    except KeyError:
        return False
    return True


# layout name -> (is this row in the layout?, row -> Task, its fields for error messages)
LAYOUTS = {
    "musique": (lambda r: "paragraphs" in r, _musique, "question, answer, paragraphs[{title, is_supporting}]"),
    "hotpotqa": (lambda r: "supporting_facts" in r, _hotpotqa,
                 "question, answer, supporting_facts ([[title, sent_id]] or {title: [...], sent_id: [...]})"),
    "search_r1": (lambda r: "question" in r and _has_search_r1_golds(r), _search_r1,
                  "question, golden_answers (or reward_model.ground_truth.target)"),
}


def _load_rows(path: Path, layout: str | None = None) -> list[Task]:
    """Tasks from a .json / .jsonl / .parquet QA file in `layout` (None: told by the first row's fields)."""
    tasks: list[Task] = []
    convert = schema = None
    skipped = 0
    for where, row in read_rows(path):
        if convert is None:
            found = f"fields {sorted(row)}" if isinstance(row, dict) else f"a JSON {type(row).__name__}"
            layout = layout or next((name for name, (fits, _, _) in LAYOUTS.items()
                                     if isinstance(row, dict) and fits(row)), None)
            if layout is None:
                raise ValueError(f"{path}: unknown QA layout, the first row has {found}; expected one of: "
                                 + "; ".join(f"{name} ({fields})" for name, (_, _, fields) in LAYOUTS.items()))
            _, convert, schema = LAYOUTS[layout]
        if layout == "musique" and isinstance(row, dict) and row.get("answerable") is False:
            skipped += 1  # MuSiQue-Full's unanswerable twins: their `answer` is not supported by the paragraphs
            continue
        try:
            if not isinstance(row, dict):
                raise TypeError(f"a JSON {type(row).__name__}, not an object")
            tasks.append(convert(row, where, path))
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            fields = f"; fields {sorted(row)}" if isinstance(row, dict) else ""
            raise ValueError(f"{where}: not a {layout} row ({problem}{fields}); "
                             f"expected {schema}") from exc
    if skipped:
        log.info("%s: skipped %d unanswerable MuSiQue questions", path, skipped)
    if not tasks:
        raise ValueError(f"{path}: no questions in the file")
    return tasks


def load_musique(path: Path) -> list[Task]:
    """MuSiQue rows (.json list as in its repo, or the official .jsonl one question a line); unanswerable skipped."""
    return _load_rows(Path(path), "musique")


def load_hotpotqa(path: Path) -> list[Task]:
    """HotpotQA rows: official JSON ([[title, sent_id]] facts) or the Hugging Face `hotpot_qa` layout (dicts)."""
    return _load_rows(Path(path), "hotpotqa")


def load_search_r1(path: Path) -> list[Task]:
    """Search-R1's QA format: .jsonl (streamed) or .parquet rows with `question` and `golden_answers` (list or
    str), or verl parquet rows whose answers are in `reward_model.ground_truth.target`."""
    return _load_rows(Path(path), "search_r1")


def load_qa_file(path: Path) -> list[Task]:
    """Questions from a MuSiQue, HotpotQA or Search-R1 file (.json, .jsonl or .parquet), told apart by the
    first row's fields; an unknown layout is a ValueError naming them."""
    return _load_rows(Path(path))


def _own_file(dataset: str) -> bool:
    """A user's question file or Hugging Face dataset folder (not a dataset of the data folder, whose names win over
    a folder of the same name in the working directory)."""
    if dataset in (*DATASETS, "all"):
        return False
    return dataset.endswith((".json", ".jsonl", ".parquet")) or hf_dataset_path(dataset) is not None


@lru_cache(maxsize=4)
def load_questions(folder: str, dataset: str, split: str) -> tuple[Task, ...]:
    """`dataset`: musique | hotpotqa | all (files in the data folder), a path to a Search-R1 .jsonl / .parquet
    file or a MuSiQue/HotpotQA-format .json file, or a Hugging Face dataset folder (`datasets.save_to_disk`, or a
    local dataset directory; `folder@split` picks a split of a DatasetDict) with rows in one of those layouts."""
    is_file = _own_file(dataset)
    if (not is_file and dataset not in (*DATASETS, "all")) or split not in SPLITS:
        raise ValueError(f"dataset must be one of {(*DATASETS, 'all')}, a .json/.jsonl/.parquet path or a Hugging "
                         f"Face dataset folder, and split one of {SPLITS}; got {dataset!r}, {split!r}")
    names = [dataset] if is_file else DATASETS if dataset == "all" else (dataset,)
    tasks: list[Task] = []
    for name in names:
        rows = load_qa_file(Path(name) if is_file else Path(folder) / f"{name}_train.json")
        cut = int(0.8 * len(rows))
        tasks += rows if split == "all" else rows[:cut] if split == "train" else rows[cut:]
    return tuple(tasks)


_BUILDING = threading.Lock()


def _retriever(kind: str, corpus: tuple[str, ...], url: str | None, faiss: tuple = ()):
    """The retriever of these settings, built once per process: a worker's env threads that ask for it while it
    is being built wait for that build instead of starting their own (`_build` caches it)."""
    with _BUILDING:
        return _build(kind, corpus, url, faiss)


@lru_cache(maxsize=4)
def _build(kind: str, corpus: tuple[str, ...], url: str | None, faiss: tuple = ()):
    from memrl.envs.retrieval import load_corpus, make_retriever

    if kind == "faiss":  # a prebuilt index over one corpus file, read as it is (memory-mapped)
        return make_retriever(kind, faiss={"corpus": corpus[0], **dict(faiss)})
    passages = None if kind == "http" else [p for path in corpus for p in load_corpus(path)]
    return make_retriever(kind, passages, url=url)


class SearchQAEnv(TaskEnv):
    """Real multi-hop questions answered with `<search>` over a corpus, then `<answer>`."""

    default_max_turns = 6
    splits = SPLITS  # train / eval: disjoint rows of each file; all: every row (a separate test file)

    def __init__(self, dataset: str = "all", split: str = "all", data_dir: str | None = None,
                 corpus: list[str] | str | None = None, retriever: str = "bm25", retriever_url: str | None = None,
                 topk: int = 3, max_turns: int | None = None, pick: str = "random", index: str | None = None,
                 encoder: str | None = None, query_prefix: str = "query: ") -> None:
        """`retriever`: bm25 / dense over `corpus` (built in-process), faiss (a prebuilt `index` over the one
        `corpus` .jsonl, queries encoded by the `encoder` directory with `query_prefix`: Search-R1's e5_Flat.index,
        wiki-18.jsonl and e5-base-v2), or http (`retriever_url`)."""
        super().__init__(max_turns, split=split)
        if pick not in PICKS:
            raise ValueError(f"pick must be one of {PICKS}; got {pick!r}")
        self.pick, self._seed = pick, None
        own_files = _own_file(dataset) and corpus is not None
        folder = None if own_files else _folder(data_dir)  # user files need no data folder
        self.questions = load_questions(str(folder or ""), dataset, split)
        paths = corpus_files(corpus or None, data_dir)
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing and retriever != "http":  # found now, not at the first search of the first step
            raise FileNotFoundError(f"corpus file(s) not found: {', '.join(missing)} (env.kwargs.corpus)")
        self.corpus = tuple(str(p) for p in paths)
        self.retriever_kind, self.retriever_url, self.topk = retriever, retriever_url, topk
        self.faiss: tuple = ()
        if retriever == "faiss":
            if index is None or encoder is None or len(self.corpus) != 1:
                raise ValueError("retriever faiss needs index= (the FAISS index), encoder= (its encoder directory) "
                                 "and one corpus file (the index's passages in order)")
            gone = [f"{key} {p}" for key, p in (("index", index), ("encoder", encoder)) if not Path(p).exists()]
            if gone:
                raise FileNotFoundError(f"retriever faiss: not found: {', '.join(gone)} (env.kwargs)")
            self.faiss = (("index", index), ("encoder", encoder), ("query_prefix", query_prefix))

    def reset(self, seed: int | None = None, options: dict | None = None):
        self._seed = seed
        return super().reset(seed=seed, options=options)

    def sample_task(self, rng: np.random.Generator) -> Task:
        """`pick="random"`: a question drawn by the seed's rng (with replacement across seeds); `"by_seed"`: question
        `seed % len`, so consecutive seeds, as many as there are questions, ask each question once (held-out evals
        over a whole split; a composed env gives its parts derived seeds, so there it is a fixed shuffle)."""
        if self.pick == "by_seed" and self._seed is not None:
            return self.questions[self._seed % len(self.questions)]
        return self.questions[int(rng.integers(len(self.questions)))]

    def prepare(self) -> None:
        """Build (or open) the retriever now, not inside the first search's env-step timeout."""
        _retriever(self.retriever_kind, self.corpus, self.retriever_url, self.faiss)

    def tool_search(self, query: str) -> str:
        """search Wikipedia passages; returns the top passages"""
        hits = _retriever(self.retriever_kind, self.corpus, self.retriever_url, self.faiss).search(query, self.topk)
        return render_hits(hits)

    def backend_of(self, name: str) -> object:
        return ("searchqa", self.retriever_kind, self.corpus, self.retriever_url, self.faiss, self.topk)

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
