"""`longread convert`: LongBench, L-Eval, RULER and LoCoV1 files (small handmade ones) to corpus + questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longread.cli import main
from longread.data import DataError, load_corpus, load_questions
from longread.loaders.benchmarks import convert, split_ruler_prompt


def jsonl(path: Path, *records: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_out(out: Path):
    docs = load_corpus(out / "corpus.jsonl")
    qs = load_questions(out / "questions.jsonl", doc_ids=[d.id for d in docs])  # scopes resolve
    return docs, qs


def test_longbench(tmp_path: Path, capsys) -> None:
    src = jsonl(
        tmp_path / "hotpotqa.jsonl",
        {"input": "Which river flows through Paris?", "context": "Passage 1:\nThe Seine flows through Paris.",
         "answers": ["Seine", "the Seine"], "length": 6, "dataset": "hotpotqa", "language": "en", "all_classes": None,
         "_id": "a1b2"},
        {"input": "", "context": "A long report to summarise.", "answers": ["A summary."], "dataset": "gov_report", "_id": "c3"},
    )
    rc = main(["convert", "longbench", str(src), "--out", str(tmp_path / "out")])
    assert rc == 0
    assert "converted 1 documents and 1 questions" in capsys.readouterr().out
    docs, qs = read_out(tmp_path / "out")
    assert [d.id for d in docs] == ["a1b2"] and docs[0].text.startswith("Passage 1:") and docs[0].meta["dataset"] == "hotpotqa"
    assert qs[0].question == "Which river flows through Paris?" and qs[0].answers == ["Seine", "the Seine"]
    assert qs[0].doc_ids == ["a1b2"] and qs[0].gold_ids == ["a1b2"]
    res = convert("longbench", [src], tmp_path / "out2", instruction="Summarize the report.")
    assert [q.question for q in res.questions] == ["Which river flows through Paris?", "Summarize the report."]


def test_leval(tmp_path: Path) -> None:
    src = jsonl(
        tmp_path / "LEval-data" / "Closed-ended-tasks" / "coursera.jsonl",
        {"input": "Lecture transcript: gradient descent takes small steps downhill.",
         "instructions": ["What does gradient descent take?", "Which direction?"],
         "outputs": ["small steps", "downhill"], "source": "coursera", "evaluation": "exam"},
    )
    res = convert("leval", [tmp_path / "LEval-data"], tmp_path / "out")  # a folder of task files works too
    docs, qs = read_out(tmp_path / "out")
    assert [d.id for d in docs] == ["coursera-1"] and docs[0].meta["leval_evaluation"] == "exam"
    assert [(q.id, q.question, q.answers, q.doc_ids) for q in qs] == [
        ("coursera-1-q0", "What does gradient descent take?", ["small steps"], ["coursera-1"]),
        ("coursera-1-q1", "Which direction?", ["downhill"], ["coursera-1"]),
    ]
    assert len(res.questions) == 2
    bad = jsonl(tmp_path / "bad.jsonl", {"input": "doc", "instructions": ["a", "b"], "outputs": ["x"]})
    with pytest.raises(DataError, match=r"bad.jsonl, line 1: 2 instructions but 1 outputs"):
        convert("leval", [bad], tmp_path / "out3")


def test_ruler(tmp_path: Path) -> None:
    niah = ("Some special magic numbers are hidden within the following text. Make sure to memorize it.\n"
            "The grass is green. One of the special magic numbers for long-context is: 2817.\nThe sky is blue.\n"
            "What are all the special magic numbers for long-context mentioned in the provided text?")
    qa = ("Answer the question based on the given documents.\n\nDocument 1:\nThe Eiffel Tower is in Paris.\n\n"
          "Answer the question based on the given documents.\n\nQuestion: Where is the Eiffel Tower?")
    jsonl(tmp_path / "niah_single_1" / "validation.jsonl", {"index": 0, "input": niah, "outputs": ["2817"], "length": 60})
    jsonl(tmp_path / "qa_1" / "validation.jsonl", {"index": 0, "input": qa, "outputs": ["Paris"], "length": 40},
          {"index": 1, "context": "Ready-made context.", "question": "Ready?", "answers": ["yes"]})
    convert("ruler", [tmp_path / "niah_single_1", tmp_path / "qa_1"], tmp_path / "out")
    docs, qs = read_out(tmp_path / "out")
    assert [d.id for d in docs] == ["niah_single_1-0", "qa_1-0", "qa_1-1"]
    assert docs[0].text.endswith("The sky is blue.") and "2817" in docs[0].text
    assert qs[0].question.startswith("What are all the special magic numbers") and qs[0].answers == ["2817"]
    assert qs[1].question == "Where is the Eiffel Tower?" and "Question:" not in docs[1].text
    assert (docs[2].text, qs[2].question, qs[2].answers) == ("Ready-made context.", "Ready?", ["yes"])
    assert split_ruler_prompt("one line only") is None
    one = jsonl(tmp_path / "x.jsonl", {"index": 0, "input": "no question here", "outputs": ["a"]})
    with pytest.raises(DataError, match=r"x.jsonl, line 1: cannot find the question"):
        convert("ruler", [one], tmp_path / "o")


def test_loco(tmp_path: Path, capsys) -> None:
    docs_f = jsonl(tmp_path / "loco" / "documents.jsonl",
                   {"pid": "summ_1", "dataset": "summ_screen_fd", "passage": "Episode one: the detective finds the key."},
                   {"pid": "summ_2", "dataset": "summ_screen_fd", "passage": "Episode two: a storm hits the town."},
                   {"pid": "gov_1", "dataset": "gov_report", "passage": "A report on budgets."})
    jsonl(tmp_path / "loco" / "queries.jsonl",
          {"qid": "q1", "dataset": "summ_screen_fd", "query": "The detective finds a key.", "answer_pids": ["summ_1"]},
          {"qid": "q2", "dataset": "gov_report", "query": "Budgets.", "answer_pids": ["gov_1"]})
    rc = main(["convert", "loco", str(tmp_path / "loco"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "2 datasets (gov_report, summ_screen_fd); pick one with --dataset" in err and err.count("\n") == 1
    rc = main(["convert", "loco", str(docs_f), str(tmp_path / "loco" / "queries.jsonl"), "--out", str(tmp_path / "out"),
               "--dataset", "summ_screen_fd"])
    assert rc == 0
    docs, qs = read_out(tmp_path / "out")
    assert [d.id for d in docs] == ["summ_1", "summ_2"]
    assert [(q.id, q.gold_ids, q.answers, q.doc_ids) for q in qs] == [("q1", ["summ_1"], [], None)]


def test_bad_records_name_file_line_and_field(tmp_path: Path, capsys) -> None:
    src = jsonl(tmp_path / "lb.jsonl", {"input": "q?", "answers": ["a"], "_id": "x"})
    rc = main(["convert", "longbench", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"error: {src}, line 1: missing field 'context'"
    assert not (tmp_path / "out").exists()
    src = jsonl(tmp_path / "lb2.jsonl", {"input": "q?", "context": "c", "answers": "a", "_id": "x"},
                {"input": "q2?", "context": "c2", "answers": ["b"], "_id": "x"})
    with pytest.raises(DataError, match=r"lb2.jsonl, line 2: duplicate document id 'x'"):
        convert("longbench", [src], tmp_path / "out")
    with pytest.raises(DataError, match="no longbench records of dataset 'nope'"):
        convert("longbench", [src], tmp_path / "out", dataset="nope")
