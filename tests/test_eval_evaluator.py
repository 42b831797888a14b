"""Evaluator aggregation: errors kept, null metrics, doc- vs chunk-level gold, cost means, bad input."""

from __future__ import annotations

import json

import pytest

from longread.eval.evaluator import EvalError, evaluate, read_predictions, score_predictions
from longread.types import Citation, Prediction, Question, Usage


def Q(qid, answers=("Paris",), gold=None, doc_ids=None):
    return Question(id=qid, question=f"question {qid}?", answers=list(answers), gold_ids=gold, doc_ids=doc_ids)


def P(qid, answer, pids=(), dids=None, error=None, **trace):
    if dids is not None:
        trace["passage_doc_ids"] = list(dids)
    return Prediction(id=qid, answer=answer, passage_ids=list(pids), trace=trace, error=error)


@pytest.fixture
def run():
    questions = [
        Q("q1", ["Paris"], gold=["d2"]),
        Q("q2", ["Denver Broncos"], gold=["d2#0"]),
        Q("q3", ["1973"], gold=["d1"]),
        Q("q4", ["blue"]),
    ]
    predictions = [
        # Doc-level gold d2: chunks map to docs [d1, d1, d2] -> distinct [d1, d2]; d2 at rank 2.
        P("q1", "paris", ["d1#0", "d1#1", "d2#0"], ["d1", "d1", "d2"], answer_in_passages=True,
          timings={"retriever.bm25": 0.1, "reader.hf": 0.9}, reader_tokens=100, ttft_s=0.2, new_tokens=3,
          llm_calls={"reader.hf": 1}, llm_tokens={"reader.hf": 103}, peak_rss_mb=500.0),
        # Chunk-level gold d2#0 at rank 3 (chunks are not merged).
        P("q2", "Broncos won", ["d1#0", "d1#1", "d2#0"], ["d1", "d1", "d2"], answer_in_passages=False,
          timings={"retriever.bm25": 0.3, "reader.hf": 1.7}, reader_tokens=300, ttft_s=0.4, new_tokens=5,
          llm_calls={"reader.hf": 1}, llm_tokens={"reader.hf": 305}, peak_rss_mb=650.0),
        # Errored: scores 0 everywhere but stays in every denominator.
        P("q3", None, [], error="RuntimeError: out of memory", timings={"retriever.bm25": 0.2}),
        # No gold_ids: retrieval metrics not defined for q4.
        P("q4", "Blue.", ["d3#0"], ["d3"], answer_in_passages=True,
          timings={"retriever.bm25": 0.2, "reader.hf": 1.0, "reranker.x": 0.6}, reader_tokens=200),
    ]
    return predictions, questions


def test_evaluate_hand_worked(run):
    m = evaluate(*run)
    assert m["n"] == 4 and m["n_errors"] == 1
    # EM: q1 1, q2 0, q3 0 (error), q4 1 -> 2/4
    assert m["em"] == pytest.approx(0.5)
    # F1: q1 1; q2 "broncos won" vs "denver broncos": P=1/2 R=1/2 -> 0.5; q3 0; q4 1 -> 2.5/4
    assert m["f1"] == pytest.approx(0.625)
    # answer recall: q1 T, q2 F, q3 F (error), q4 T -> 2/4
    assert m["answer_recall"] == pytest.approx(0.5)
    # recall@1: q1 0 (d1 first), q2 0, q3 0 -> 0/3 ; recall@5: q1 1, q2 1, q3 0 -> 2/3
    assert m["recall@1"] == 0.0
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["recall@20"] == pytest.approx(2 / 3)
    # nDCG@10: q1 rank 2 -> 1/log2(3) = 0.6309298; q2 rank 3 -> 1/log2(4) = 0.5; q3 0 -> 1.1309298/3
    assert m["ndcg@10"] == pytest.approx(1.1309298 / 3, abs=1e-6)
    assert m["n_with_gold_ids"] == 3
    # cost: reader tokens over those that have it (100, 300, 200) -> 200; ttft (0.2, 0.4) -> 0.3
    assert m["reader_tokens_mean"] == pytest.approx(200.0)
    assert m["ttft_s_mean"] == pytest.approx(0.3)
    # seconds: 1.0, 2.0, 0.2, 1.8 -> 5.0 / 4 = 1.25
    assert m["seconds_per_question"] == pytest.approx(1.25)
    # stage means over all 4 timed questions, missing stage = 0:
    # bm25 (0.1+0.3+0.2+0.2)/4 = 0.2; reader (0.9+1.7+0+1.0)/4 = 0.9; reranker 0.6/4 = 0.15
    assert m["stage_seconds"] == pytest.approx({"retriever.bm25": 0.2, "reader.hf": 0.9, "reranker.x": 0.15})
    assert sum(m["stage_seconds"].values()) == pytest.approx(m["seconds_per_question"])
    # llm calls: 1 + 1 + 0 + 0 over 4 questions
    assert m["llm_calls_mean"] == pytest.approx(0.5)
    assert m["llm_tokens"] == pytest.approx({"reader.hf": (103 + 305) / 4})
    assert m["peak_rss_mb"] == 650.0
    json.dumps(m, allow_nan=False)  # metrics.json must be plain JSON


