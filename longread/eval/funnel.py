"""Where answers are lost: the answer-loss funnel of a run, per question and per set.

For each question with gold answers, six flags in pipeline order, each "does any gold answer
(SQuAD-normalised, whole tokens, as :func:`~longread.eval.metrics.answer_in_texts`) occur in ...":

1. ``in_corpus``: the index's chunks in the question's scope (``doc_ids``; all chunks when unscoped).
   Chunk level on purpose: an answer cut by a chunk boundary is lost here, not later.
2. ``in_retrieved``: the chunks of ``passage_ids``, the passages the stages handed the reader
   (the retrieved top-k after any rerank/reorder). ``None`` in a run that retrieved nothing
   (a long-context reader alone).
3. ``in_context``: what the reader saw. Exact when the prediction carries the reader's text
   (``Prediction.context`` or ``trace["context"]``); otherwise rebuilt where that is sound: the
   passages' chunks when nothing compressed them and the reader did not truncate them, the
   scope documents for a long-context reader that did not truncate, or their head and tail for
   one that did (``trace["context_kept_chars"]``). ``None`` when it cannot be known (compressed
   or truncated without a recorded context). ``context_source`` says which.
   RAG passages count as read whole unless ``trace["reader_truncated"]`` is true; whole documents
   only when it is explicitly false (long documents are usually cut to the reader's budget).
4. ``in_raw``: the raw generation (``trace["raw_answer"]``), before answer clean-up.
5. ``in_answer``: the final answer.
6. ``correct``: scored correct under the run's ``metric_style``: ``numeric == 1`` for the
   ``numeric`` style where the gold holds a number, else ``em == 1``.

``lost_at`` is the first stage whose flag is False, ``None`` for a correct question (so the
``lost_at`` counts plus the correct ones add up to the questions). Presence is string presence:
under the ``numeric`` style "twenty-four" is correct for gold "24" though not "in" the answer. A failed question keeps its flags up to the failure and is lost at the
first stage it did not reach. Rates are over the questions where a stage's flag is known.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..types import Prediction, Question
from .metrics import METRIC_STYLES, normalize_answer, score_answer

__all__ = ["STAGES", "FunnelRow", "Funnel", "question_funnel", "funnel_rates", "answer_funnel", "format_funnel"]

STAGES: tuple[str, ...] = ("corpus", "retrieved", "context", "raw", "answer", "correct")
"""The funnel's stages in pipeline order; row flags are ``in_<stage>`` (and ``correct``)."""


@dataclass(frozen=True)
class FunnelRow:
    """One question's funnel flags (``None`` = not known for this question / run)."""

    id: str
    in_corpus: bool | None
    in_retrieved: bool | None
    in_context: bool | None
    context_source: str | None  # "context" | "passages" | "documents" | "documents (head+tail)" | None
    in_raw: bool | None
    in_answer: bool | None
    correct: bool | None
    lost_at: str | None
    error: str | None = None

    def flag(self, stage: str) -> bool | None:
        """The flag of ``stage`` (one of :data:`STAGES`)."""
        return self.correct if stage == "correct" else getattr(self, f"in_{stage}")


