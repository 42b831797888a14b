"""Run dir lifecycle: one writer, resume checks every input, failed starts, one error line, streaming."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from longread.data import write_jsonl
from longread.pipelines.pipeline import Pipeline
from longread.pipelines.runner import RunDirError, read_predictions, run
from longread.types import Document, Question

ROOT = Path(__file__).resolve().parents[1]

TEXTS = {
    "paris": "Paris is the capital of France. The Eiffel Tower stands in Paris on the Seine.",
    "nile": "The Nile is the longest river in Africa, flowing north into the Mediterranean Sea.",
    "moon": "Apollo 11 landed on the Moon in 1969; Neil Armstrong was the first to walk on it.",
}


def corpus(extra: str = "") -> list[Document]:
    return [Document(id=k, text=f"{v} {extra}".strip()) for k, v in TEXTS.items()]


def questions(n: int = 6, suffix: str = "") -> list[Question]:
    base = [("paris", "What is the capital of France?", "Paris"), ("nile", "Which river is the longest in Africa?", "Nile"),
            ("moon", "When did Apollo 11 land on the Moon?", "1969")]
    return [Question(id=f"q{i}", question=base[i % 3][1] + suffix, answers=[base[i % 3][2]], gold_ids=[base[i % 3][0]]) for i in range(n)]


def config(sleep_s: float = 0.0, reader_batch: int = 2, **reader: object) -> dict:
    return {
        "name": "rundir-test",
        "chunker": {"kind": "tokens", "size": 24, "overlap": 4},
        "stages": [
            {"key": "retriever.bm25", "params": {"top_k": 2}, "resources": {"batch_size": 16}},
            {"key": "reader.echo", "params": {"words": 2, "sleep_s": sleep_s, **reader}, "resources": {"batch_size": reader_batch}},
        ],
    }


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longread.cli", *args], capture_output=True, text=True, timeout=300, env=_env())


def _files(tmp_path: Path, cfg: dict, n: int = 6) -> list[str]:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    write_jsonl(tmp_path / "corpus.jsonl", corpus())
    write_jsonl(tmp_path / "q.jsonl", questions(n))
    return ["--config", str(tmp_path / "c.yaml"), "--corpus", str(tmp_path / "corpus.jsonl"), "--questions", str(tmp_path / "q.jsonl"), "--quiet"]


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    return lines[0]


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {n} lines")


def test_a_second_writer_is_refused_naming_the_first_and_kill_9_leaves_no_stale_lock(tmp_path: Path) -> None:
    cfg = config(sleep_s=0.15)
    args = _files(tmp_path, cfg, n=40)
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "longread.cli", "run", *args, "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for_lines(out / "predictions.jsonl", 2, first)
        second = _cli("run", *args, "--out", str(out), "--resume")
        line = _one_error_line(second)
        assert f"pid {first.pid}" in line and "being written" in line
        assert first.poll() is None, "the first writer finished too early to test the refusal"
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # The kernel dropped the dead writer's lock: resuming (here in-process, to save a start-up) works.
    res = run(Pipeline.from_config(cfg), corpus(), questions(40), out, resume=True, show_progress=False,
              inputs={"corpus": str(tmp_path / "corpus.jsonl"), "questions": str(tmp_path / "q.jsonl")})
    assert 0 < res.n_answered_now < 40
    ids = [p.id for p in read_predictions(out / "predictions.jsonl")]
    assert sorted(ids) == sorted(q.id for q in questions(40)) and len(ids) == len(set(ids))


def test_resume_refuses_another_questions_file_changed_questions_and_another_index(tmp_path: Path) -> None:
    pipe = Pipeline.from_config(config())
    out = tmp_path / "run"
    qfile = tmp_path / "q.jsonl"
    write_jsonl(qfile, questions(6))
    run(pipe, corpus(), questions(6), out, limit=3, show_progress=False, inputs={"questions": str(qfile)})
    record = json.loads((out / "run.json").read_text())
    assert set(record["digests"]) == {"config_sha256", "questions_sha256", "questions_file_sha256", "index"}
    assert record["digests"]["questions_file_sha256"] is not None and record["digests"]["index"]

    other = tmp_path / "other.jsonl"
    write_jsonl(other, [Question(id="x1", question="Who?", answers=["nobody"])])
    with pytest.raises(RunDirError, match=r"another questions file .*other\.jsonl") as e:
        run(pipe, corpus(), load(other), out, resume=True, show_progress=False, inputs={"questions": str(other)})
    assert "no longer present" in str(e.value)

    changed = [q.model_copy(update={"answers": ["Lyon"]}) if q.id == "q0" else q for q in questions(6)]
    with pytest.raises(RunDirError, match=r"'q0' \(answers\)"):
        run(pipe, corpus(), changed, out, resume=True, show_progress=False)
    reworded = questions(6, suffix=" Be brief.")
    with pytest.raises(RunDirError, match=r"'q0' \(question\)"):
        run(pipe, corpus(), reworded, out, resume=True, show_progress=False)

    other_idx = tmp_path / "other-index"
    pipe.index(corpus(extra="Extra words change the corpus."), other_idx, show_progress=False)
    with pytest.raises(RunDirError, match="index: the run answered from"):
        run(pipe, None, questions(6), out, index_dir=other_idx, resume=True, show_progress=False)

    # The same inputs (a larger --limit is fine) resume and finish.
    res = run(pipe, corpus(), questions(6), out, resume=True, show_progress=False, inputs={"questions": str(qfile)})
    assert res.n_answered_now == 3 and res.metrics["n"] == 6


def load(path: Path) -> list[Question]:
    from longread.data import load_questions

    return load_questions(path)


def test_resume_answers_the_questions_that_failed_and_keeps_one_line_each(tmp_path: Path) -> None:
    fault = tmp_path / "server-down"
    fault.touch()
    pipe = Pipeline.from_config(config(reader_batch=1, fail_on="river", fail_while_exists=str(fault)))
    out = tmp_path / "run"
    first = run(pipe, corpus(), questions(6), out, show_progress=False)
    failed = {p.id for p in read_predictions(out / "predictions.jsonl") if p.error is not None}
    assert failed == {"q1", "q4"} and first.metrics["n"] == 6

    fault.unlink()  # the fault has passed: --resume answers those two again, and only those
    again = run(pipe, corpus(), questions(6), out, resume=True, show_progress=False)
    preds = read_predictions(out / "predictions.jsonl")
    assert again.n_answered_now == 2
    assert sorted(p.id for p in preds) == [f"q{i}" for i in range(6)]
    assert all(p.error is None for p in preds) and {p.answer for p in preds if p.id in failed} == {"The Nile"}
    # Nothing left to retry: a further --resume answers nothing.
    assert run(pipe, corpus(), questions(6), out, resume=True, show_progress=False).n_answered_now == 0


def test_resume_names_the_config_field_that_changed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(Pipeline.from_config(config()), corpus(), questions(3), out, show_progress=False)
    with pytest.raises(RunDirError, match=r"different config \(stages\[1\]\.params\.words 2 → 3\)"):
        run(Pipeline.from_config(config(words=3)), corpus(), questions(3), out, resume=True, show_progress=False)


def test_a_failed_setup_does_not_block_a_plain_rerun(tmp_path: Path) -> None:
    out = tmp_path / "run"
    bad = config()
    bad["stages"][1] = {"key": "reader.hf", "params": {"model": str(tmp_path / "no-such-model")}}
    with pytest.raises(Exception):
        run(Pipeline.from_config(bad), corpus(), questions(3), out, show_progress=False)
    assert not (out / "predictions.jsonl").exists()
    (out / "predictions.jsonl").write_text("")  # what an older longread left behind
    res = run(Pipeline.from_config(config()), corpus(), questions(3), out, show_progress=False)
    assert res.metrics["n"] == 3


def test_eval_scores_like_run_and_keeps_index_seconds(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run(Pipeline.from_config(config()), corpus(), questions(4), out, show_progress=False)
    assert res.metrics["index_seconds"] > 0
    rows_after_run = (out / "per_question.jsonl").read_text()
    ev = _cli("eval", str(out))
    assert ev.returncode == 0, ev.stderr
    again = json.loads((out / "metrics.json").read_text())
    assert again == res.metrics  # index_seconds included
    assert (out / "per_question.jsonl").read_text() == rows_after_run


def test_evaluate_accepts_what_answer_returns(tmp_path: Path) -> None:
    from longread import evaluate

    pipe = Pipeline.from_config(config())
    pipe.index(corpus(), tmp_path / "idx", show_progress=False)
    qs = questions(3)
    m = evaluate(pipe.answer(qs, index_dir=tmp_path / "idx"), qs)
    assert m["n"] == 3 and m["n_errors"] == 0 and m["recall@1"] == 1.0


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    args = _files(tmp_path, config(fail_on="river"), n=3)
    (tmp_path / "afile").write_text("x")
    line = _one_error_line(_cli("run", *args, "--out", str(tmp_path / "afile")))
    assert "is a file, not a run dir" in line
    line = _one_error_line(_cli("run", *args, "--out", str(tmp_path / "ff"), "--fail-fast"))
    assert "stopped at the first failure" in line and "'q1'" in line
    assert not (tmp_path / "ff" / "predictions.jsonl").exists()  # q0's batch held the failing q1: nothing answered
    dbg = _cli("--debug", "run", *args, "--out", str(tmp_path / "afile"))
    assert dbg.returncode != 0 and "Traceback" in dbg.stderr


def _in_tiny_tmpfs(command: str, size: str = "256k") -> subprocess.CompletedProcess | None:
    """Run ``command`` (sh) with a fresh tmpfs of ``size`` at /tmp/lr-full, in its own mount namespace.

    None when no mount namespace can be made here (needs ``unshare``, as root or with user namespaces).
    """
    script = f"mkdir -p /tmp/lr-full && mount -t tmpfs -o size={size} tmpfs /tmp/lr-full || exit 99\n{command}"
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        if shutil.which(prefix[0]) is None:
            continue
        res = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, timeout=300, env=_env())
        if res.returncode != 99 and "unshare" not in res.stderr[:200]:
            return res
    return None


def test_disk_full_is_one_error_line_and_the_run_resumes(tmp_path: Path) -> None:
    # Long answers (the echo reader repeats a 3,000-word chunk) fill a 256 KiB run dir after a few questions.
    cfg = config(words=3000)
    cfg["chunker"] = {"kind": "whole"}
    docs = [Document(id=f"d{i}", text=" ".join(f"w{i}x{j}" for j in range(3000))) for i in range(3)]
    qs = [Question(id=f"q{i}", question=f"w{i % 3}x1?", answers=["w"]) for i in range(12)]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    write_jsonl(tmp_path / "q.jsonl", qs)
    Pipeline.from_config(cfg).index(docs, tmp_path / "idx", show_progress=False)
    cmd = (f"{sys.executable} -m longread.cli run --config {tmp_path / 'c.yaml'} --questions {tmp_path / 'q.jsonl'} "
           f"--index {tmp_path / 'idx'} --out /tmp/lr-full/run --quiet\nrc=$?\ncp -a /tmp/lr-full/run {tmp_path / 'run'}\nexit $rc")
    res = _in_tiny_tmpfs(cmd)
    if res is None:
        pytest.skip("cannot mount a tmpfs here (needs unshare as root or user namespaces)")
    line = _one_error_line(res)
    assert "disk full" in line and "predictions.jsonl" in line and "--resume" in line
    kept = (tmp_path / "run" / "predictions.jsonl").read_bytes().count(b"\n")
    assert 0 < kept < 12
    # Space freed (the dir copied to a real disk): the run resumes, keeps what was written, repeats nothing.
    out = run(Pipeline.from_config(cfg), None, qs, tmp_path / "run", index_dir=tmp_path / "idx", resume=True,
              show_progress=False, inputs={"questions": str(tmp_path / "q.jsonl")})
    ids = [p.id for p in read_predictions(tmp_path / "run" / "predictions.jsonl")]
    assert sorted(ids) == sorted(q.id for q in qs) and len(ids) == 12 and out.n_answered_now == 12 - kept


def test_answers_stream_one_reader_batch_at_a_time(tmp_path: Path) -> None:
    from longread.pipelines.executors import LocalExecutor
    from longread.stage import RunContext, Stage
    from longread.types import QAState

    calls: list[tuple[str, int]] = []

    class Count(Stage):
        key = "test.count"

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def __call__(self, batch: list[QAState]) -> list[QAState]:
            calls.append((self.name, len(batch)))
            return batch

    from longread.models.hub import ModelHub

    ex = LocalExecutor([Count("retrieve"), Count("read")], [16, 2], RunContext(models=ModelHub(cache_dir=tmp_path)))
    it = ex.run([QAState(question=q) for q in questions(40)])
    first = next(it)
    assert first.question.id == "q0"
    assert calls == [("retrieve", 16), ("read", 2)]  # one reader batch, not 16 questions through every stage
    rest = list(it)
    assert len(rest) == 39 and [s.question.id for s in rest] == [f"q{i}" for i in range(1, 40)]
    assert [n for name, n in calls if name == "retrieve"] == [16, 16, 8]


def test_version_flag(capsys: pytest.CaptureFixture) -> None:
    import longread
    from longread.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"longread {longread.__version__}"


def test_a_run_that_fails_before_writing_leaves_no_dir(tmp_path: Path) -> None:
    res = _cli("run", "--config", str(tmp_path / "missing.yaml"), "--questions", str(tmp_path / "q.jsonl"),
               "--out", str(tmp_path / "new" / "run"))
    _one_error_line(res)
    assert not (tmp_path / "new" / "run").exists()