def test_rows_keep_question_order_and_details(run):
    rows = score_predictions(*run)
    assert [r["id"] for r in rows] == ["q1", "q2", "q3", "q4"]
    assert rows[2]["error"].startswith("RuntimeError") and rows[2]["f1"] == 0.0
    assert rows[3]["recall@5"] is None and rows[3]["ndcg@10"] is None
    assert rows[0]["ndcg@10"] == pytest.approx(0.6309298, abs=1e-6)


def test_doc_vs_chunk_level_gold_differ():
    pids, dids = ["a#0", "a#1", "b#0"], ["a", "a", "b"]
    doc = evaluate([P("q", "x", pids, dids)], [Q("q", gold=["b"])])
    chunk = evaluate([P("q", "x", pids, dids)], [Q("q", gold=["b#0"])])
    assert doc["ndcg@10"] == pytest.approx(0.6309298, abs=1e-6)  # rank 2 after merging a#0, a#1
    assert chunk["ndcg@10"] == pytest.approx(0.5)  # rank 3
    assert doc["recall@1"] == chunk["recall@1"] == 0.0
    # Without passage_doc_ids only chunk ids can match.
    assert evaluate([P("q", "x", pids)], [Q("q", gold=["b"])])["recall@20"] == 0.0


def test_null_when_not_computable():
    qs = [Q("q1", gold=None), Q("q2", answers=[], gold=None)]
    preds = [P("q1", None, ["c"]), P("q2", None, ["c"])]
    m = evaluate(preds, qs)
    # no reader ran, no gold ids, no answer_in_passages, no timings or tokens
    for key in ("em", "f1", "answer_recall", "recall@1", "recall@20", "ndcg@10", "reader_tokens_mean",
                "ttft_s_mean", "seconds_per_question", "llm_calls_mean", "peak_rss_mb", "citation_precision",
                "citation_recall"):
        assert m[key] is None, key
    assert m["stage_seconds"] == {} and m["n_errors"] == 0 and m["n"] == 2


def test_missing_answer_scores_zero_once_a_reader_ran():
    m = evaluate([P("q1", "Paris"), P("q2", None)], [Q("q1"), Q("q2")])
    assert m["em"] == pytest.approx(0.5)


def test_missing_and_unknown_predictions():
    qs = [Q("q1"), Q("q2"), Q("q3")]
    with pytest.raises(EvalError, match=r"2 of 3 question\(s\) have no prediction.*'q2'.*allow_missing"):
        evaluate([P("q1", "Paris")], qs)
    m = evaluate([P("q1", "Paris")], qs, allow_missing=True)
    assert m["n"] == 3 and m["n_errors"] == 2 and m["em"] == pytest.approx(1 / 3)
    with pytest.raises(EvalError, match="no matching question.*'zz'"):
        evaluate([P("q1", "Paris"), P("zz", "x")], [Q("q1")], allow_missing=True)
    with pytest.raises(EvalError, match="duplicate prediction for question 'q1'"):
        evaluate([P("q1", "a"), P("q1", "b")], [Q("q1")])


