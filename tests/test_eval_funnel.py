"""The answer-loss funnel on a handmade index and run dir: each question is lost at a known stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longread.data import write_jsonl
from longread.eval.funnel import STAGES, answer_funnel, format_funnel, funnel_rates, question_funnel
from longread.pipelines.store import CorpusStore
from longread.types import Chunk, Document, Prediction, Question

DOCS = {
    "d1": "The tower was finished in 1889. It stands in Paris.",
    "d2": "Denver Broncos won the game. The score was 24 to 10.",
    "d3": "The river is long and its source lies in the Langres plateau.",
}


def _index(tmp_path: Path) -> Path:
    docs = [Document(id=k, text=v, title=k.upper()) for k, v in DOCS.items()]
    chunks = []
    for d in docs:
        # two chunks per document, cut mid-text: "Langres plateau" of d3 is split across them
        cut = {"d1": 31, "d2": 29, "d3": 52}[d.id]
        chunks.append(Chunk(id=f"{d.id}#0", doc_id=d.id, text=d.text[:cut], start=0, end=cut))
        chunks.append(Chunk(id=f"{d.id}#1", doc_id=d.id, text=d.text[cut:], start=cut, end=len(d.text)))
    assert chunks[4].text.endswith("Langres") and chunks[5].text.startswith(" plateau")
    idx = tmp_path / "index"
    CorpusStore(docs, chunks).save(idx)
    return idx


def Q(qid, answers, doc_ids=None):
    return Question(id=qid, question=f"{qid}?", answers=answers, doc_ids=doc_ids)


def P(qid, answer, pids=(), error=None, **trace):
    return Prediction(id=qid, answer=answer, passage_ids=list(pids), trace=trace, error=error)


def test_each_question_is_lost_where_expected(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    qs = [
        Q("ok", ["1889"], ["d1"]),
        Q("not-retrieved", ["Paris"], ["d1"]),
        Q("split-by-chunking", ["Langres plateau"], ["d3"]),
        Q("out-of-scope", ["Broncos"], ["d1"]),  # the answer is only in d2, outside the scope
        Q("cleaned-away", ["24"], ["d2"]),
        Q("verbose", ["Denver Broncos"], ["d2"]),
        Q("compressed-out", ["Paris"], ["d1"]),
        Q("failed", ["1889"], ["d1"]),
        Q("no-gold", [], ["d1"]),
    ]
    preds = [
        P("ok", "1889", ["d1#0"], raw_answer="1889", reader_truncated=False),
        P("not-retrieved", "1889", ["d1#0"], raw_answer="1889"),
        P("split-by-chunking", "source", ["d3#0", "d3#1"]),  # no raw generation recorded
        P("out-of-scope", "tower", ["d1#0"], raw_answer="tower"),
        P("cleaned-away", "ten", ["d2#1"], raw_answer="The score was 24 to 10, so ten"),
        P("verbose", "The Denver Broncos won.", ["d2#0"], raw_answer="The Denver Broncos won."),
        # a compressor left "It stands in [...]": the recorded context decides, not the chunk
        P("compressed-out", "unknown", ["d1#1"], raw_answer="unknown", context="It stands in [...]",
          compression={"compressor.x": {}}),
        P("failed", None, [], error="RuntimeError: boom"),
        P("no-gold", "x", ["d1#0"]),
    ]
    rows = question_funnel(preds, qs, idx)
    got = {r.id: r.lost_at for r in rows}
    assert got == {
        "ok": None,
        "not-retrieved": "retrieved",  # "Paris" is in d1#1, the reader got d1#0
        "split-by-chunking": "corpus",  # the chunk boundary cut it: lost before retrieval
        "out-of-scope": "corpus",
        "cleaned-away": "answer",  # the raw generation had it, the final answer does not
        "verbose": "correct",  # contained, but EM 0 under the squad style
        "compressed-out": "context",  # the chunk had it; what the reader saw did not
        "failed": "retrieved",
    }
    by = {r.id: r for r in rows}
    assert by["ok"].context_source == "passages" and by["compressed-out"].context_source == "context"
    assert by["verbose"].in_answer and not by["verbose"].correct
    assert by["failed"].in_corpus and by["failed"].in_context is False and by["failed"].error.startswith("RuntimeError")
    # no raw generation recorded: unknown (None); a failed question never generated: False
    assert by["split-by-chunking"].in_raw is None and by["failed"].in_raw is False

    rates = funnel_rates(rows)
    assert rates["n"] == 8 and rates["n_correct"] == 1
    # corpus: 6 of 8 (split-by-chunking and out-of-scope lost); retrieved: ok, cleaned-away,
    # verbose, compressed-out -> 4 of 8 (split-by-chunking's chunks hold no whole "langres plateau")
    assert rates["stages"]["corpus"] == {"rate": 6 / 8, "n": 8}
    assert rates["stages"]["retrieved"] == {"rate": 4 / 8, "n": 8}
    assert rates["lost_at"] == {"corpus": 2, "retrieved": 2, "context": 1, "raw": 0, "answer": 1, "correct": 1}
    assert sum(rates["lost_at"].values()) + rates["n_correct"] == rates["n"]
    line = format_funnel(rates)
    assert line.startswith("corpus 0.75 (-2) > retrieved 0.50 (-2) > context") and line.count(">") == len(STAGES) - 1


def test_unknown_reader_view_and_long_context_runs(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    q = [Q("q1", ["Paris"], ["d1"]), Q("q2", ["Paris"], ["d1"]), Q("q3", ["Paris"], ["d1"])]
    # RAG: a truncating reader without a recorded context -> the view is unknown (None), not guessed.
    rag = question_funnel([P("q1", "Paris", ["d1#1"], reader_truncated=True, raw_answer="Paris")], q[:1], idx)
    assert rag[0].in_context is None and rag[0].context_source is None and rag[0].lost_at is None
    # Long context: no passages in the run -> "retrieved" is not a stage of it; the whole document
    # counts as seen only when the reader says it did not truncate.
    long = question_funnel(
        [
            P("q1", "Paris", reader_truncated=False, raw_answer="Paris"),
            P("q2", "Lyon", reader_truncated=True, raw_answer="Lyon"),
            P("q3", "Lyon", raw_answer="Lyon", context="D1\nThe tower was finished in 1889. [...]"),
        ],
        q, idx,
    )
    assert [r.in_retrieved for r in long] == [None, None, None]
    assert [(r.context_source, r.in_context) for r in long] == [("documents", True), (None, None), ("context", False)]
    assert [r.lost_at for r in long] == [None, "raw", "context"]
    rates = funnel_rates(long)
    assert rates["stages"]["retrieved"] == {"rate": None, "n": 0}
    assert rates["stages"]["context"] == {"rate": 0.5, "n": 2}
    assert "retrieved – (-0)" in format_funnel(rates)
    # A cut document with its kept characters recorded: the head and tail are the view, the middle is not.
    text = "D1\nThe tower was finished in 1889. It stands in Paris."
    cut = question_funnel(
        [
            P("q1", "Lyon", reader_truncated=True, raw_answer="Lyon", context_kept_chars=[10, 6]),
            P("q2", "Lyon", reader_truncated=True, raw_answer="Lyon", context_kept_chars=[len(text) - 6, 0]),
        ],
        [Q("q1", ["Paris"], ["d1"]), Q("q2", ["Paris"], ["d1"])], idx,
    )
    assert [(r.context_source, r.in_context, r.lost_at) for r in cut] == [
        ("documents (head+tail)", True, "raw"), ("documents (head+tail)", False, "context")]


def test_numeric_style_and_run_dir(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    qs = [Q("q1", ["24"], ["d2"]), Q("q2", ["1889"], None)]  # q2 unscoped: every chunk is its corpus
    write_jsonl(run / "questions.jsonl", qs)
    write_jsonl(run / "predictions.jsonl", [
        P("q1", "The score was twenty-four.", ["d2#1"], raw_answer="The score was twenty-four."),
        P("q2", "It was finished in 1889.", ["d1#0"], raw_answer="It was finished in 1889."),
    ])
    (run / "run.json").write_text(json.dumps({"metric_style": "numeric", "index_dir": str(idx)}), encoding="utf-8")
    f = answer_funnel(run)
    # q1: the gold string "24" is not in the answer ("twenty-four"), but the numeric style scores it
    # correct (24 == 24), and a correct question is not lost anywhere.
    assert [(r.in_answer, r.correct, r.lost_at) for r in f.rows] == [(False, True, None), (True, True, None)]
    assert f.rates["n_correct"] == 2
    assert json.loads(json.dumps(f.to_json()))["rows"][1]["id"] == "q2"
    # Errors name what is wrong.
    with pytest.raises(ValueError, match="chunks not in the index.*'nope#0'"):
        question_funnel([P("q1", "x", ["nope#0"])], qs[:1], idx)
    with pytest.raises(ValueError, match="have no question"):
        question_funnel([P("zz", "x")], qs, idx)
    with pytest.raises(ValueError, match="metric_style must be one of"):
        question_funnel([], qs, idx, metric_style="bleu")
    with pytest.raises(FileNotFoundError, match="no corpus store"):
        question_funnel([], qs, tmp_path)
    (run / "run.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="pass index_dir"):
        answer_funnel(run)
    assert answer_funnel(run, idx).rates["n"] == 2
