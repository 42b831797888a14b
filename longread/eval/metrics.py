"""Question-answering and retrieval metrics.

Answer metrics follow the official scripts' rules (re-implemented, not copied):

- SQuAD v1.1 (``metric_style="squad"``): normalise = lowercase, drop ASCII punctuation, drop the
  articles ``a/an/the``, collapse whitespace. EM is equality of normalised strings; F1 is the
  harmonic mean of token precision and recall over the bag of normalised tokens (0 when no token is
  shared, including when either side normalises to nothing). Both are maxed over the gold answers.
- HotpotQA (``metric_style="hotpotqa"``): the same normalisation and EM; F1 is 0 when the normalised
  prediction or gold is one of ``yes``/``no``/``noanswer`` and they differ (so "no" never earns
  partial credit against "no way").

For answers that are not short spans, two more styles add metrics on top of SQuAD EM/F1 (which
they compute exactly as ``squad`` does):

- ``long``: ``rouge_l`` (LCS F-measure over normalised tokens) and ``contains`` (the normalised gold
  occurs in the normalised prediction as whole tokens) — for sentence answers and chatty readers.
- ``numeric``: ``numeric`` (every number in the gold has an equal number in the prediction, see
  :func:`numeric_match`) and ``contains`` — for counts, amounts, years, needle numbers.

Retrieval metrics use binary relevance over ids; retrieved ids are de-duplicated keeping the first
occurrence, because several chunks of one gold document must not count as several hits.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
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
    "STYLE_METRICS",
    "ANSWER_METRICS",
    "lcs_length",
    "rouge_l",
    "gold_contained",
    "parse_numbers",
    "ParsedNumber",
    "numeric_match",
    "score_answer",
    "dedupe",
    "recall_at_k",
    "ndcg_at_k",
]

MetricStyle = Literal["squad", "hotpotqa", "long", "numeric"]
METRIC_STYLES: tuple[str, ...] = ("squad", "hotpotqa", "long", "numeric")

STYLE_METRICS: dict[str, tuple[str, ...]] = {
    "squad": (),
    "hotpotqa": (),
    "long": ("rouge_l", "contains"),
    "numeric": ("numeric", "contains"),
}
"""The answer metrics each style adds to ``em`` and ``f1``."""

ANSWER_METRICS: tuple[str, ...] = ("em", "f1", "rouge_l", "contains", "numeric")
"""Every per-question answer metric any style reports, in report order."""

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


# --------------------------------------------------------------------------- long and numeric answers


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F-measure over SQuAD-normalised tokens, in [0, 1].

    With ``L`` = LCS length, ``P = L / len(pred)``, ``R = L / len(gold)``, the score is
    ``2PR / (P + R)`` (beta = 1, as ``rouge_score``'s ``fmeasure``); 0 when either side normalises to
    nothing. Tokens are :func:`normalize_answer`'s (articles and punctuation dropped), so on
    plain lowercase words it equals ``rouge_score``'s ``rougeL`` without stemming.
    """
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_contained(prediction: str, gold: str) -> float:
    """1.0 when the normalised ``gold`` occurs in the normalised ``prediction`` as whole tokens.

    "In 1973, prices rose." contains "1973"; "restart" does not contain "art". A gold that
    normalises to nothing (e.g. "the") is never contained.
    """
    needle = normalize_answer(gold)
    if not needle:
        return 0.0
    return float(f" {needle} " in f" {normalize_answer(prediction)} ")


@dataclass(frozen=True)
class ParsedNumber:
    """A number read from text: its ``value`` and ``step``, the unit of its last stated digit
    (1 for "1973", 0.1 for "1.6 million" scaled to 100,000, 1,000,000 for "two million")."""

    value: float
    step: float