def test_malformed_trace_and_options():
    with pytest.raises(EvalError, match="passage_doc_ids.*parallel"):
        evaluate([P("q1", "x", ["a", "b"], ["d"])], [Q("q1", gold=["d"])])
    with pytest.raises(EvalError, match="reader_tokens.*must be a number"):
        evaluate([P("q1", "x", reader_tokens="many")], [Q("q1")])
    with pytest.raises(EvalError, match="answer_in_passages"):
        evaluate([P("q1", "x", answer_in_passages="yes")], [Q("q1")])
    with pytest.raises(ValueError, match="metric_style must be one of"):
        evaluate([P("q1", "x")], [Q("q1")], metric_style="bleu")
    with pytest.raises(ValueError, match="k_values"):
        evaluate([P("q1", "x")], [Q("q1")], k_values=(0, 5))
    m = evaluate([P("q1", "x", ["a"], ["d"])], [Q("q1", gold=["d"])], k_values=(3,))
    assert m["recall@3"] == 1.0 and "recall@5" not in m


def test_chunk_texts_fill_answer_recall_and_hotpot_style():
    qs = [Q("q1", ["no"], gold=None)]
    preds = [P("q1", "no way", ["c1", "c2"])]
    m = evaluate(preds, qs, chunk_texts={"c1": "nothing here", "c2": "the answer is No."}, metric_style="hotpotqa")
    assert m["answer_recall"] == 1.0 and m["f1"] == 0.0 and m["metric_style"] == "hotpotqa"
    assert evaluate(preds, qs)["f1"] == pytest.approx(2 / 3)  # squad: P=1/2, R=1
    with pytest.raises(EvalError, match="chunk_texts lacks"):
        evaluate(preds, qs, chunk_texts={"c1": "x"})


def test_read_predictions_names_file_and_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    good = P("q1", "x").model_dump_json()
    path.write_text(good + "\n\n" + '{"id": "q2", "answer": "y", "passage_ids": [], "tr', encoding="utf-8")
    with pytest.raises(EvalError, match=r"predictions\.jsonl:3: bad prediction record"):
        read_predictions(path)
    path.write_bytes(good.encode() + b"\n\xff\xfe\n")
    with pytest.raises(EvalError, match=r"predictions\.jsonl:2: not valid UTF-8"):
        read_predictions(path)
    path.write_text(good + "\n", encoding="utf-8")
    assert [p.id for p in read_predictions(path)] == ["q1"]


def test_error_does_not_invent_answer_recall():
    """A run that never measured answer recall keeps it null even when a question errored."""
    m = evaluate([P("q1", "Paris"), P("q2", None, error="boom")], [Q("q1"), Q("q2")])
    assert m["answer_recall"] is None and m["n_errors"] == 1 and m["f1"] == pytest.approx(0.5)


def test_a_run_without_passages_has_null_retrieval_metrics() -> None:
    from longread.types import Prediction, Question

    qs = [Question(id="a", question="q?", answers=["x"], gold_ids=["d1"]), Question(id="b", question="q?", answers=["y"], gold_ids=["d2"])]
    preds = [Prediction(id="a", answer="x"), Prediction(id="b", answer="z")]
    m = evaluate(preds, qs)
    assert m["recall@1"] is None and m["ndcg@10"] is None and m["f1"] == 0.5
    preds[0] = Prediction(id="a", answer="x", passage_ids=["d1#0"], trace={"passage_doc_ids": ["d1"]})
    m = evaluate(preds, qs)
    assert m["recall@1"] == 0.5  # once any question has passages, an empty list is a miss


