"""A procedurally generated multi-hop knowledge base: invented people, cities, countries and companies
linked by relations, one encyclopedia-style passage per entity, and h-hop questions that chain
relations ("What is the country of the birthplace of the mentor of Ravo Kelt?").

Every name is invented, so a model cannot answer from pretraining, and every episode has a world of its
own (drawn from the episode's seed; the parts of a composed episode share it), so it cannot answer from
memory either: a fact learned in one episode is false or absent in the next. It must search (BM25 or
dense over that world's corpus) once per hop and carry what it found.

Held-out tasks are unseen by construction: the entity names of a world are drawn only from its split's
share of the name space (`envs.core.split_of`), so no entity, question or answer of an `eval` world can
occur in a `train` world, whatever the seeds (tests/envs/test_splits.py). Difficulty knobs: `min_hops`,
`max_hops` (1-4), the world's size, and `topk` passages per search. `oracle()` gives the gold
trajectory: one search per hop, then the answer, with the facts found so far as the memory note.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from memrl.envs.core import EVAL_SHARE, SPLITS, OracleStep, Task, TaskEnv, split_of
from memrl.envs.retrieval import render_hits

# relation -> (subject kind, object kind, noun phrase of the object, passage sentence)
RELATIONS: dict[str, tuple[str, str, str, str]] = {
    "born_in": ("person", "city", "the birthplace of {x}", "{s} was born in {o}."),
    "works_for": ("person", "company", "the employer of {x}", "{s} works for {o}."),
    "mentor": ("person", "person", "the mentor of {x}", "{s} was mentored by {o}."),
    "headquarters": ("company", "city", "the headquarters city of {x}", "{s} is headquartered in {o}."),
    "founder": ("company", "person", "the founder of {x}", "{s} was founded by {o}."),
    "country": ("city", "country", "the country of {x}", "{s} is a city in {o}."),
    "mayor": ("city", "person", "the mayor of {x}", "The mayor of {s} is {o}."),
    "capital": ("country", "city", "the capital of {x}", "The capital of {s} is {o}."),
}

_CONSONANTS = list("bdfgklmnprstvz")
_VOWELS = list("aeiou")
_SUFFIX = {"city": ["ton", "mora", "vale", "burg", "port", "ford"], "country": ["ia", "land", "stan", "ora"],
           "company": [" Labs", " Corp", " Systems", " Works", " Group"]}


@dataclass(frozen=True)
class World:
    """One generated knowledge base (`build_world`): its entities by kind, their facts and their passages."""

    names: dict[str, list[str]]  # kind -> entity names
    facts: dict[tuple[str, str], str]  # (entity, relation) -> object entity
    kind_of: dict[str, str]  # entity -> kind
    corpus: list[dict]  # one passage per entity: {"title", "text"}


_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]


def _candidates(rng: np.random.Generator, kind: str, count: int) -> list[str]:
    """`count` random names of `kind` (drawn as index arrays: a world is built per episode, so it must be cheap)."""
    syl = _SYLLABLES
    if kind == "person":
        return [f"{syl[a]}{syl[b]} {syl[c]}{syl[d]}".title()
                for a, b, c, d in rng.integers(len(syl), size=(count, 4)).tolist()]
    suffixes = _SUFFIX[kind]
    rows = rng.integers(len(syl), size=(count, 2)).tolist()
    long, suffix = rng.integers(2, size=count).tolist(), rng.integers(len(suffixes), size=count).tolist()
    return [(syl[a] + syl[b] if w else syl[a]).capitalize() + suffixes[k]
            for (a, b), w, k in zip(rows, long, suffix, strict=True)]


def _unique_names(rng: np.random.Generator, kind: str, count: int, taken: set[str], split: str) -> list[str]:
    """`count` new names of `kind`, each owned by `split` (`split_of`) and not in `taken`."""
    out: list[str] = []
    share = 1 / EVAL_SHARE if split == "eval" else 1 - 1 / EVAL_SHARE
    while len(out) < count:
        for name in _candidates(rng, kind, int((count - len(out)) / share * 1.3) + 8):
            if name not in taken and split_of(name) == split:
                taken.add(name)
                out.append(name)
                if len(out) == count:
                    break
    return out


def _pick_others(rng: np.random.Generator, subjects: list[str], objects: list[str]) -> list[str]:
    """For each subject, a uniformly random object other than the subject itself."""
    pos = {o: i for i, o in enumerate(objects)}
    out = []
    for s, r in zip(subjects, rng.integers(len(objects) - 1, size=len(subjects)).tolist(), strict=True):
        own = pos.get(s)
        if own is None:  # another kind: any object (the last one too)
            r = int(rng.integers(len(objects))) if len(objects) > 1 else 0
        elif r >= own:  # skip the subject itself
            r += 1
        out.append(objects[r])
    return out


@lru_cache(maxsize=512)
def build_world(seed: int = 0, people: int = 120, cities: int = 30, countries: int = 8,
                companies: int = 24, split: str = "train") -> World:
    """The entities (names owned by `split` only), their relations and the passage corpus; a pure function of
    its arguments (cached: a composed episode's parts and a GRPO group's rollouts share one world)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    taken: set[str] = set()
    sizes = {"person": people, "city": cities, "country": countries, "company": companies}
    names = {kind: _unique_names(rng, kind, n, taken, split) for kind, n in sizes.items()}
    facts: dict[tuple[str, str], str] = {}
    for rel, (subj, obj, _, _) in RELATIONS.items():
        if rel == "capital":
            continue
        for s, o in zip(names[subj], _pick_others(rng, names[subj], names[obj]), strict=True):
            facts[(s, rel)] = o
    for country in names["country"]:  # a capital is one of the country's own cities
        own = [c for c in names["city"] if facts[(c, "country")] == country]
        if not own:
            own = [names["city"][int(rng.integers(len(names["city"])))]]
            facts[(own[0], "country")] = country
        facts[(country, "capital")] = str(rng.choice(own))
    kind_of = {n: k for k, ns in names.items() for n in ns}
    corpus = [{"title": n, "text": _passage(n, k, facts)} for k, ns in names.items() for n in ns]
    return World(names, facts, kind_of, corpus)


