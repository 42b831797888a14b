"""Run dirs: answer a question set into ``RUN_DIR`` with streaming, resumable predictions.

A run dir holds ``config.yaml`` (resolved), ``run.json`` (seed, versions, model checksums, inputs
and their digests), ``predictions.jsonl`` (one line per question, flushed as it finishes),
``metrics.json`` and ``report.md``. ``resume=True`` continues a killed run: lines already written
are kept, a torn last line is cut off, and only questions without a line are answered — as long
as the config, the questions and the index are the ones the run started with. The dir's
lifecycle (lock, record, resume checks, appends, scoring) is :class:`~longread.pipelines.rundir.RunDir`.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from ..eval.evaluator import read_predictions
from ..types import Document, Prediction, QAState, Question
from .pipeline import Pipeline
from .rundir import PREDICTIONS, RunDir, RunDirError, config_digest, file_digest, questions_digest, repair_torn_tail

__all__ = ["RunResult", "run", "read_predictions", "repair_torn_tail", "RunDirError", "RunDir", "PREDICTIONS"]


@dataclass
class RunResult:
    """What :func:`run` produced."""

    run_dir: Path
    metrics: dict[str, Any]
    n_answered_now: int


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("longread", "torch", "transformers", "ray", "faiss-cpu", "bm25s", "pydantic", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _prediction(state: QAState) -> Prediction:
    pred = Prediction.from_state(state)
    err = state.trace.get("error")
    if err:
        pred.error = str(err)
        pred.answer = None
    return pred


def run(
    pipeline: Pipeline,
    documents: Sequence[Document] | None,
    questions: Sequence[Question],
    run_dir: str | Path,
    *,
    index_dir: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    limit: int | None = None,
    resume: bool = False,
    fail_fast: bool = False,
    show_progress: bool = True,
    inputs: dict[str, Any] | None = None,
    metric_style: str = "squad",
) -> RunResult:
    """Index (if needed), answer ``questions`` into ``run_dir``, evaluate, and write the report.

    ``metric_style`` is ``squad`` or ``hotpotqa`` (yes/no answers). The questions are copied to
    ``run_dir/questions.jsonl`` so the run dir can be re-evaluated on its own.
    ``index_dir`` defaults to ``run_dir/index``; with ``documents=None`` it must already exist.
    ``inputs`` names the input files (``corpus``, ``questions``) for the record; a questions file
    named there is hashed into ``run.json`` too.
    Raises ``RunDirError`` when ``run_dir`` already has predictions and ``resume`` is not set, or
    when resuming with a different config, other questions or another index;
    :class:`longread.errors.LockedError` when another process writes ``run_dir``.
    """
    from .indexdir import index_digest, read_manifest

    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be > 0, got {limit}")
    all_questions = list(questions)
    questions = all_questions[:limit] if limit is not None else all_questions
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate question ids: {dup[:5]}")
    inputs = dict(inputs or {})
    rd = RunDir(run_dir)
    config_yaml = pipeline.config.to_yaml()
    with rd.lock():
        rd.check_fresh_or_resume(resume)
        continuing = resume and rd.holds_predictions()  # else there is nothing to keep consistent with
        if continuing:
            rd.check_inputs(config_yaml, all_questions, inputs.get("questions"))
        old = rd.record() if continuing else {}

        idx = Path(index_dir) if index_dir is not None else rd.path / "index"
        t_index = 0.0
        if documents is not None:
            t0 = time.perf_counter()
            pipeline.index(documents, idx, show_progress=show_progress, corpus_path=inputs.get("corpus"))
            t_index = time.perf_counter() - t0
        digest = index_digest(read_manifest(idx)) if (idx / "manifest.json").is_file() else None
        if continuing:
            rd.check_index(digest, idx)

        meta = {
            "config_name": pipeline.config.name,
            "seed": pipeline.config.seed,
            "executor": executor,
            "metric_style": metric_style,
            "index_dir": str(idx.resolve()),
            "inputs": inputs,
            "limit": limit,
            "digests": {
                "config_sha256": config_digest(config_yaml),
                "questions_sha256": questions_digest(all_questions),
                "questions_file_sha256": file_digest(inputs.get("questions")),
                "index": digest,
            },
            "versions": _versions(),
            # A resumed run's indexing time adds to the first part's: what this run dir cost.
            "index_seconds": round(float(old.get("index_seconds") or 0.0) + t_index, 3),
            "started": old.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if continuing and old:
            meta["resumed"] = [*old.get("resumed", []), time.strftime("%Y-%m-%dT%H:%M:%S%z")]
        rd.begin(config_yaml, questions, meta)

        done = rd.done_ids(retry_failed=continuing)
        todo = [q for q in questions if q.id not in done]
        n_now = 0
        if todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(questions), initial=len(questions) - len(todo), desc=f"answering ({pipeline.config.name})",
                       disable=not show_progress, unit="q")
            try:
                with rd.appender() as append:
                    for state in pipeline.iter_answers(todo, index_dir=idx, executor=executor, address=address, fail_fast=fail_fast):
                        append(_prediction(state))
                        n_now += 1
                        bar.update(1)
            finally:
                bar.close()
        meta["models"] = pipeline.context(idx).models.provenance()
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        from ..io import atomic_write_json

        atomic_write_json(rd.run_json, meta)
        metrics = rd.finalize()  # scores the questions.jsonl just written: this run's questions
    return RunResult(run_dir=rd.path, metrics=metrics, n_answered_now=n_now)