def test_long_and_numeric_styles_reach_the_metrics():
    qs = [Q("q1", ["Eiffel Tower"]), Q("q2", ["$1.6 million"]), Q("q3", ["Paris"]), Q("q4", ["12"])]
    preds = [
        P("q1", "It is the Eiffel Tower in Paris."),
        P("q2", "The sale raised 1,600,000 dollars."),
        P("q3", "Lyon"),
        P("q4", None, error="RuntimeError: boom"),
    ]
    long = evaluate(preds, qs, metric_style="long")
    # q1: normalised pred [it, is, eiffel, tower, in, paris] (6), gold [eiffel, tower] (2): LCS 2,
    #     P = 1/3, R = 1 -> ROUGE-L = 2 * (1/3) / (4/3) = 0.5; contained 1.
    # q2: pred [sale, raised, 1600000, dollars] vs [16, million]: no shared token -> 0, not contained.
    # q3: 0, 0. q4: error -> 0, 0.  ROUGE-L mean 0.5 / 4 = 0.125; contains 1/4.
    assert long["rouge_l"] == pytest.approx(0.125) and long["contains"] == pytest.approx(0.25)
    assert "numeric" not in long and long["metric_style"] == "long"
    assert long["f1"] == pytest.approx(evaluate(preds, qs)["f1"])  # long keeps SQuAD F1
    num = evaluate(preds, qs, metric_style="numeric")
    # numeric applies to q2 (1.6 million == 1,600,000 -> 1) and q4 (error -> 0); q1 and q3 hold no number.
    assert num["n_numeric"] == 2 and num["numeric"] == pytest.approx(0.5)
    assert num["contains"] == pytest.approx(0.25) and "rouge_l" not in num
    rows = score_predictions(preds, qs, metric_style="numeric")
    assert [r["numeric"] for r in rows] == [None, 1.0, None, 0.0]
    # A run without a reader: every answer metric is null, not 0.
    m = evaluate([P("q1", None)], [Q("q1")], metric_style="long")
    assert m["em"] is None and m["rouge_l"] is None and m["contains"] is None


def _typed(pred: Prediction, usage: list[Usage]) -> Prediction:
    """``pred`` with its trace cost keys moved into typed usage records."""
    trace = {k: v for k, v in pred.trace.items()
             if k not in ("timings", "reader_tokens", "ttft_s", "new_tokens", "llm_calls", "llm_tokens")}
    return pred.model_copy(update={"trace": trace, "usage": usage})


def test_typed_usage_scores_like_the_trace_keys_it_replaces(run):
    legacy, questions = run
    hf = {"backend": "hf", "model": "m"}
    usage = [
        [Usage(stage="retriever.bm25", seconds=0.1),
         Usage(stage="reader.hf", calls=1, prompt_tokens=100, new_tokens=3, seconds=0.9, ttft_s=0.2, **hf)],
        [Usage(stage="retriever.bm25", seconds=0.3),
         Usage(stage="reader.hf", calls=1, prompt_tokens=300, new_tokens=5, seconds=1.7, ttft_s=0.4, **hf)],
        [Usage(stage="retriever.bm25", seconds=0.2)],
        # A reader that counts what it read but calls no model (reader.echo): tokens, no LLM call.
        [Usage(stage="retriever.bm25", seconds=0.2), Usage(stage="reader.hf", prompt_tokens=200, seconds=1.0),
         Usage(stage="reranker.x", seconds=0.6)],
    ]
    typed = [_typed(p, u) for p, u in zip(legacy, usage)]
    assert all(not p.trace.keys() & {"timings", "reader_tokens"} for p in typed)
    a, b = evaluate(legacy, questions), evaluate(typed, questions)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k]), k


def test_route_parts_add_up_and_a_legacy_fallback_reader_still_counts():
    hf = {"backend": "hf", "model": "m"}
    q = [Q("q1"), Q("q2")]
    both = P("q1", "Paris")
    both = both.model_copy(update={"usage": [
        Usage(stage="reader.route", part="rag", calls=1, prompt_tokens=50, new_tokens=2, seconds=0.5, ttft_s=0.1, **hf),
        Usage(stage="reader.route", part="fallback", calls=1, prompt_tokens=400, new_tokens=4, seconds=2.0, ttft_s=0.7, **hf),
    ]})
    # Self-Route whose fallback (reader.retrolm) still writes the old trace keys.
    mixed = P("q2", "Paris", reader_tokens=300, new_tokens=3, ttft_s=0.9, llm_calls={"reader.retrolm": 1},
              llm_tokens={"reader.retrolm": 900})
    mixed = mixed.model_copy(update={"usage": [
        Usage(stage="reader.route", part="rag", calls=1, prompt_tokens=50, new_tokens=2, seconds=0.5, ttft_s=0.1, **hf),
        Usage(stage="reader.route", part="fallback", seconds=3.0),
    ]})
    rows = score_predictions([both, mixed], q)
    assert [r["reader_tokens"] for r in rows] == [450, 350]
    assert [r["new_tokens"] for r in rows] == [6, 5]
    assert [r["ttft_s"] for r in rows] == [0.7, 0.9]
    assert rows[0]["timings"] == pytest.approx({"reader.route": 2.5}) and rows[1]["timings"] == pytest.approx({"reader.route": 3.5})
    assert rows[0]["llm_calls"] == {"reader.route": 2} and rows[1]["llm_calls"] == {"reader.route": 1, "reader.retrolm": 1}
    assert rows[0]["llm_tokens"] == {"reader.route": 456} and rows[1]["llm_tokens"] == {"reader.route": 52, "reader.retrolm": 900}
    m = evaluate([both, mixed], q)
    assert m["reader_tokens_mean"] == pytest.approx(400) and m["llm_calls_mean"] == pytest.approx(2.0)