_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_TEENS = {w: i + 10 for i, w in enumerate("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: (i + 2) * 10 for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_NUMBER_WORDS = _UNITS.keys() | _TEENS.keys() | _TENS.keys()
# Digits with optional thousands separators (only groups of exactly three), then decimals.
_TOKEN = re.compile(r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)|(?P<word>[a-z]+)")
_JOIN = re.compile(r"[\s\-]*")  # what may stand between the words of one number ("twenty-one", "1.5 million")


def _tokens(text: str) -> list[tuple[str, str, int, int]]:
    return [(m.lastgroup or "", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _joined(text: str, toks: list[tuple[str, str, int, int]], j: int) -> bool:
    """Whether token ``j`` exists and only spaces/hyphens separate it from token ``j - 1``."""
    return j < len(toks) and _JOIN.fullmatch(text, toks[j - 1][3], toks[j][2]) is not None


def _word_number(text: str, toks: list[tuple[str, str, int, int]], i: int) -> tuple[int, float, float] | None:
    """Parse number words from token ``i``: ``(next index, value, step)``, or None if none start there."""
    total, current, last, step, j = 0, 0, None, 1.0, i
    while j < len(toks) and (j == i or _joined(text, toks, j)):
        kind, w = toks[j][0], toks[j][1]
        nxt = toks[j + 1][1] if j + 1 < len(toks) else ""
        if kind != "word":
            break
        if w == "a" and last is None and nxt in _SCALES and _joined(text, toks, j + 1):
            current, last = 1, "unit"  # "a million", "a hundred"
        elif w == "and" and last in ("hundred", "scale") and nxt in _NUMBER_WORDS:
            pass  # "one hundred and five"
        elif w in _UNITS and last in (None, "tens", "hundred", "scale") and not (last == "tens" and w == "zero"):
            current, last = current + _UNITS[w], "unit"
        elif w in _TEENS and last in (None, "hundred", "scale"):
            current, last = current + _TEENS[w], "teen"
        elif w in _TENS and last in (None, "hundred", "scale"):
            current, last = current + _TENS[w], "tens"
        elif w == "hundred" and last in ("unit", "teen", "tens") and current < 100:
            current, last = current * 100, "hundred"
        elif w in _SCALES and w != "hundred" and last in ("unit", "teen", "tens", "hundred"):
            total, current, last, step = total + current * _SCALES[w], 0, "scale", float(_SCALES[w])
        else:
            break
        j += 1
    if last is None:
        return None
    if last != "scale":
        step = 1.0
    return j, float(total + current), step


def parse_numbers(text: str) -> list[ParsedNumber]:
    """Every number in ``text``, in order, as :class:`ParsedNumber`.

    Read: digits with ``,`` thousands separators (``1,234,567``) and decimals (``3.25``); a leading
    ``-``/``−`` not attached to a word or number (so ``1961-1965`` is two years); a following
    ``hundred``/``thousand``/``million``/``billion``/``trillion`` multiplies (``1.5 million``);
    cardinal words ``zero``..``ninety-nine`` with those scales (``twelve``, ``twenty-one``,
    ``three hundred and five``, ``a million``). Units are ignored, so ``$12``, ``12%``,
    ``12 percent`` and ``twelve`` are all 12. Not read: ordinal words ("third"), fractions
    ("1/2" is 1 and 2), abbreviations ("5k", "$3bn"), European separators ("1.234,5").
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r}")
    text = text.lower()
    toks = _tokens(text)
    out: list[ParsedNumber] = []
    i = 0
    while i < len(toks):
        kind, tok, start, _ = toks[i]
        if kind == "num":
            value = float(tok.replace(",", ""))
            step = 10.0 ** -len(tok.split(".", 1)[1]) if "." in tok else 1.0
            sign_at = start - 1
            if sign_at >= 0 and text[sign_at] in "-−" and (sign_at == 0 or not text[sign_at - 1].isalnum()):
                value = -value
            j = i + 1
            while _joined(text, toks, j) and toks[j][1] in _SCALES:
                value, step = value * _SCALES[toks[j][1]], step * _SCALES[toks[j][1]]
                j += 1
            out.append(ParsedNumber(value, step))
            i = j
            continue
        parsed = _word_number(text, toks, i) if tok in _NUMBER_WORDS or tok == "a" else None
        if parsed is None:
            i += 1
            continue
        i, value, step = parsed
        out.append(ParsedNumber(value, step))
    return out


def numeric_match(prediction: str, gold: str, *, rel_tol: float = 1e-9) -> float | None:
    """1.0 when every number in ``gold`` has an equal number in ``prediction``, else 0.0;
    ``None`` when ``gold`` holds no number (the metric does not apply).

    Equal means within half the gold's ``step``, i.e. the prediction rounds to the gold at the
    precision the gold states: gold "1.6 million" accepts "1,600,000" and "1.64 million" but not
    "1.7 million"; gold "1973" accepts only 1973 (a relative tolerance would let 1973 match 1980).
    ``rel_tol`` only absorbs float error. Extra numbers in the prediction are not penalised
    (a sentence answer may carry a date besides the amount). See :func:`parse_numbers`.
    """
    golds = parse_numbers(gold)
    if not golds:
        return None
    preds = parse_numbers(prediction)

    def found(g: ParsedNumber) -> bool:
        tol = g.step / 2 + rel_tol * max(1.0, abs(g.value))
        return any(abs(p.value - g.value) <= tol for p in preds)

    return float(all(found(g) for g in golds))


def score_answer(
    prediction: str | None, answers: Sequence[str], *, metric_style: MetricStyle = "squad"
) -> dict[str, float | None]:
    """Every answer metric of ``metric_style`` for one prediction, each maxed over ``answers``.

    Returns ``{"em", "f1"}`` plus :data:`STYLE_METRICS` ``[metric_style]``. ``prediction=None``
    (an error, no answer) scores 0 on each metric that applies; ``numeric`` is ``None`` when no
    gold answer holds a number. Raises ``ValueError`` for empty ``answers`` or a bad style.
    """
    _check_style(metric_style)
    _check_answers(answers)
    extra = STYLE_METRICS[metric_style]
    if prediction is None:
        out: dict[str, float | None] = {"em": 0.0, "f1": 0.0}
        out.update({m: 0.0 for m in extra})
        if "numeric" in extra and all(numeric_match("", g) is None for g in answers):
            out["numeric"] = None
        return out
    em, f1 = max_over_answers(prediction, answers, metric_style=metric_style)
    out = {"em": em, "f1": f1}
    if "rouge_l" in extra:
        out["rouge_l"] = max(rouge_l(prediction, g) for g in answers)
    if "contains" in extra:
        out["contains"] = max(gold_contained(prediction, g) for g in answers)
    if "numeric" in extra:
        scores = [s for s in (numeric_match(prediction, g) for g in answers) if s is not None]
        out["numeric"] = max(scores) if scores else None
    return out


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
