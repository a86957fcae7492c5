"""Question-file loaders for the layouts users hold: MuSiQue, HotpotQA (official and Hugging Face) and
Search-R1, as .json, .jsonl or .parquet; bad rows and unknown layouts are errors naming file and line."""

from __future__ import annotations

import json

import pytest

from memrl.envs import make
from memrl.envs.searchqa import load_hotpotqa, load_qa_file, load_search_r1

MUSIQUE = [
    {"id": "2hop__1_2", "question": "Who founded the city where Ana was born?", "answer": "Velm",
     "answer_aliases": ["Velm the Elder"], "answerable": True,
     "question_decomposition": [{"question": "Where was Ana born?", "answer": "Lorra"},
                                {"question": "Who founded #1?", "answer": "Velm"}],
     "paragraphs": [{"idx": 0, "title": "Ana", "paragraph_text": "Ana was born in Lorra.", "is_supporting": True},
                    {"idx": 1, "title": "Noise", "paragraph_text": "Unrelated.", "is_supporting": False},
                    {"idx": 2, "title": "Lorra", "paragraph_text": "Velm founded Lorra.", "is_supporting": True}]},
    {"id": "2hop__1_2_unanswerable", "question": "Who founded the city where Bo was born?", "answer": "Velm",
     "answer_aliases": [], "answerable": False, "question_decomposition": [],
     "paragraphs": [{"idx": 0, "title": "Noise", "paragraph_text": "Unrelated.", "is_supporting": False}]},
]

HOTPOT_OFFICIAL = {
    "_id": "5a8b", "question": "Which band was formed first, Alpha or Beta?", "answer": "Alpha", "type": "comparison",
    "level": "easy", "supporting_facts": [["Alpha (band)", 0], ["Beta (band)", 1], ["Alpha (band)", 2]],
    "context": [["Alpha (band)", ["Alpha formed in 1970.", " They split.", " Reunited."]],
                ["Beta (band)", ["Beta is a band.", " Beta formed in 1980."]]],
}
HOTPOT_HF = {  # the Hugging Face `hotpot_qa` layout of the same question
    "id": "5a8b", "question": HOTPOT_OFFICIAL["question"], "answer": "Alpha", "type": "comparison", "level": "easy",
    "supporting_facts": {"title": ["Alpha (band)", "Beta (band)", "Alpha (band)"], "sent_id": [0, 1, 2]},
    "context": {"title": ["Alpha (band)", "Beta (band)"],
                "sentences": [["Alpha formed in 1970.", " They split.", " Reunited."],
                              ["Beta is a band.", " Beta formed in 1980."]]},
}


def write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_musique_json_and_jsonl_give_the_same_tasks_without_unanswerable_ones(tmp_path):
    (tmp_path / "musique.json").write_text(json.dumps(MUSIQUE))
    write_jsonl(tmp_path / "musique.jsonl", MUSIQUE)
    for name in ("musique.json", "musique.jsonl"):
        [task] = load_qa_file(tmp_path / name)
        assert task.question == "Who founded the city where Ana was born?"
        assert task.answers == ["Velm", "Velm the Elder"]
        assert task.meta == {"id": "2hop__1_2", "dataset": "musique", "supporting_titles": ["Ana", "Lorra"],
                             "steps": [("Where was Ana born?", "Lorra"), ("Who founded #1?", "Velm")]}


