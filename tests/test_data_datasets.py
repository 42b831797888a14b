"""SQuAD and HotpotQA loaders (in-test fixtures, and the real shared files when present) and the demo set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longread.data import (
    DataError,
    check_question_scopes,
    demo_paths,
    load_corpus,
    load_hotpotqa,
    load_questions,
    load_squad,
    safe_id,
    spread,
)
from longread.eval.metrics import answer_in_texts, normalize_answer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SQUAD = SHARED / "squad" / "squad-dev-1.1.rebuilt.json"
HOTPOT = SHARED / "hotpotqa" / "hotpotqa_explorer_dev_sample100.json"


def qa(qid, question, *answers, impossible=None):
    rec = {"id": qid, "question": question, "answers": [{"text": a, "answer_start": 0} for a in answers]}
    if impossible is not None:
        rec["is_impossible"] = impossible
    return rec


SQUAD_FIXTURE = {
    "version": "1.1",
    "data": [
        {
            "title": "Super_Bowl_50",
            "paragraphs": [
                {"context": "Super Bowl 50 was played in 2016.", "qas": [qa("s1", "When?", "2016", "2016", "in 2016")]},
                {"context": "The Denver Broncos won.", "qas": [qa("s2", "Who won?", "Denver Broncos"), qa("s3", "x?", impossible=True)]},
            ],
        },
        {"title": "AC/DC", "paragraphs": [{"context": "AC/DC is a band.", "qas": [qa("a1", "What?", "a band")]}]},
        {"title": "Super_Bowl_50", "paragraphs": [{"context": "A second article, same title.", "qas": []}]},
    ],
}


@pytest.fixture
def squad_file(tmp_path):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD_FIXTURE), encoding="utf-8")
    return path


def test_squad_long_documents(squad_file):
    docs, qs = load_squad(squad_file)
    assert [d.id for d in docs] == ["Super_Bowl_50", "AC_DC", "Super_Bowl_50~2"]
    assert docs[0].text == "Super Bowl 50 was played in 2016.\n\nThe Denver Broncos won."
    assert docs[0].title == "Super Bowl 50"
    assert [q.id for q in qs] == ["s1", "s2", "a1"]  # the impossible question is skipped
    assert qs[0].answers == ["2016", "in 2016"]  # duplicates merged, order kept
    assert qs[1].doc_ids == ["Super_Bowl_50"] and qs[1].gold_ids == ["Super_Bowl_50"]
    assert qs[2].doc_ids == ["AC_DC"]
    check_question_scopes(qs, [d.id for d in docs])


def test_squad_paragraphs_and_limits(squad_file):
    docs, qs = load_squad(squad_file, as_long_documents=False)
    assert [d.id for d in docs] == ["Super_Bowl_50#p0", "Super_Bowl_50#p1", "AC_DC#p0", "Super_Bowl_50~2#p0"]
    assert qs[1].gold_ids == ["Super_Bowl_50#p1"] and qs[1].doc_ids == ["Super_Bowl_50#p0", "Super_Bowl_50#p1"]
    _, open_qs = load_squad(squad_file, as_long_documents=False, scope_to_article=False)
    assert open_qs[1].doc_ids is None
    docs, qs = load_squad(squad_file, max_articles=1, max_questions=1)
    assert len(docs) == 1 and [q.id for q in qs] == ["s1"]
    _, qs = load_squad(squad_file, questions_per_article=1)
    assert [q.id for q in qs] == ["s1", "a1"]


def test_squad_bad_files(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json, line 1: invalid JSON"):
        load_squad(p)
    p.write_text('{"version": "1.1"}', encoding="utf-8")
    with pytest.raises(DataError, match="not SQuAD JSON"):
        load_squad(p)
    p.write_text('{"data": [{"title": "x"}]}', encoding="utf-8")
    with pytest.raises(DataError, match="article #0 lacks"):
        load_squad(p)


def hp(qid, a, b, distractors, answer="yes"):
    return {
        "_id": qid, "question": f"q {qid}?", "answer": answer,
        "title_a": a[0], "para_a": a[1], "title_b": b[0], "para_b": b[1],
        "supporting_facts": [[0], [0]], "distractors": [[t, s, 1.0] for t, s in distractors],
    }


def test_hotpotqa_fixture(tmp_path):
    recs = [
        hp("h1", ("Zeta", ["Zeta is a letter.", " It is Greek."]), ("Alpha", ["Alpha first."]),
           [("Beta", ["Beta second."]), ("Four Walls / Paradise", ["A song."])]),
        # Beta repeats with the same text (shared doc); Zeta repeats with other text (new id).
        hp("h2", ("Beta", ["Beta second."]), ("Zeta", ["Zeta is a car."]), [("Gamma", ["G."])], answer="no"),
    ]
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps(recs), encoding="utf-8")
    docs, qs = load_hotpotqa(path)
    ids = [d.id for d in docs]
    assert ids == ["Zeta", "Alpha", "Beta", "Four Walls _ Paradise", "Zeta~2", "Gamma"]
    assert docs[0].text == "Zeta is a letter. It is Greek." and docs[0].title == "Zeta"
    assert qs[0].gold_ids == ["Zeta", "Alpha"]
    assert qs[0].doc_ids == ["Alpha", "Beta", "Four Walls _ Paradise", "Zeta"]  # title order, not gold first
    assert qs[1].gold_ids == ["Beta", "Zeta~2"] and qs[1].answers == ["no"]
    check_question_scopes(qs, ids)
    path.write_text(json.dumps([{"_id": "x", "question": "q"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"record #0 is not a HotpotQA record \(KeyError"):
        load_hotpotqa(path)
    path.write_text(json.dumps(recs + recs[:1]), encoding="utf-8")
    with pytest.raises(DataError, match="duplicate question id 'h1'"):
        load_hotpotqa(path)


def test_safe_id_and_spread():
    taken: set[str] = set()
    assert safe_id("a/b\\c\n", taken) == "a_b_c_"
    assert safe_id("a/b\\c\n", taken) == "a_b_c_~2"
    assert safe_id("..") == "_.."
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread([1, 2], 5) == [1, 2] and spread([1, 2], None) == [1, 2]
    with pytest.raises(ValueError, match="n must be > 0"):
        spread([1, 2, 3], 0)


@pytest.mark.skipif(not SQUAD.is_file(), reason="shared SQuAD data not present")
def test_real_squad():
    docs, qs = load_squad(SQUAD)
    assert len(docs) == 48 and len(qs) == 10570
    by_id = {d.id: d for d in docs}
    assert all(q.doc_ids == q.gold_ids and q.doc_ids[0] in by_id for q in qs)
    # SQuAD answers are spans of the context, so (nearly) each is found in its article. A few dozen
    # in the rebuilt file are not whole-token spans of it (answer_start -1 there).
    norm = {d.id: f" {normalize_answer(d.text)} " for d in docs}
    found = sum(any(f" {normalize_answer(a)} " in norm[q.doc_ids[0]] for a in q.answers) for q in qs)
    assert found >= 0.99 * len(qs)
    pdocs, pqs = load_squad(SQUAD, as_long_documents=False, questions_per_article=5)
    assert len(pdocs) == 2067 and len(pqs) == 240


@pytest.mark.skipif(not HOTPOT.is_file(), reason="shared HotpotQA sample not present")
def test_real_hotpotqa():
    docs, qs = load_hotpotqa(HOTPOT)
    assert len(qs) == 100 and len({d.id for d in docs}) == len(docs)
    check_question_scopes(qs, [d.id for d in docs])
    assert all(len(q.gold_ids) == 2 and set(q.gold_ids) <= set(q.doc_ids) for q in qs)
    assert sum(len(q.doc_ids) == 10 for q in qs) == 97  # three records ship fewer distractors


def test_demo_set():
    corpus, questions = demo_paths()
    docs = load_corpus(corpus)
    qs = load_questions(questions, doc_ids=[d.id for d in docs])
    assert len(docs) == 4 and len(qs) == 40
    assert sum(len(d.text.split()) for d in docs) < 15_000
    by_id = {d.id: d for d in docs}
    assert all(answer_in_texts(q.answers, [by_id[q.gold_ids[0]].text]) for q in qs)
    assert (corpus.parent / "ATTRIBUTION.md").read_text().count("CC BY-SA 4.0") >= 1


@pytest.mark.skipif(not SQUAD.is_file(), reason="shared SQuAD data not present")
def test_demo_set_regenerates_identically(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "make_demo_data.py"), "--data", str(SHARED), "--out", str(tmp_path)],
        check=True, capture_output=True,
    )
    corpus, questions = demo_paths()
    assert (tmp_path / "corpus.jsonl").read_bytes() == corpus.read_bytes()
    assert (tmp_path / "questions.jsonl").read_bytes() == questions.read_bytes()
