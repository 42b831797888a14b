"""Question-answering and retrieval metrics.

Answer metrics follow the official scripts' rules (re-implemented, not copied):

- SQuAD v1.1 (``metric_style="squad"``): normalise = lowercase, drop ASCII punctuation, drop the
  articles ``a/an/the``, collapse whitespace. EM is equality of normalised strings; F1 is the
  harmonic mean of token precision and recall over the bag of normalised tokens (0 when no token is
  shared, including when either side normalises to nothing). Both are maxed over the gold answers.
- HotpotQA (``metric_style="hotpotqa"``): the same normalisation and EM; F1 is 0 when the normalised
  prediction or gold is one of ``yes``/``no``/``noanswer`` and they differ (so "no" never earns
  partial credit against "no way").

Retrieval metrics use binary relevance over ids; retrieved ids are de-duplicated keeping the first
occurrence, because several chunks of one gold document must not count as several hits.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Iterable, Literal, Sequence

__all__ = [
    "MetricStyle",
    "METRIC_STYLES",
    "normalize_answer",
    "exact_match",
    "token_f1",
    "max_over_answers",
    "em_f1",
    "answer_in_texts",
    "dedupe",
    "recall_at_k",
    "ndcg_at_k",
]

MetricStyle = Literal["squad", "hotpotqa"]
METRIC_STYLES: tuple[str, ...] = ("squad", "hotpotqa")

_PUNCT = frozenset(string.punctuation)
# One regex deletes the same characters as a per-character filter, in C (and ~3x faster than
# str.translate): normalising the retrieved passages of every question (Pipeline's
# answer_in_passages) was most of BM25's per-question time through Pipeline.answer.
_PUNCT_RE = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_HOTPOT_SPECIAL = frozenset({"yes", "no", "noanswer"})


def _check_style(style: str) -> None:
    if style not in METRIC_STYLES:
        raise ValueError(f"metric_style must be one of {list(METRIC_STYLES)}, got {style!r}")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, strip punctuation, drop articles, collapse whitespace.

    Raises ``TypeError`` when ``text`` is not a string (a ``None`` answer is the caller's decision).
    """
    if not isinstance(text, str):
        raise TypeError(f"answer must be a str, got {type(text).__name__}: {text!r}")
    text = text.lower()
    text = _PUNCT_RE.sub("", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0 (same rule for both styles)."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str, *, metric_style: MetricStyle = "squad") -> float:
    """Token-level F1 of one prediction against one gold answer, in [0, 1]."""
    _check_style(metric_style)
    pred_norm = normalize_answer(prediction)
    gold_norm = normalize_answer(gold)
    if metric_style == "hotpotqa" and pred_norm != gold_norm and (pred_norm in _HOTPOT_SPECIAL or gold_norm in _HOTPOT_SPECIAL):
        return 0.0
    pred_tokens = pred_norm.split()
    gold_tokens = gold_norm.split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _check_answers(answers: Sequence[str]) -> None:
    if isinstance(answers, str):
        # A bare string would be iterated character by character: almost surely a caller bug.
        raise TypeError(f"answers must be a list of strings, got the string {answers!r}")
    if len(answers) == 0:
        raise ValueError("answers must not be empty: EM/F1 need at least one gold answer")


def max_over_answers(prediction: str, answers: Sequence[str], *, metric_style: MetricStyle = "squad") -> tuple[float, float]:
    """``(em, f1)`` of ``prediction``, each maxed over the gold ``answers``.

    Raises ``ValueError`` when ``answers`` is empty and ``TypeError`` for non-string input.
    """
    _check_style(metric_style)
    _check_answers(answers)
    em = max(exact_match(prediction, g) for g in answers)
    f1 = max(token_f1(prediction, g, metric_style=metric_style) for g in answers)
    return em, f1


em_f1 = max_over_answers


def answer_in_texts(answers: Sequence[str], texts: Iterable[str]) -> bool:
    """Whether any gold answer occurs in any text, after SQuAD normalisation of both.

    Matching is on whole normalised tokens (``" 1973 "`` inside ``" in 1973 oil "``), so "art"
    does not match "start". Answers that normalise to nothing (e.g. "the") never match.
    Raises ``TypeError`` for a bare string in place of a list.
    """
    if isinstance(answers, str) or isinstance(texts, str):
        raise TypeError("answers and texts must be lists of strings, not a single string")
    needles = [f" {n} " for n in (normalize_answer(a) for a in answers) if n]
    if not needles:
        return False
    words = [n.split() for n in needles]
    for text in texts:
        # Every normalised token is a substring of the lower-cased text without punctuation, so
        # a needle with a word missing from that cannot match: skip the (slower) article regex.
        rough = _PUNCT_RE.sub("", text.lower())
        if not any(all(w in rough for w in ws) for ws in words):
            continue
        hay = f" {normalize_answer(text)} "
        if any(n in hay for n in needles):
            return True
    return False


def dedupe(ids: Iterable[str]) -> list[str]:
    """Ids in order with repeats removed (first occurrence kept)."""
    seen: set[str] = set()
    out: list[str] = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")


def _check_gold(gold_ids: Iterable[str]) -> set[str]:
    if isinstance(gold_ids, str):
        raise TypeError(f"gold_ids must be a list of ids, got the string {gold_ids!r}")
    gold = set(gold_ids)
    if not gold:
        raise ValueError("gold_ids must not be empty: recall and nDCG are undefined without relevant ids")
    return gold


def recall_at_k(retrieved_ids: Sequence[str], gold_ids: Iterable[str], k: int) -> float:
    """Share of the gold ids found among the first ``k`` distinct retrieved ids.

    Raises ``ValueError`` for ``k <= 0`` or empty ``gold_ids``.
    """
    _check_k(k)
    gold = _check_gold(gold_ids)
    top = dedupe(retrieved_ids)[:k]
    return len(gold.intersection(top)) / len(gold)


def ndcg_at_k(retrieved_ids: Sequence[str], gold_ids: Iterable[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k over the distinct retrieved ids.

    DCG = sum over ranks i (1-based) <= k of rel_i / log2(i + 1); the ideal DCG puts
    ``min(k, len(gold))`` relevant ids first. Raises ``ValueError`` for ``k <= 0`` or empty ``gold_ids``.
    """
    _check_k(k)
    gold = _check_gold(gold_ids)
    top = dedupe(retrieved_ids)[:k]
    dcg = sum(1.0 / math.log2(rank + 2) for rank, rid in enumerate(top) if rid in gold)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(gold))))
    return dcg / ideal
