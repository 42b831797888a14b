"""Score a run: per-question rows and aggregate metrics (quality and cost).

Per-question inputs come from :class:`~longread.types.Prediction`: ``answer``, ``passage_ids``,
``citations``, ``error``, its typed ``usage`` records (cost; see :mod:`longread.eval.costs`, which
also reads the trace cost keys of older run dirs) and its ``trace``: ``passage_doc_ids`` (parallel
to ``passage_ids``), ``answer_in_passages`` (bool or None), ``peak_rss_mb``.

Rules:

- EM and F1 score the answer without its ``[n]`` citation markers (``cite`` style answers keep
  them in ``answer``; an answer that is nothing but markers is scored as it is).
- An errored prediction stays in every denominator: EM = F1 = 0, answer recall and retrieval
  recall 0, counted in ``n_errors``. Nothing is dropped.
- Citations (runs where any answer cites): only citations an answer marks with ``[n]``
  (``Citation.cited``) count; passages listed as merely read do not. ``citation_precision`` is the
  share of a question's citations whose passage text contains a gold answer (normalized), undefined
  for a question without citations; ``citation_recall`` is the share of its ``gold_ids`` (chunk or document ids)
  that some citation points at, 0 for a question (or error) without citations. Both are ``None``
  in a run without citations.
- A metric that cannot be computed for any question (no gold answers, no ``gold_ids``, no
  reader, no ``answer_in_passages``) is ``None`` (``null`` in JSON), never 0.
- ``metric_style`` picks the answer metrics (:data:`~longread.eval.metrics.STYLE_METRICS`): every
  style reports ``em`` and ``f1``; ``long`` adds ``rouge_l`` and ``contains``, ``numeric`` adds
  ``numeric`` (averaged over the ``n_numeric`` questions whose gold holds a number) and ``contains``.
- A retrieved passage is relevant when its chunk id or its doc id is in ``gold_ids``. When the gold
  ids are document ids the ranking is scored per document (the first chunk of a document stands for
  it), so three chunks of one gold document count once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pydantic import ValidationError

from ..llm.prompts import strip_citations
from ..types import Prediction, QAState, Question
from .costs import CostError, question_costs
from .metrics import METRIC_STYLES, STYLE_METRICS, MetricStyle, answer_in_texts, dedupe, ndcg_at_k, recall_at_k, score_answer

__all__ = [
    "EvalError",
    "DEFAULT_K_VALUES",
    "score_predictions",
    "aggregate",
    "evaluate",
    "read_predictions",
    "evaluate_run",
]

DEFAULT_K_VALUES: tuple[int, ...] = (1, 5, 10, 20)
NDCG_K = 10


class EvalError(ValueError):
    """Predictions and questions do not fit together, or a trace field has the wrong shape."""


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _ranking_ids(passage_ids: Sequence[str], doc_ids: Sequence[str] | None, gold: set[str]) -> list[str]:
    """Map each retrieved passage to the id it is judged by, then dedupe.

    Doc-level gold (gold names retrieved docs but no retrieved chunk): every passage stands for its
    document. Otherwise passages stand for themselves, except a chunk whose document is gold.
    """
    if doc_ids is None:
        return dedupe(passage_ids)
    doc_level = bool(gold.intersection(doc_ids)) and not gold.intersection(passage_ids)
    keys = []
    for cid, did in zip(passage_ids, doc_ids):
        if doc_level or (cid not in gold and did in gold):
            keys.append(did)
        else:
            keys.append(cid)
    return dedupe(keys)


def _trace_number(pred: Prediction, key: str) -> float | None:
    value = pred.trace.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EvalError(f"prediction {pred.id!r}: trace[{key!r}] must be a number, got {value!r}")
    return float(value)


def _check_k_values(k_values: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(k_values)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in ks):
        raise ValueError(f"k_values must be a non-empty list of positive ints, got {list(ks)!r}")
    return tuple(sorted(set(ks)))


def _match(
    predictions: Sequence[Prediction], questions: Sequence[Question], allow_missing: bool
) -> list[tuple[Question, Prediction]]:
    by_q: dict[str, Question] = {}
    for q in questions:
        if q.id in by_q:
            raise EvalError(f"duplicate question id {q.id!r}")
        by_q[q.id] = q
    by_p: dict[str, Prediction] = {}
    for p in predictions:
        if p.id in by_p:
            raise EvalError(f"duplicate prediction for question {p.id!r}")
        by_p[p.id] = p
    unknown = [pid for pid in by_p if pid not in by_q]
    if unknown:
        raise EvalError(
            f"{len(unknown)} prediction(s) have no matching question, e.g. {unknown[:5]!r}; "
            "evaluate against the questions file the run answered"
        )
    missing = [qid for qid in by_q if qid not in by_p]
    if missing and not allow_missing:
        raise EvalError(
            f"{len(missing)} of {len(by_q)} question(s) have no prediction, e.g. {missing[:5]!r}; "
            "finish the run (longread run --resume) or pass allow_missing=True to count them as errors"
        )
    pairs = []
    for qid, q in by_q.items():
        p = by_p.get(qid)
        if p is None:
            p = Prediction(id=qid, answer=None, error="missing prediction")
        pairs.append((q, p))
    return pairs


def score_predictions(
    predictions: Sequence[Prediction],
    questions: Sequence[Question],
    *,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    metric_style: MetricStyle = "squad",
    allow_missing: bool = False,
    chunk_texts: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per question (in question order) with its answer, scores and costs.

    ``chunk_texts`` (chunk id -> text) lets answer recall be computed for predictions whose trace
    lacks ``answer_in_passages``. Raises :class:`EvalError` when a prediction has no question, a
    question has no prediction (unless ``allow_missing``), ids repeat, or a trace field is malformed;
    ``ValueError`` for a bad ``metric_style`` or ``k_values``.
    """
    if metric_style not in METRIC_STYLES:
        raise ValueError(f"metric_style must be one of {list(METRIC_STYLES)}, got {metric_style!r}")
    ks = _check_k_values(k_values)
    pairs = _match(predictions, questions, allow_missing)
    # A run where no question got an answer had no reader (retrieval only): EM/F1 are null.
    # Once any answer exists, a missing answer scores 0 like an error.
    reader_ran = any(p.answer is not None for _, p in pairs)
    # Likewise answer recall: an error counts as "not found" only in a run that measures it.
    recall_measured = chunk_texts is not None or any(p.trace.get("answer_in_passages") is not None for _, p in pairs)
    # A run whose stages never returned a passage (a long-context reader alone) has no ranking:
    # recall@k and nDCG are null for it, not 0.
    retrieval_ran = any(p.passage_ids for _, p in pairs)
    # Only ``[n]``-marked citations are the answer's claims; passages a reader merely read
    # (``cited=False``, every non-cite style) are provenance, not something to score.
    marked = {p.id: [c for c in p.citations if c.cited] for _, p in pairs}
    cites = any(marked.values())
    rows = []
    for q, p in pairs:
        failed = p.error is not None
        row: dict[str, Any] = {
            "id": q.id,
            "question": q.question,
            "answers": list(q.answers),
            "prediction": p.answer,
            "error": p.error,
        }
        # EM/F1 and the style's other answer metrics: need gold answers; an error or missing
        # answer scores 0.
        if q.answers and (failed or reader_ran):
            # Citation markers are not answer words: "Paris [1]." is scored as "Paris.".
            scored = None if failed or p.answer is None else (strip_citations(p.answer) or p.answer)
            row.update(score_answer(scored, q.answers, metric_style=metric_style))
        else:
            row.update({m: None for m in ("em", "f1", *STYLE_METRICS[metric_style])})
        # Answer recall: did the retrieved passages contain a gold answer?
        air = p.trace.get("answer_in_passages")
        if air is not None and not isinstance(air, bool):
            raise EvalError(f"prediction {p.id!r}: trace['answer_in_passages'] must be true/false/null, got {air!r}")
        if air is None and chunk_texts is not None and q.answers and not failed:
            missing_text = [c for c in p.passage_ids if c not in chunk_texts]
            if missing_text:
                raise EvalError(f"prediction {p.id!r}: chunk_texts lacks passage ids {missing_text[:5]!r}")
            air = answer_in_texts(q.answers, [chunk_texts[c] for c in p.passage_ids])
        if failed and q.answers and recall_measured:
            air = False
        row["answer_in_passages"] = None if not q.answers else air
        # Retrieval metrics against gold_ids.
        doc_ids = p.trace.get("passage_doc_ids")
        if doc_ids is not None and (not isinstance(doc_ids, list) or len(doc_ids) != len(p.passage_ids)):
            raise EvalError(
                f"prediction {p.id!r}: trace['passage_doc_ids'] must be a list parallel to passage_ids "
                f"({len(p.passage_ids)} ids), got {doc_ids!r}"
            )
        if q.gold_ids and retrieval_ran:
            gold = set(q.gold_ids)
            ranked = _ranking_ids(p.passage_ids, doc_ids, gold) if not failed else []
            for k in ks:
                row[f"recall@{k}"] = recall_at_k(ranked, gold, k)
            row[f"ndcg@{NDCG_K}"] = ndcg_at_k(ranked, gold, NDCG_K)
        else:
            for k in ks:
                row[f"recall@{k}"] = None
            row[f"ndcg@{NDCG_K}"] = None
        # Citations.
        cits = marked[p.id]
        row["citations"] = len(cits)
        row["citation_precision"] = row["citation_recall"] = None
        if cites and cits and q.answers:
            hits = sum(answer_in_texts(q.answers, [c.text]) for c in cits)
            row["citation_precision"] = hits / len(cits)
        if cites and q.gold_ids:
            cited = {c.chunk_id for c in cits} | {c.doc_id for c in cits}
            gold = dedupe(q.gold_ids)
            row["citation_recall"] = sum(g in cited for g in gold) / len(gold)
        # Cost.
        try:
            cost = question_costs(p.usage, p.trace, f"prediction {p.id!r}")
        except CostError as e:
            raise EvalError(str(e)) from None
        row["timings"] = cost.stage_seconds
        row["seconds"] = sum(cost.stage_seconds.values()) if cost.stage_seconds else None
        row["reader_tokens"], row["ttft_s"], row["new_tokens"] = cost.reader_tokens, cost.ttft_s, cost.new_tokens
        row["peak_rss_mb"] = _trace_number(p, "peak_rss_mb")
        row["llm_calls"] = cost.llm_calls
        row["llm_tokens"] = cost.llm_tokens
        rows.append(row)
    return rows


