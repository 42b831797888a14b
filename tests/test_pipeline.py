"""Pipeline, executors and run dirs, on BM25 + the cheap ``reader.echo`` fake (no model needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longread.data import write_jsonl
from longread.pipelines.executors import StageFailed
from longread.pipelines.pipeline import IndexMismatchError, Pipeline
from longread.pipelines.runner import RunDirError, read_predictions, run
from longread.types import Document, Question

TOPICS = [
    ("paris", "Paris is the capital of France. The Eiffel Tower stands in Paris on the Seine."),
    ("nile", "The Nile is the longest river in Africa, flowing north into the Mediterranean Sea."),
    ("moon", "Apollo 11 landed on the Moon in 1969; Neil Armstrong was the first to walk on it."),
    ("boil", "Water boils at 100 degrees Celsius at sea level and freezes at zero degrees."),
    ("everest", "Mount Everest in the Himalayas is the highest mountain above sea level on Earth."),
]


def corpus() -> list[Document]:
    return [Document(id=i, text=t + " " + " ".join(f"filler{j}" for j in range(40))) for i, t in TOPICS]


def questions(n: int = 5) -> list[Question]:
    qs = [
        Question(id="q-paris", question="What is the capital of France?", answers=["Paris"], gold_ids=["paris"]),
        Question(id="q-nile", question="Which is the longest river in Africa?", answers=["Nile"], gold_ids=["nile"]),
        Question(id="q-moon", question="When did Apollo 11 land on the Moon?", answers=["1969"], gold_ids=["moon"]),
        Question(id="q-boil", question="At what temperature does water boil?", answers=["100 degrees"], gold_ids=["boil"]),
        Question(id="q-everest", question="Which mountain is the highest on Earth?", answers=["Everest"], gold_ids=["everest"]),
    ]
    out = list(qs)
    i = 0
    while len(out) < n:
        q = qs[i % len(qs)]
        out.append(q.model_copy(update={"id": f"{q.id}-{len(out)}"}))
        i += 1
    return out[:n]


def config(**echo: object) -> dict:
    return {
        "name": "test-bm25-echo",
        "chunker": {"kind": "tokens", "size": 24, "overlap": 4},
        "stages": [
            {"key": "retriever.bm25", "params": {"top_k": 3}},
            {"key": "reorder.hard_negative", "params": {"mode": "identity"}},
            {"key": "reader.echo", "params": {"words": 3, **echo}, "resources": {"batch_size": 2}},
        ],
    }


def test_index_then_answer_finds_the_right_documents(tmp_path: Path) -> None:
    pipe = Pipeline.from_config(config())
    pipe.index(corpus(), tmp_path / "idx", show_progress=False)
    states = pipe.answer(questions(), index_dir=tmp_path / "idx")
    assert [s.question.id for s in states] == [q.id for q in questions()]
    for s in states:
        assert s.passages, s.question.id
        assert s.passages[0].chunk.doc_id == s.question.gold_ids[0]
        assert s.answer and "error" not in s.trace
        assert s.trace["passage_doc_ids"][0] == s.question.gold_ids[0]
        assert s.trace["answer_in_passages"] is True
        assert {u.stage for u in s.usage if u.seconds > 0} >= {"retriever.bm25", "reader.echo"}


def test_scoped_question_only_sees_its_documents(tmp_path: Path) -> None:
    pipe = Pipeline.from_config(config())
    pipe.index(corpus(), tmp_path / "idx", show_progress=False)
    q = Question(id="scoped", question="Paris: what river or Moon landing?", answers=["Paris"], doc_ids=["nile", "moon"])
    (s,) = pipe.answer([q], index_dir=tmp_path / "idx")
    assert s.passages and {p.chunk.doc_id for p in s.passages} <= {"nile", "moon"}


def test_question_scoped_to_missing_document_is_an_error_not_a_crash(tmp_path: Path) -> None:
    pipe = Pipeline.from_config(config())
    pipe.index(corpus(), tmp_path / "idx", show_progress=False)
    qs = [Question(id="bad", question="x?", doc_ids=["nope"]), *questions(2)]
    states = pipe.answer(qs, index_dir=tmp_path / "idx")
    assert "nope" in states[0].trace["error"]
    assert all("error" not in s.trace for s in states[1:])


def test_index_is_reused_and_mismatch_is_refused(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    pipe = Pipeline.from_config(config())
    pipe.index(corpus(), idx, show_progress=False)
    man = json.loads((idx / "manifest.json").read_text())
    part = next(iter(man["parts"]))
    before = (idx / part).stat().st_mtime_ns
    pipe.index(corpus(), idx, show_progress=False)
    assert (idx / part).stat().st_mtime_ns == before  # not rebuilt
    with pytest.raises(IndexMismatchError, match="different corpus"):
        pipe.index(corpus()[:2], idx, show_progress=False)
    other = dict(config(), chunker={"kind": "whole"})
    with pytest.raises(IndexMismatchError, match="chunker"):
        Pipeline.from_config(other).index(corpus(), idx, show_progress=False)
    Pipeline.from_config(other).index(corpus(), idx, show_progress=False, rebuild=True)
    assert json.loads((idx / "manifest.json").read_text())["chunker"]["kind"] == "whole"


def test_index_refuses_a_foreign_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "stuff.txt").write_text("mine")
    with pytest.raises(IndexMismatchError, match="not empty"):
        Pipeline.from_config(config()).index(corpus(), tmp_path, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stuff.txt"]


def test_a_failing_index_part_leaves_nothing_half_written(tmp_path: Path) -> None:
    cfg = config()
    cfg["stages"][0] = {"key": "retriever.dense", "params": {"encoder": str(tmp_path / "no-such-encoder")}}
    idx = tmp_path / "idx"
    with pytest.raises(Exception):
        Pipeline.from_config(cfg).index(corpus(), idx, show_progress=False)
    names = sorted(p.name for p in idx.iterdir())
    assert names == ["corpus", "manifest.json"]  # no dense part, no temp dirs


def test_one_failing_question_is_recorded_and_the_batch_goes_on(tmp_path: Path) -> None:
    pipe = Pipeline.from_config(config(fail_on="river"))
    pipe.index(corpus(), tmp_path / "idx", show_progress=False)
    states = pipe.answer(questions(), index_dir=tmp_path / "idx")
    errs = {s.question.id: s.trace.get("error") for s in states}
    assert errs.pop("q-nile").startswith("reader.echo: ValueError")
    assert all(v is None for v in errs.values())
    assert all(s.answer for s in states if s.question.id != "q-nile")
    with pytest.raises(StageFailed, match="river"):
        pipe.answer(questions(), index_dir=tmp_path / "idx", fail_fast=True)


def test_run_dir_has_everything_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run(Pipeline.from_config(config(fail_on="river")), corpus(), questions(), out, show_progress=False)
    for name in ["config.yaml", "run.json", "predictions.jsonl", "metrics.json", "report.md"]:
        assert (out / name).is_file(), name
    m = res.metrics
    assert m["n"] == 5 and m["n_errors"] == 1
    preds = read_predictions(out / "predictions.jsonl")
    assert [p.id for p in preds] == [q.id for q in questions()]
    assert next(p for p in preds if p.id == "q-nile").error
    meta = json.loads((out / "run.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"] and meta["config_name"] == "test-bm25-echo"
    with pytest.raises(RunDirError, match="--resume"):
        run(Pipeline.from_config(config()), corpus(), questions(), out, show_progress=False)
    with pytest.raises(RunDirError, match="different config"):
        run(Pipeline.from_config(config(words=5)), corpus(), questions(), out, resume=True, show_progress=False)


def test_resume_after_a_torn_line_answers_only_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    qs = questions(8)
    full = run(Pipeline.from_config(config()), corpus(), qs, tmp_path / "full", show_progress=False)
    part = run(Pipeline.from_config(config()), corpus(), qs, out, limit=3, show_progress=False)
    assert part.metrics["n"] == 3
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"id": "q-boil", "answ')  # a write cut off by a kill
    res = run(Pipeline.from_config(config()), corpus(), qs, out, resume=True, show_progress=False)
    assert res.n_answered_now == 5
    ids = [p.id for p in read_predictions(out / "predictions.jsonl")]
    assert sorted(ids) == sorted(q.id for q in qs) and len(ids) == len(set(ids))
    for k in ("em", "f1", "answer_recall", "n", "n_errors", "recall@1"):
        assert res.metrics[k] == full.metrics[k], k


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longread.cli", *args], capture_output=True, text=True, timeout=300, **kw)


def test_kill_9_mid_run_then_resume_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(config(sleep_s=0.15)))
    write_jsonl(tmp_path / "corpus.jsonl", corpus())
    qs = questions(30)
    write_jsonl(tmp_path / "q.jsonl", qs)
    out = tmp_path / "run"
    args = ["run", "--config", str(cfg), "--corpus", str(tmp_path / "corpus.jsonl"), "--questions", str(tmp_path / "q.jsonl"), "--out", str(out), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "longread.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    preds = out / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if preds.is_file() and preds.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = preds.read_bytes().count(b"\n")
    assert 6 <= n_before < 30, n_before
    res = _cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    ids = [p.id for p in read_predictions(preds)]
    assert sorted(ids) == sorted(q.id for q in qs) and len(ids) == len(set(ids))
    clean = _cli(*args[:-3], "--out", str(tmp_path / "clean"), "--quiet")
    assert clean.returncode == 0, clean.stderr
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    for k in ("n", "n_errors", "em", "f1", "answer_recall", "recall@1", "ndcg@10"):
        assert a[k] == b[k], k


def test_cli_reports_bad_input_with_file_and_line(tmp_path: Path) -> None:
    corpus_path = tmp_path / "corpus.jsonl"
    corpus_path.write_text('{"id": "a", "text": "one"}\n{"id": "a", "text": "two"}\n')
    write_jsonl(tmp_path / "q.jsonl", questions(1))
    res = _cli("index", "--config", "rag_bm25", "--corpus", str(corpus_path), "--out", str(tmp_path / "idx"))
    assert res.returncode == 2
    assert "line 2" in res.stderr and "'a'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "idx").exists()
    res = _cli("index", "--config", str(tmp_path / "missing.yaml"), "--corpus", str(corpus_path), "--out", str(tmp_path / "idx"))
    assert res.returncode == 2 and "not found" in res.stderr


def test_cli_scoped_question_to_missing_doc_is_named(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "corpus.jsonl", corpus())
    write_jsonl(tmp_path / "q.jsonl", [Question(id="q1", question="x?", doc_ids=["ghost"])])
    res = _cli("run", "--config", "rag_bm25", "--corpus", str(tmp_path / "corpus.jsonl"), "--questions", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "ghost" in res.stderr and "q1" in res.stderr


@pytest.mark.slow
def test_ray_executor_gives_the_same_answers_as_local(tmp_path: Path) -> None:
    pipe = Pipeline.from_config(config())
    pipe.index(corpus(), tmp_path / "idx", show_progress=False)
    qs = questions(8)
    local = pipe.answer(qs, index_dir=tmp_path / "idx")
    on_ray = pipe.answer(qs, index_dir=tmp_path / "idx", executor="ray")
    assert [s.question.id for s in on_ray] == [q.id for q in qs]
    assert [(s.answer, [p.chunk.id for p in s.passages]) for s in on_ray] == [
        (s.answer, [p.chunk.id for p in s.passages]) for s in local
    ]


@pytest.mark.slow
def test_ray_run_survives_a_worker_that_dies(tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    pipe = Pipeline.from_config(config(crash_once_file=str(marker)))
    pipe.index(corpus(), tmp_path / "idx", show_progress=False)
    qs = questions(6)
    on_ray = pipe.answer(qs, index_dir=tmp_path / "idx", executor="ray")
    assert marker.exists()  # a worker really died mid-run
    ref = Pipeline.from_config(config()).answer(qs, index_dir=tmp_path / "idx")
    assert [s.answer for s in on_ray] == [s.answer for s in ref]
    assert all("error" not in s.trace for s in on_ray)
