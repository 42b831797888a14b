"""report.md, evaluate_run, compare and the paired bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longread.data import write_jsonl
from longread.eval.compare import compare, load_run, paired_bootstrap, write_compare
from longread.eval.evaluator import evaluate, evaluate_run
from longread.eval.report import load_rows, render_report, write_report
from longread.types import Prediction, Question

QUESTIONS = [Question(id=f"q{i}", question=f"what is {i}?", answers=[f"answer {i}"], gold_ids=[f"d{i}"]) for i in range(20)]


def make_run(tmp_path, name, correct, *, error_ids=(), seconds=1.0, config_name=None):
    """A run dir whose predictions are right for ids in ``correct``."""
    run = tmp_path / name
    run.mkdir()
    preds = []
    for q in QUESTIONS:
        i = int(q.id[1:])
        err = "ValueError: boom" if q.id in error_ids else None
        ans = None if err else (f"answer {i}" if q.id in correct else f"wrong | guess\nline")
        preds.append(Prediction(id=q.id, answer=ans, passage_ids=[f"d{i}#0"], error=err,
                                trace={"passage_doc_ids": [f"d{i}"], "timings": {"retriever": 0.1, "reader": seconds},
                                       "reader_tokens": 100}))
    write_jsonl(run / "predictions.jsonl", preds)
    write_jsonl(run / "questions.jsonl", QUESTIONS)
    if config_name:
        (run / "config.yaml").write_text(f"name: {config_name}\nstages: []\n", encoding="utf-8")
    return run


def test_evaluate_run_writes_metrics_rows_and_report(tmp_path):
    run = make_run(tmp_path, "r1", {f"q{i}" for i in range(15)}, error_ids={"q19"}, config_name="rag-bm25")
    m = evaluate_run(run)
    assert m["n"] == 20 and m["n_errors"] == 1 and m["em"] == pytest.approx(15 / 20)
    assert json.loads((run / "metrics.json").read_text())["em"] == m["em"]
    rows = [json.loads(x) for x in (run / "per_question.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    report = (run / "report.md").read_text()
    assert report.startswith("# Run report: rag-bm25")
    assert "| em | 0.750 |" in report
    assert "| retriever | 0.1000 |" in report and "| reader | 1.0000 |" in report
    # worst sample: the error first, then F1 = 0 ones; cells have no raw pipe or newline
    worst = report.split("## Worst questions")[1]
    assert worst.index("q19") < worst.index("q15")
    assert "wrong \\| guess line" in worst
    assert not list(run.glob(".*.tmp"))  # nothing half-written left behind


def test_write_report_like_the_runner_does(tmp_path):
    """The runner passes only metrics; rows come from run.json's questions file."""
    run = make_run(tmp_path, "r", {"q0"})
    (run / "run.json").write_text(json.dumps({"inputs": {"questions": str(run / "questions.jsonl")}}))
    (run / "questions.jsonl").rename(tmp_path / "qs.jsonl")
    (run / "run.json").write_text(json.dumps({"inputs": {"questions": str(tmp_path / "qs.jsonl")}}))
    from longread.eval.evaluator import read_predictions

    m = evaluate(read_predictions(run / "predictions.jsonl"), QUESTIONS)
    write_report(run, m, config_name="x")
    assert "Lowest F1 (10 of 20)" in (run / "report.md").read_text()
    assert len(load_rows(run)) == 20
    # Without a way to get rows, the report says so and stale rows are removed.
    (run / "run.json").unlink()
    write_report(run, m, config_name="x")
    assert "per-question rows not available" in (run / "report.md").read_text()
    assert not (run / "per_question.jsonl").exists()


def test_render_report_nulls_and_bad_worst_n():
    text = render_report({"n": 2, "n_errors": 0, "em": None, "f1": None, "recall@5": 0.5, "ndcg@10": None}, "r", rows=[])
    assert "| em | – |" in text and "| recall@5 | 0.500 |" in text
    with pytest.raises(ValueError, match="worst_n must be >= 0"):
        render_report({}, "r", worst_n=-1)


def test_compare_table_and_bootstrap(tmp_path):
    a = make_run(tmp_path, "a", {f"q{i}" for i in range(5)}, config_name="base")
    b = make_run(tmp_path, "b", {f"q{i}" for i in range(18)}, seconds=3.0, config_name="better")
    c = make_run(tmp_path, "c", {f"q{i}" for i in range(5)}, config_name="base")
    for r in (a, b, c):
        evaluate_run(r)
    text = compare([a, b, c], n_resamples=500, seed=1)
    lines = text.splitlines()
    header = next(x for x in lines if x.startswith("| metric |"))
    assert header == "| metric | base (a) | better | base (c) |"  # same config name -> dir shown
    assert "| em | 0.250 | 0.900 | 0.250 |" in lines
    assert "| seconds_per_question | 1.100 | 3.100 | 1.100 |" in lines
    assert "| n_errors | 0 | 0 | 0 |" in lines
    assert any(x.startswith("| recall@20 |") for x in lines)
    # b vs a: 13 more questions right of 20 -> +0.650, clearly non-zero; c equals a -> +0.000 [0, 0]
    row_b = next(x for x in lines if x.startswith("| better |"))
    assert "+0.650" in row_b and row_b.rstrip().endswith("| 20 | yes |")
    row_c = next(x for x in lines if x.startswith("| base (c) |"))
    assert "[+0.000, +0.000]" in row_c and row_c.rstrip().endswith("| no |")
    assert compare([a, b, c], n_resamples=500, seed=1) == text  # seeded: identical output
    out = write_compare([a, b], tmp_path / "cmp", n_resamples=100)
    assert out.read_text().startswith("# Comparison")


def test_compare_errors_and_missing_rows(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        compare([])
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        compare([tmp_path])
    a = make_run(tmp_path, "a", {"q0"})
    b = make_run(tmp_path, "b", {"q1"})
    evaluate_run(a)
    evaluate_run(b)
    (b / "per_question.jsonl").unlink()
    assert load_run(b).rows is None
    text = compare([a, b], n_resamples=50)
    assert "(per-question rows missing)" in text


def test_paired_bootstrap_properties():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    b = a + 0.1 + rng.normal(0, 0.05, 200)
    r = paired_bootstrap(a, b, n_resamples=1000, seed=3)
    assert r.low < r.diff < r.high and r.significant and r.n == 200 and r.p_value < 0.01
    assert r.diff == pytest.approx(float(np.mean(b - a)))
    assert r == paired_bootstrap(a, b, n_resamples=1000, seed=3)
    noise = paired_bootstrap(a, a + rng.normal(0, 0.05, 200), n_resamples=1000, seed=3)
    assert noise.low < 0 < noise.high and not noise.significant
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one pair"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [1.0], confidence=1.5)