def aggregate(rows: Sequence[dict[str, Any]], *, k_values: Sequence[int] = DEFAULT_K_VALUES) -> dict[str, Any]:
    """Aggregate per-question rows (from :func:`score_predictions`) into the metrics dict."""
    ks = _check_k_values(k_values)
    out: dict[str, Any] = {
        "n": len(rows),
        "n_errors": sum(1 for r in rows if r["error"] is not None),
        "em": _mean(r["em"] for r in rows),
        "f1": _mean(r["f1"] for r in rows),
        "answer_recall": _mean(None if r["answer_in_passages"] is None else float(r["answer_in_passages"]) for r in rows),
    }
    # Style metrics (metric_style long/numeric) appear only when the rows carry them.
    for key in ("rouge_l", "contains", "numeric"):
        if any(key in r for r in rows):
            out[key] = _mean(r.get(key) for r in rows)
    if any("numeric" in r for r in rows):
        out["n_numeric"] = sum(1 for r in rows if r.get("numeric") is not None)
    for k in ks:
        out[f"recall@{k}"] = _mean(r.get(f"recall@{k}") for r in rows)
    out[f"ndcg@{NDCG_K}"] = _mean(r.get(f"ndcg@{NDCG_K}") for r in rows)
    out["n_with_gold_ids"] = sum(1 for r in rows if r.get(f"ndcg@{NDCG_K}") is not None)
    out["citation_precision"] = _mean(r.get("citation_precision") for r in rows)
    out["citation_recall"] = _mean(r.get("citation_recall") for r in rows)
    for key in ("reader_tokens", "ttft_s", "new_tokens"):
        out[f"{key}_mean"] = _mean(r[key] for r in rows)
    timed_rows = [r for r in rows if r["timings"]]
    out["seconds_per_question"] = _mean(r["seconds"] for r in timed_rows)
    # Stage means are over every timed question (a stage a question skipped costs it 0 s), so
    # the stage means add up to seconds_per_question.
    stages = dedupe(s for r in timed_rows for s in r["timings"])
    out["stage_seconds"] = {s: sum(r["timings"].get(s, 0.0) for r in timed_rows) / len(timed_rows) for s in stages}
    for key in ("llm_calls", "llm_tokens"):
        counted = [r for r in rows if r[key]]
        if counted:
            # Over all questions: a question that made no call made 0 calls.
            out[f"{key}_mean"] = sum(sum(r[key].values()) for r in rows) / len(rows)
            names = dedupe(s for r in counted for s in r[key])
            out[key] = {s: sum(r[key].get(s, 0.0) for r in rows) / len(rows) for s in names}
        else:
            out[f"{key}_mean"] = None
            out[key] = {}
    rss = [r["peak_rss_mb"] for r in rows if r["peak_rss_mb"] is not None]
    out["peak_rss_mb"] = max(rss) if rss else None
    for key, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise EvalError(f"metric {key!r} is not finite ({value}); a trace holds a NaN or infinite number")
    return out