def _passage(name: str, kind: str, facts: dict) -> str:
    intro = {"person": f"{name} is a person.", "city": f"{name} is a city.", "country": f"{name} is a country.",
             "company": f"{name} is a company."}[kind]
    sentences = [RELATIONS[r][3].format(s=name, o=facts[(name, r)])
                 for r, spec in RELATIONS.items() if spec[0] == kind and (name, r) in facts]
    return " ".join([intro, *sentences])


def sample_chain(world: World, rng: np.random.Generator, hops: int) -> tuple[list[str], list[str]]:
    """(entities e_0..e_h, relations r_1..r_h) of a random walk of `hops` steps that never revisits an
    entity (so no question collapses, like "the capital of the country of X" when X is a capital)."""
    for _ in range(1000):
        start_kind = str(rng.choice(["person", "company", "city", "country"]))
        entities = [str(rng.choice(world.names[start_kind]))]
        rels: list[str] = []
        for _ in range(hops):
            kind = world.kind_of[entities[-1]]
            rel = str(rng.choice([r for r, spec in RELATIONS.items() if spec[0] == kind]))
            rels.append(rel)
            entities.append(world.facts[(entities[-1], rel)])
        if len(set(entities)) == len(entities):
            return entities, rels
    raise RuntimeError(f"no {hops}-hop chain without repeated entities in this world; make it larger")


def phrase(start: str, rels: list[str]) -> str:
    out = start
    for rel in rels:
        out = RELATIONS[rel][2].format(x=out)
    return out


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@lru_cache(maxsize=512)
def _retriever(world: tuple, kind: str):
    """The search index of one world (`world`: build_world's arguments), built at its first search."""
    from memrl.envs.retrieval import make_retriever

    return make_retriever(kind, build_world(*world).corpus, persist=False)


class KBQAEnv(TaskEnv):
    """Multi-hop questions over a generated knowledge base, answered with `<search>` then `<answer>`; each
    episode draws its own world (module docstring), from the names of its `split`."""

    def __init__(self, min_hops: int = 1, max_hops: int = 2, topk: int = 3, retriever: str = "bm25",
                 people: int = 120, cities: int = 30, countries: int = 8, companies: int = 24,
                 max_turns: int | None = None, split: str = "train") -> None:
        if not 1 <= min_hops <= max_hops <= 4:
            raise ValueError(f"need 1 <= min_hops <= max_hops <= 4, got {min_hops}, {max_hops}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        super().__init__(max_turns or max_hops + 2, split=split)
        self.min_hops, self.max_hops, self.topk = min_hops, max_hops, topk
        self.sizes = (people, cities, countries, companies)
        self.retriever_kind = retriever

    def world_key(self) -> tuple:
        """build_world's arguments for this episode: its shared episode seed, the sizes, the split."""
        if self.episode_seed is None:
            raise RuntimeError("no episode yet: call reset() first")
        return (self.episode_seed, *self.sizes, self.split)

    def sample_task(self, rng: np.random.Generator) -> Task:
        key = self.world_key()
        hops = int(rng.integers(self.min_hops, self.max_hops + 1))
        entities, rels = sample_chain(build_world(*key), rng, hops)
        return Task(f"What is {phrase(entities[0], rels)}?", [entities[-1]],
                    {"entities": entities, "relations": rels, "hops": hops, "world": list(key)})

    def tool_search(self, query: str) -> str:
        """search the knowledge base; returns the top passages"""
        hits = _retriever(tuple(self.task.meta["world"]), self.retriever_kind).search(query, self.topk)
        return render_hits(hits)

    def backend_of(self, name: str) -> object:
        return ("kb", tuple(self.task.meta["world"]), self.retriever_kind, self.topk)

    def oracle(self, task: Task) -> list[OracleStep]:
        """One `<search>` per hop (entity e_0, then e_1 ... e_{h-1}), then `<answer>e_h</answer>`; each
        step's note holds the facts found so far ("The mentor of X is Y.") and whom to look up next."""
        entities, rels = task.meta["entities"], task.meta["relations"]
        facts: list[str] = []
        steps = [OracleStep(f"<search>{entities[0]}</search>", f"Look up {entities[0]}.")]
        for j, rel in enumerate(rels):
            facts.append(f"{_cap(RELATIONS[rel][2].format(x=entities[j]))} is {entities[j + 1]}.")
            if j + 1 < len(rels):
                steps.append(OracleStep(f"<search>{entities[j + 1]}</search>",
                                        " ".join([*facts, f"Look up {entities[j + 1]}."])))
        steps.append(OracleStep(f"<answer>{entities[-1]}</answer>", " ".join(facts)))
        return steps
