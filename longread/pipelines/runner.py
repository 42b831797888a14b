"""Run dirs: answer a question set into ``RUN_DIR`` with streaming, resumable predictions.

A run dir holds ``config.yaml`` (resolved), ``run.json`` (seed, versions, model checksums, inputs),
``predictions.jsonl`` (one line per question, flushed as it finishes), ``metrics.json`` and
``report.md``. ``resume=True`` continues a killed run: lines already written are kept, a torn last
line is cut off, and only questions without a line are answered.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from ..eval.evaluator import read_predictions
from ..io import atomic_write_json, atomic_write_text
from ..types import Document, Prediction, QAState, Question
from ..data import write_jsonl
from .pipeline import Pipeline

__all__ = ["RunResult", "run", "read_predictions", "repair_torn_tail", "RunDirError"]

PREDICTIONS = "predictions.jsonl"


class RunDirError(ValueError):
    """A run dir that cannot be used as asked (exists without --resume, other config, ...)."""


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


def repair_torn_tail(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write) off ``predictions.jsonl``, if there is one."""
    if not path.is_file():
        return
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    if good_end != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)


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
    Raises ``RunDirError`` when ``run_dir`` already has predictions and ``resume`` is not set, or
    when resuming with a different config.
    """
    from ..eval.evaluator import evaluate
    from ..eval.report import write_report

    run_dir = Path(run_dir)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be > 0, got {limit}")
        questions = list(questions)[:limit]
    ids = [q.id for q in questions]
    dup = {i for i in ids if ids.count(i) > 1} if len(set(ids)) != len(ids) else set()
    if dup:
        raise ValueError(f"duplicate question ids: {sorted(dup)[:5]}")
    pred_path = run_dir / PREDICTIONS
    config_yaml = pipeline.config.to_yaml()
    if pred_path.exists() and not resume:
        raise RunDirError(f"{str(run_dir)!r} already holds predictions; pass --resume to continue it or choose another --out")
    if resume and (run_dir / "config.yaml").is_file():
        old = (run_dir / "config.yaml").read_text(encoding="utf-8")
        if old != config_yaml:
            raise RunDirError(f"{str(run_dir)!r} was run with a different config; cannot resume it with this one")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    write_jsonl(run_dir / "questions.jsonl", questions)

    idx = Path(index_dir) if index_dir is not None else run_dir / "index"
    t_index = 0.0
    if documents is not None:
        t0 = time.perf_counter()
        pipeline.index(documents, idx, show_progress=show_progress)
        t_index = time.perf_counter() - t0

    meta = {
        "config_name": pipeline.config.name,
        "seed": pipeline.config.seed,
        "executor": executor,
        "metric_style": metric_style,
        "index_dir": str(idx.resolve()),
        "inputs": inputs or {},
        "versions": _versions(),
        "index_seconds": round(t_index, 3),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(run_dir / "run.json", meta)

    repair_torn_tail(pred_path)
    done = {p.id for p in read_predictions(pred_path)} if pred_path.is_file() else set()
    todo = [q for q in questions if q.id not in done]
    n_now = 0
    if todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(questions), initial=len(questions) - len(todo), desc=f"answering ({pipeline.config.name})", disable=not show_progress, unit="q")
        with open(pred_path, "a", encoding="utf-8") as f:
            for state in pipeline.iter_answers(todo, index_dir=idx, executor=executor, address=address, fail_fast=fail_fast):
                f.write(_prediction(state).model_dump_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
                n_now += 1
                bar.update(1)
        bar.close()
    preds = read_predictions(pred_path)
    wanted = set(ids)
    preds = [p for p in preds if p.id in wanted]
    metrics = evaluate(preds, list(questions), metric_style=metric_style)  # type: ignore[arg-type]
    metrics["index_seconds"] = round(t_index, 3)
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir, metrics, config_name=pipeline.config.name, predictions=preds, questions=list(questions))
    meta["models"] = pipeline.context(idx).models.provenance()
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(run_dir / "run.json", meta)
    return RunResult(run_dir=run_dir, metrics=metrics, n_answered_now=n_now)