@dataclass(frozen=True)
class Funnel:
    """A run's funnel: per-question rows and the per-set summary from :func:`funnel_rates`."""

    rows: list[FunnelRow]
    rates: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``{"rates": ..., "rows": [...]}`` for ``funnel.json``."""
        return {"rates": self.rates, "rows": [asdict(r) for r in self.rows]}


def _needles(answers: Sequence[str]) -> list[str]:
    return [f" {n} " for n in (normalize_answer(a) for a in answers) if n]


def _found(needles: Sequence[str], normed: Sequence[str]) -> bool:
    return any(n in t for t in normed for n in needles)


def _norm(text: str) -> str:
    return f" {normalize_answer(text)} "


class _Corpus:
    """The index's documents and chunks, normalised once (questions share them)."""

    def __init__(self, index_dir: Path) -> None:
        from ..pipelines.store import open_store

        self.store = open_store(index_dir)  # lazily: only the chunks and documents asked for are read
        self._chunk_norm: dict[int, str] = {}
        self._doc_norm: dict[str, str] = {}

    def chunk_texts(self, positions: Sequence[int]) -> list[str]:
        out = []
        for i in positions:
            if i not in self._chunk_norm:
                self._chunk_norm[i] = _norm(self.store.chunks[i].text)
            out.append(self._chunk_norm[i])
        return out

    def scope(self, q: Question) -> list[str]:
        pos = self.store.positions_for(q.doc_ids)
        return self.chunk_texts(range(len(self.store)) if pos is None else pos)

    def passages(self, pred: Prediction) -> list[str]:
        missing = [c for c in pred.passage_ids if c not in self.store.chunk_pos]
        if missing:
            raise ValueError(f"prediction {pred.id!r} names chunks not in the index: {missing[:5]!r}; wrong index dir?")
        return self.chunk_texts([self.store.chunk_pos[c] for c in pred.passage_ids])

    def joined_documents(self, doc_ids: Sequence[str]) -> str:
        """The documents as ``reader.long_context`` joins them (title line, blank lines between)."""
        docs = [self.store.documents[d] for d in doc_ids]
        return "\n\n".join((f"{d.title}\n{d.text}" if d.title else d.text).strip() for d in docs)

    def documents(self, doc_ids: Sequence[str]) -> list[str]:
        out = []
        for d in doc_ids:
            if d not in self._doc_norm:
                doc = self.store.documents[d]
                self._doc_norm[d] = _norm(f"{doc.title}\n{doc.text}" if doc.title else doc.text)
            out.append(self._doc_norm[d])
        return out


def _reader_view(pred: Prediction, q: Question, corpus: _Corpus, retrieval_ran: bool) -> tuple[list[str] | None, str | None]:
    """Normalised texts the reader saw and where they came from, or ``(None, None)`` if unknown."""
    exact = getattr(pred, "context", None)
    if not isinstance(exact, str):
        exact = pred.trace.get("context")
    if isinstance(exact, str):
        return [_norm(exact)], "context"
    truncated = pred.trace.get("reader_truncated")
    if retrieval_ran:
        # RAG contexts are small: a reader that does not say it cut them read them whole.
        if pred.trace.get("compression") or truncated is True:
            return None, None  # the reader saw compressed or cut text that was not recorded
        return corpus.passages(pred), "passages"
    # Whole documents are often cut to the reader's budget: only an explicit "not truncated" counts.
    if truncated is False and q.doc_ids:
        return corpus.documents(q.doc_ids), "documents"
    kept = pred.trace.get("context_kept_chars")
    if truncated is True and q.doc_ids and isinstance(kept, list) and len(kept) == 2:
        # reader.long_context read the head and tail of the joined documents (see head_tail)
        text = corpus.joined_documents(q.doc_ids)
        head, tail = int(kept[0]), int(kept[1])
        return [_norm(text[:head]), _norm(text[len(text) - tail:] if tail else "")], "documents (head+tail)"
    return None, None