@pytest.mark.parametrize("row", [HOTPOT_OFFICIAL, HOTPOT_HF], ids=["official", "hugging-face"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_hotpotqa_official_and_hugging_face_layouts_load_alike(tmp_path, row, suffix):
    path = tmp_path / f"hotpot{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps([row]))
    else:
        write_jsonl(path, [row])
    for loaded in (load_qa_file(path), load_hotpotqa(path)):
        [task] = loaded
        assert (task.question, task.answers) == ("Which band was formed first, Alpha or Beta?", ["Alpha"])
        assert task.meta == {"id": "5a8b", "dataset": "hotpotqa", "type": "comparison",
                             "supporting_titles": ["Alpha (band)", "Beta (band)"]}


def test_search_r1_jsonl_is_read_line_by_line(tmp_path, monkeypatch):
    path = tmp_path / "nq_test.jsonl"
    write_jsonl(path, [{"id": "test_0", "question": "Capital of Peru?", "golden_answers": ["Lima"]},
                       {"question": "Who wrote Hamlet?", "golden_answers": "Shakespeare"}])

    def whole_file(*args, **kwargs):
        raise AssertionError("a .jsonl file must be streamed, not read into one string")

    monkeypatch.setattr(type(path), "read_text", whole_file)
    first, second = load_search_r1(path)
    assert (first.question, first.answers, first.meta["id"], first.meta["dataset"]) == (
        "Capital of Peru?", ["Lima"], "test_0", "nq_test")
    assert second.answers == ["Shakespeare"] and second.meta["id"] == f"{path} line 2"


def test_search_r1_parquet_takes_answers_from_reward_model_ground_truth(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"data_source": "hotpotqa", "question": "Which band formed first?",
             "prompt": [{"role": "user", "content": "Answer the question... Which band formed first?"}],
             "reward_model": {"style": "rule", "ground_truth": {"target": ["Alpha", "Alpha (band)"]}},
             "extra_info": {"split": "train", "index": 0}},
            {"data_source": "nq", "question": "Capital of Peru?", "prompt": [{"role": "user", "content": "..."}],
             "reward_model": {"style": "rule", "ground_truth": {"target": ["Lima"]}},
             "extra_info": {"split": "train", "index": 1}}]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    tasks = load_qa_file(path)
    assert [(t.question, t.answers, t.meta["dataset"]) for t in tasks] == [
        ("Which band formed first?", ["Alpha", "Alpha (band)"], "hotpotqa"), ("Capital of Peru?", ["Lima"], "nq")]
    assert tasks[1].meta["id"] == f"{path} row 2"


GOOD_R1 = {"question": "Capital of Peru?", "golden_answers": ["Lima"]}


@pytest.mark.parametrize("rows, match", [
    ([GOOD_R1, GOOD_R1, "{oops"], r"qa\.jsonl line 3: not JSON"),
    ([GOOD_R1, "", {"question": "No answers?"}], r"qa\.jsonl line 3: not a search_r1 row \(missing field 'golden_answers'; fields \['question'\]\)"),
    ([GOOD_R1, {"question": "Empty?", "golden_answers": []}], r"qa\.jsonl line 2: not a search_r1 row .*no gold answers"),
    ([HOTPOT_HF, {**HOTPOT_HF, "supporting_facts": {"title": ["A", "B"], "sent_id": [0]}}],
     r"qa\.jsonl line 2: not a hotpotqa row \(ValueError: supporting_facts has 2 titles but 1 sent_ids"),
    ([HOTPOT_OFFICIAL, {**HOTPOT_OFFICIAL, "supporting_facts": [["A", 0, "extra"]]}],
     r"qa\.jsonl line 2: not a hotpotqa row \(ValueError: too many values to unpack"),
    ([MUSIQUE[0], {k: v for k, v in MUSIQUE[0].items() if k != "answer"}],
     r"qa\.jsonl line 2: not a musique row \(missing field 'answer'"),
])
def test_a_bad_row_names_the_file_and_its_line(tmp_path, rows, match):
    write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(ValueError, match=match):
        load_qa_file(tmp_path / "qa.jsonl")


def test_a_bad_item_in_a_json_list_is_named_by_position(tmp_path):
    (tmp_path / "qa.json").write_text(json.dumps([HOTPOT_OFFICIAL, {"question": "q", "answer": "a",
                                                                    "supporting_facts": 7}]))
    with pytest.raises(ValueError, match=r"qa\.json item 2: not a hotpotqa row"):
        load_qa_file(tmp_path / "qa.json")


@pytest.mark.parametrize("first, found", [
    ({"query": "Capital of Peru?", "answers": ["Lima"]}, r"fields \['answers', 'query'\]"),
    ({"question": "Capital of Peru?", "reward_model": {"style": "rule"}}, r"fields \['question', 'reward_model'\]"),
    (["Capital of Peru?", "Lima"], "a JSON list"),
])
def test_an_unknown_layout_names_the_fields_of_the_first_row(tmp_path, first, found):
    write_jsonl(tmp_path / "mine.jsonl", [first, GOOD_R1])
    with pytest.raises(ValueError, match=rf"mine\.jsonl: unknown QA layout, the first row has {found}; "
                                         r"expected one of: musique .*hotpotqa .*search_r1"):
        load_qa_file(tmp_path / "mine.jsonl")


def test_an_empty_file_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no questions"):
        load_qa_file(tmp_path / "empty.jsonl")


def test_env_runs_hugging_face_hotpotqa_over_a_search_r1_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMRL_CACHE", str(tmp_path / "cache"))
    write_jsonl(tmp_path / "hotpot.jsonl", [HOTPOT_HF])
    context = zip(HOTPOT_HF["context"]["title"], HOTPOT_HF["context"]["sentences"], strict=True)
    write_jsonl(tmp_path / "wiki.jsonl", [{"id": str(i), "contents": f'"{title}"\n{"".join(sents)}'}
                                          for i, (title, sents) in enumerate(context)])
    env = make("memrl/SearchQA-v0", dataset=str(tmp_path / "hotpot.jsonl"), corpus=str(tmp_path / "wiki.jsonl"))
    env.reset(seed=0)
    steps = env.unwrapped.oracle_steps()
    obs = env.step(steps[0].action)[0]
    assert "Doc 1 (Title: Alpha (band)) Alpha formed in 1970. They split. Reunited." in obs
    *_, reward, terminated, _, _ = env.step(steps[-1].action)
    assert terminated and reward == 1.0


# ------------------------------------------------------------------------------------ Hugging Face dataset folders

def test_a_save_to_disk_folder_gives_the_same_tasks_as_the_file(tmp_path, monkeypatch):
    """Real MuSiQue questions saved with `datasets.save_to_disk` (a Dataset, and a DatasetDict whose split is
    picked with folder@split) load as the .json file does; the shared data must be present (CI has it)."""
    import datasets

    from memrl.envs.searchqa import load_musique, load_questions
    from memrl.paths import data_dir

    monkeypatch.setenv("MEMRL_CACHE", str(tmp_path / "cache"))
    if data_dir() is None:
        pytest.skip("real QA data not found: set MEMRL_DATA_DIR to a folder with multihop/musique_train.json")
    src = data_dir() / "multihop" / "musique_train.json"
    rows = json.loads(src.read_text())[:40]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    want = load_musique(tmp_path / "q.json")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert load_qa_file(tmp_path / "saved") == want
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:30]),
                          "test": datasets.Dataset.from_list(rows[30:])}).save_to_disk(str(tmp_path / "dict"))
    assert load_qa_file(tmp_path / "dict") == want[:30]  # a DatasetDict: its train split by default
    assert load_qa_file(f"{tmp_path / 'dict'}@test") == load_musique(tmp_path / "q.json")[30:]
    eval_split = load_questions("", f"{tmp_path / 'dict'}@test", "eval")  # memrl's split cuts it as a file
    assert list(eval_split) == want[30:][int(0.8 * 10):]
    datasets.DatasetDict({"a": datasets.Dataset.from_list(rows[:2]),
                          "b": datasets.Dataset.from_list(rows[2:4])}).save_to_disk(str(tmp_path / "ab"))
    with pytest.raises(ValueError, match=r"has splits \['a', 'b'\]; name one as .*@SPLIT"):
        load_qa_file(tmp_path / "ab")
    with pytest.raises(ValueError, match="a single dataset .* @test does not apply"):
        load_qa_file(f"{tmp_path / 'saved'}@test")