def _cite(n: int, chunk: str, text: str) -> Citation:
    return Citation(n=n, doc_id=chunk.split("#")[0], chunk_id=chunk, start=0, end=len(text), text=text)


def test_citations_are_scored_and_markers_do_not_hurt_em():
    qs = [Q("q1", ["Paris"], gold=["d2"]), Q("q2", ["Denver Broncos"], gold=["d3#0"]), Q("q3", ["x"], gold=["x"]),
          Q("q4", ["y"])]
    preds = [
        P("q1", "Paris [1][2].").model_copy(update={"citations": [_cite(1, "d1#0", "Paris is big."), _cite(2, "d2#0", "Nothing.")]}),
        P("q2", "The Denver Broncos won [1].").model_copy(update={"citations": [_cite(1, "d1#1", "The Denver Broncos won it.")]}),
        P("q3", "No idea."),
        P("q4", None, error="RuntimeError: boom"),
    ]
    rows = score_predictions(preds, qs)
    assert rows[0]["em"] == 1.0  # scored as "Paris."
    assert rows[1]["f1"] == pytest.approx(0.8)  # "denver broncos won" vs "denver broncos"
    assert [r["citation_precision"] for r in rows] == [0.5, 1.0, None, None]
    assert [r["citation_recall"] for r in rows] == [1.0, 0.0, 0.0, None]  # q1's gold doc d2 is cited
    m = evaluate(preds, qs)
    assert m["citation_precision"] == pytest.approx(0.75) and m["citation_recall"] == pytest.approx(1 / 3)
    # Without any citation in the run the metrics are null, and a bare "[2]" answer is scored as it is.
    plain = evaluate([P("q1", "[2]"), P("q2", "Broncos")], qs[:2])
    assert plain["citation_precision"] is None and plain["citation_recall"] is None
    assert evaluate([P("q1", "2")], [Q("q1", ["[2]"])])["em"] == evaluate([P("q1", "[2]")], [Q("q1", ["[2]"])])["em"] == 1.0


def test_passages_merely_read_are_not_scored_as_citations():
    qs = [Q("q1", ["Paris"], gold=["d2"]), Q("q2", ["Broncos"], gold=["d1"])]
    read = [_cite(1, "d1#0", "Nothing.").model_copy(update={"cited": False}),
            _cite(2, "d2#0", "Paris is big.").model_copy(update={"cited": False})]
    # A run that only lists the passages its reader read has no citation metrics at all.
    m = evaluate([P("q1", "Paris").model_copy(update={"citations": read}), P("q2", "Broncos")], qs)
    assert m["citation_precision"] is None and m["citation_recall"] is None
    # Mixed with marked ones, only the marked count: q1 marks d1 (no gold answer, not the gold doc).
    mixed = [read[0].model_copy(update={"cited": True}), read[1]]
    rows = score_predictions([P("q1", "Paris [1]").model_copy(update={"citations": mixed}),
                              P("q2", "Broncos").model_copy(update={"citations": read})], qs)
    assert [r["citations"] for r in rows] == [1, 0]
    assert [r["citation_precision"] for r in rows] == [0.0, None]
    assert [r["citation_recall"] for r in rows] == [0.0, 0.0]
