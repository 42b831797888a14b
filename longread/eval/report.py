"""Human-readable run report (``report.md``) and the per-question rows it draws from.

``per_question.jsonl`` (one row per question, from :func:`longread.eval.evaluator.score_predictions`)
is what the worst-question sample here and the paired bootstrap in ``compare`` read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..io import atomic_write_text
from ..types import Prediction, Question

__all__ = ["PER_QUESTION", "write_report", "render_report", "load_rows", "rows_from_run_dir", "write_rows", "fmt", "md_cell", "run_name"]

PER_QUESTION = "per_question.jsonl"


def fmt(value: Any, digits: int = 3) -> str:
    """Format a metric for a table: ``–`` for null, ints as ints, floats to ``digits`` places."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def md_cell(text: Any, limit: int = 80) -> str:
    """One markdown table cell: no newlines or raw pipes, cut to ``limit`` characters."""
    s = "" if text is None else str(text)
    s = " ".join(s.split()).replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def write_rows(run_dir: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write per-question rows to ``RUN_DIR/per_question.jsonl`` atomically; return the path."""
    path = Path(run_dir) / PER_QUESTION
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def load_rows(run_dir: str | Path, metric_style: str | None = None) -> list[dict[str, Any]] | None:
    """Per-question rows of a run: ``per_question.jsonl`` if present, else recomputed by
    :func:`rows_from_run_dir`. Returns None when neither is available; raises for malformed files.
    """
    path = Path(run_dir) / PER_QUESTION
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    return rows_from_run_dir(run_dir, metric_style)


def rows_from_run_dir(run_dir: str | Path, metric_style: str | None = None) -> list[dict[str, Any]] | None:
    """Score ``RUN_DIR/predictions.jsonl`` against the questions file named in ``run.json``
    (``inputs.questions``). Returns None when either is missing; raises for malformed files.
    """
    from .evaluator import read_predictions, score_predictions

    run_dir = Path(run_dir)
    preds_path, meta_path = run_dir / "predictions.jsonl", run_dir / "run.json"
    if not (preds_path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    qpath = (meta.get("inputs") or {}).get("questions") if isinstance(meta, dict) else None
    if not qpath or not Path(qpath).is_file():
        return None
    from ..data import load_questions

    preds = read_predictions(preds_path)
    ids = {p.id for p in preds}
    questions = [q for q in load_questions(qpath) if q.id in ids]
    return score_predictions(preds, questions, metric_style=metric_style or "squad")


def render_report(
    metrics: dict[str, Any],
    config_name: str,
    *,
    rows: Sequence[dict[str, Any]] | None = None,
    worst_n: int = 10,
    run_dir: str | Path | None = None,
) -> str:
    """The report as markdown: quality, cost, per-stage time and the worst questions."""
    if worst_n < 0:
        raise ValueError(f"worst_n must be >= 0, got {worst_n}")
    out = [f"# Run report: {md_cell(config_name, 200)}", ""]
    if run_dir is not None:
        out += [f"Run dir: `{run_dir}`", ""]
    n, n_err = metrics.get("n"), metrics.get("n_errors")
    out += [f"Questions: {fmt(n)}, errors: {fmt(n_err)}, metric style `{metrics.get('metric_style', 'squad')}`.", ""]

    out += ["## Quality", "", "| metric | value |", "|---|---:|"]
    quality = ["em", "f1", "answer_recall"]
    quality += sorted((k for k in metrics if k.startswith("recall@")), key=lambda k: int(k.split("@")[1]))
    quality += [k for k in metrics if k.startswith("ndcg@")]
    # Citation metrics only where the run cited (a short-answer run has no citations).
    quality += [k for k in ("citation_precision", "citation_recall") if metrics.get(k) is not None]
    out += [f"| {k} | {fmt(metrics.get(k))} |" for k in quality]
    out.append("")

    out += ["## Cost", "", "| metric | value |", "|---|---:|"]
    cost = [
        ("seconds_per_question", 3),
        ("reader_tokens_mean", 1),
        ("new_tokens_mean", 1),
        ("ttft_s_mean", 3),
        ("llm_calls_mean", 2),
        ("llm_tokens_mean", 1),
        ("peak_rss_mb", 1),
        ("index_seconds", 2),
    ]
    out += [f"| {k} | {fmt(metrics.get(k), d)} |" for k, d in cost if k in metrics]
    out.append("")

    stages = metrics.get("stage_seconds") or {}
    if stages:
        total = sum(stages.values())
        out += ["## Time per stage (mean seconds per question)", "", "| stage | s/question | share |", "|---|---:|---:|"]
        for s, v in stages.items():
            share = f"{100 * v / total:.1f}%" if total > 0 else "–"
            out.append(f"| {md_cell(s)} | {fmt(v, 4)} | {share} |")
        out.append("")

    out += ["## Worst questions", ""]
    if rows is None:
        out += ["(per-question rows not available: run `longread eval RUN_DIR` to compute them)", ""]
    else:
        scored = [r for r in rows if r.get("error") is not None or r.get("f1") is not None]
        # Errors first, then lowest F1; ties in question order so the sample is stable.
        worst = sorted(scored, key=lambda r: (r.get("error") is None, r.get("f1") or 0.0))[:worst_n]
        if not worst:
            out += ["(no answer to score: no gold answers, or a run without a reader)", ""]
        else:
            out += [
                f"Lowest F1 ({len(worst)} of {len(rows)}):",
                "",
                "| id | question | gold | prediction | F1 | answer in passages | error |",
                "|---|---|---|---|---:|---|---|",
            ]
            for r in worst:
                gold = " / ".join(r.get("answers") or [])
                out.append(
                    f"| {md_cell(r['id'], 40)} | {md_cell(r.get('question'))} | {md_cell(gold, 60)} | "
                    f"{md_cell(r.get('prediction'), 60)} | {fmt(r.get('f1'), 2)} | {fmt(r.get('answer_in_passages'))} | "
                    f"{md_cell(r.get('error'), 60)} |"
                )
            out.append("")
    return "\n".join(out)


def write_report(
    run_dir: str | Path,
    metrics: dict[str, Any],
    config_name: str,
    *,
    rows: Sequence[dict[str, Any]] | None = None,
    predictions: Sequence[Prediction] | None = None,
    questions: Sequence[Question] | None = None,
    worst_n: int = 10,
) -> Path:
    """Write ``RUN_DIR/report.md`` (and ``per_question.jsonl`` when rows are known) atomically.

    Rows come from ``rows``, else from ``predictions`` + ``questions``, else from
    :func:`rows_from_run_dir`. Returns the report path.
    """
    from .evaluator import score_predictions

    run_dir = Path(run_dir)
    style = metrics.get("metric_style", "squad")
    if rows is None and predictions is not None and questions is not None:
        ids = {p.id for p in predictions}
        rows = score_predictions(predictions, [q for q in questions if q.id in ids], metric_style=style)
    if rows is None:
        rows = rows_from_run_dir(run_dir, style)
    if rows is not None:
        write_rows(run_dir, rows)
    else:
        # Rows from an earlier evaluation would no longer match these metrics.
        (run_dir / PER_QUESTION).unlink(missing_ok=True)
    path = run_dir / "report.md"
    atomic_write_text(path, render_report(metrics, config_name, rows=rows, worst_n=worst_n, run_dir=run_dir) + "\n")
    return path


def run_name(run_dir: Path) -> str:
    """The ``name`` in ``RUN_DIR/config.yaml``, else the directory name."""
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        import yaml

        try:
            data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            data = None  # the name is cosmetic; a broken config is reported by the loader, not here
        if isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"].strip():
            return data["name"]
    return run_dir.name