def test_a_local_dataset_directory_of_data_files_loads_like_a_file(tmp_path, monkeypatch):
    """A Hugging Face dataset repository as cloned (data/train-*.parquet): `datasets.load_dataset(folder)`,
    with the file loaders' layout detection and row errors."""
    import datasets

    monkeypatch.setenv("MEMRL_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "hotpot_repo"
    (repo / "data").mkdir(parents=True)
    datasets.Dataset.from_list([HOTPOT_HF, {**HOTPOT_HF, "id": "b", "answer": "Beta"}]).to_parquet(
        str(repo / "data" / "train-00000-of-00001.parquet"))
    tasks = load_qa_file(repo)
    assert [t.answers for t in tasks] == [["Alpha"], ["Beta"]]
    (tmp_path / "one.json").write_text(json.dumps([HOTPOT_HF]))
    assert tasks[0] == load_hotpotqa(tmp_path / "one.json")[0]
    bad = tmp_path / "bad_repo"
    (bad / "data").mkdir(parents=True)
    broken = {**HOTPOT_HF, "supporting_facts": {"title": ["Alpha (band)", "Beta (band)"], "sent_id": [0]}}
    datasets.Dataset.from_list([HOTPOT_HF, broken]).to_parquet(str(bad / "data" / "train.parquet"))
    with pytest.raises(ValueError, match=r"bad_repo@train row 2: not a hotpotqa row .*2 titles but 1 sent_ids"):
        load_qa_file(bad)