def evaluate(
    predictions: Sequence[Prediction | QAState],
    questions: Sequence[Question],
    *,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    metric_style: MetricStyle = "squad",
    allow_missing: bool = False,
    chunk_texts: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Metrics of a run: ``n``, ``n_errors``, ``em``, ``f1``, ``answer_recall``, ``recall@k``,
    ``ndcg@10``, ``citation_precision``, ``citation_recall``, ``reader_tokens_mean``, ``ttft_s_mean``,
    ``seconds_per_question``,
    ``stage_seconds``, ``llm_calls_mean``, ``peak_rss_mb`` and more; uncomputable ones are ``None``.

    ``predictions`` may be what :meth:`longread.Pipeline.answer` returns (``QAState`` objects).
    Raises as :func:`score_predictions` does.
    """
    predictions = [Prediction.from_state(p) if isinstance(p, QAState) else p for p in predictions]
    rows = score_predictions(
        predictions,
        questions,
        k_values=k_values,
        metric_style=metric_style,
        allow_missing=allow_missing,
        chunk_texts=chunk_texts,
    )
    metrics = aggregate(rows, k_values=k_values)
    metrics["metric_style"] = metric_style
    return metrics


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read ``predictions.jsonl``; raise :class:`EvalError` naming the file and 1-based line of a bad record.

    A truncated last line (a run killed mid-write) is reported, not skipped: resume the run first.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    out: list[Prediction] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise EvalError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                out.append(Prediction.model_validate_json(line))
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(x) for x in first.get("loc", ())) or "record"
                raise EvalError(f"{path}:{lineno}: bad prediction record ({where}: {first['msg']})") from None
    return out


def evaluate_run(
    run_dir: str | Path,
    questions: Sequence[Question] | str | Path | None = None,
    *,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    metric_style: MetricStyle | None = None,
    allow_missing: bool = False,
    config_name: str | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate ``RUN_DIR/predictions.jsonl`` and (by default) write ``metrics.json``,
    ``per_question.jsonl`` and ``report.md`` atomically into the run dir.

    ``questions`` is a list, a questions JSONL path, or None for ``RUN_DIR/questions.jsonl``.
    ``metric_style`` defaults to the one ``run.json`` recorded. Writing holds the run dir's lock.
    Returns the metrics dict. Raises ``FileNotFoundError`` when inputs are missing,
    :class:`EvalError` / :class:`longread.data.DataError` for bad ones and
    :class:`longread.errors.LockedError` while a run still writes the dir.
    """
    from ..pipelines.rundir import RunDir

    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise FileNotFoundError(f"run dir {str(rd.path)!r} does not exist")
    kwargs = dict(k_values=k_values, metric_style=metric_style, allow_missing=allow_missing, config_name=config_name, write=write)
    # One scoring path for `longread run` and `longread eval`: see RunDir.finalize.
    if not write:
        return rd.finalize(questions, **kwargs)  # type: ignore[arg-type]
    with rd.lock():
        return rd.finalize(questions, **kwargs)  # type: ignore[arg-type]