def question_funnel(
    predictions: Sequence[Prediction],
    questions: Sequence[Question],
    index_dir: str | Path,
    *,
    metric_style: str = "squad",
) -> list[FunnelRow]:
    """Funnel rows, in question order, for the questions with gold answers.

    Raises ``ValueError`` for a bad ``metric_style``, a prediction without a question, or a
    passage id not in the index; ``FileNotFoundError`` when ``index_dir`` is not an index dir.
    """
    if metric_style not in METRIC_STYLES:
        raise ValueError(f"metric_style must be one of {list(METRIC_STYLES)}, got {metric_style!r}")
    corpus = _Corpus(Path(index_dir))
    by_id = {p.id: p for p in predictions}
    known = {q.id for q in questions}
    stray = [pid for pid in by_id if pid not in known]
    if stray:
        raise ValueError(f"{len(stray)} prediction(s) have no question, e.g. {stray[:5]!r}")
    retrieval_ran = any(p.passage_ids for p in predictions)
    rows = []
    for q in questions:
        if not q.answers:
            continue
        pred = by_id.get(q.id) or Prediction(id=q.id, answer=None, error="missing prediction")
        needles = _needles(q.answers)
        failed = pred.error is not None
        flags: dict[str, bool | None] = {"corpus": _found(needles, corpus.scope(q))}
        flags["retrieved"] = _found(needles, corpus.passages(pred)) if retrieval_ran else None
        seen, source = (None, None) if failed else _reader_view(pred, q, corpus, retrieval_ran)
        flags["context"] = False if failed else None if seen is None else _found(needles, seen)
        raw = pred.trace.get("raw_answer")
        flags["raw"] = _found(needles, [_norm(raw)]) if isinstance(raw, str) else (False if failed else None)
        flags["answer"] = _found(needles, [_norm(pred.answer)]) if pred.answer is not None else False
        scores = score_answer(None if failed else pred.answer, q.answers, metric_style=metric_style)  # type: ignore[arg-type]
        num = scores.get("numeric")
        flags["correct"] = (num == 1.0) if num is not None else (scores["em"] == 1.0)
        lost = None if flags["correct"] else next(s for s in STAGES if flags[s] is False)
        rows.append(
            FunnelRow(
                id=q.id, in_corpus=flags["corpus"], in_retrieved=flags["retrieved"], in_context=flags["context"],
                context_source=source, in_raw=flags["raw"], in_answer=flags["answer"], correct=flags["correct"],
                lost_at=lost, error=pred.error,
            )
        )
    return rows


def funnel_rates(rows: Sequence[FunnelRow]) -> dict[str, Any]:
    """Per-set summary: ``n``; per stage ``rate`` (share of True where known) and ``n`` known;
    ``lost_at`` (questions first lost at each stage) and ``n_correct``."""
    stages = {}
    for s in STAGES:
        known = [r.flag(s) for r in rows if r.flag(s) is not None]
        stages[s] = {"rate": (sum(known) / len(known)) if known else None, "n": len(known)}
    lost = {s: sum(1 for r in rows if r.lost_at == s) for s in STAGES}
    return {"n": len(rows), "stages": stages, "lost_at": lost, "n_correct": sum(1 for r in rows if r.correct)}


def answer_funnel(
    run_dir: str | Path, index_dir: str | Path | None = None, *, questions: Sequence[Question] | None = None
) -> Funnel:
    """The funnel of a run dir: its ``predictions.jsonl``, ``questions.jsonl`` (or ``questions``),
    the ``metric_style`` and index dir recorded in ``run.json`` (``index_dir`` overrides).

    Raises ``FileNotFoundError`` for a missing file or index, and what :func:`question_funnel` raises.
    """
    from ..data import load_questions
    from .evaluator import read_predictions

    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    if index_dir is None:
        if not meta.get("index_dir"):
            raise FileNotFoundError(f"{run_dir} has no run.json naming its index dir; pass index_dir")
        index_dir = meta["index_dir"]
    if questions is None:
        questions = load_questions(run_dir / "questions.jsonl")
    preds = read_predictions(run_dir / "predictions.jsonl")
    rows = question_funnel(preds, questions, index_dir, metric_style=meta.get("metric_style", "squad"))
    return Funnel(rows, funnel_rates(rows))


def format_funnel(rates: dict[str, Any]) -> str:
    """One line: each stage's rate and how many questions it lost first, e.g.
    ``corpus 0.98 (-3) > retrieved 0.80 (-27) > ...``; ``–`` for a stage not known."""
    parts = []
    for s in STAGES:
        r = rates["stages"][s]["rate"]
        parts.append(f"{s} {'–' if r is None else f'{r:.2f}'} (-{rates['lost_at'][s]})")
    return " > ".join(parts)
