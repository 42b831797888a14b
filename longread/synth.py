"""Synthetic long-context suites (RULER / BABILong style) from any directory of filler text.

- ``needle``: one fact ("The special magic number for Oslo is 4821337.") planted at a chosen depth.
- ``multi``: several such facts spread through the document; one question asks for all of them.
- ``babi``: a bAbI story's sentences planted in order through the filler; its question and answer.

Lengths are counted in whitespace words times ``tokens_per_word`` (1.3 by default, close to BPE
tokenisers on English prose), or exactly with a tokenizer (``count_tokens``).
Scoring follows RULER: ``all`` = 1 when every expected string occurs in the prediction, ``part`` =
the fraction that occurs (case-insensitive substring match).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable, Sequence

from .types import Document, Question

__all__ = ["load_filler", "make_needle_suite", "load_babi", "ruler_score", "NEEDLE_CITIES"]

NEEDLE_CITIES = [
    "Oslo", "Lima", "Hanoi", "Accra", "Quito", "Perth", "Riga", "Tunis", "Dakar", "Bern",
    "Kyoto", "Porto", "Cusco", "Minsk", "Sofia", "Turin", "Malmo", "Split", "Ghent", "Graz",
]


def load_filler(directory: str | Path, *, max_words: int = 2_000_000) -> list[str]:
    """Words of every ``*.txt`` file in ``directory`` (sorted by name), up to ``max_words``.

    Raises ``FileNotFoundError`` when the directory has no text files.
    """
    d = Path(directory)
    files = sorted(d.glob("*.txt")) if d.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no *.txt filler files in {str(d)!r}")
    words: list[str] = []
    for f in files:
        words.extend(f.read_text(encoding="utf-8", errors="replace").split())
        if len(words) >= max_words:
            break
    return words[:max_words]


def _sentence_starts(words: Sequence[str]) -> list[int]:
    # Plant facts between sentences, not inside them.
    return [0] + [i + 1 for i, w in enumerate(words[:-1]) if re.search(r"[.!?][\"')\]]*$", w)]


def _plant(filler: Sequence[str], n_words: int, facts: Sequence[str], depths: Sequence[float], offset: int) -> str:
    if len(filler) < n_words:
        reps = n_words // max(1, len(filler)) + 1
        filler = list(filler) * reps
    body = list(filler[offset % max(1, len(filler) - n_words + 1) :][:n_words])
    starts = _sentence_starts(body)
    inserts = []
    for fact, depth in zip(facts, depths):
        target = int(round(depth / 100.0 * len(body)))
        pos = min(starts, key=lambda s: abs(s - target))
        inserts.append((pos, fact))
    for pos, fact in sorted(inserts, key=lambda x: x[0], reverse=True):
        body[pos:pos] = fact.split()
    return " ".join(body)


def make_needle_suite(
    filler_words: Sequence[str],
    *,
    lengths: Sequence[int] = (2000, 4000, 8000, 16000),
    depths: Sequence[float] = (0, 25, 50, 75, 100),
    kind: str = "needle",
    n_needles: int = 4,
    babi_stories: Sequence[tuple[list[str], str, str]] | None = None,
    tokens_per_word: float = 1.3,
    count_tokens: Callable[[str], int] | None = None,
    seed: int = 0,
) -> tuple[list[Document], list[Question]]:
    """Build ``(documents, questions)``: one document and one question per (length, depth).

    ``kind``: ``needle`` | ``multi`` (``n_needles`` facts spread from ``depth`` to the end) |
    ``babi`` (needs ``babi_stories`` from :func:`load_babi`). Each question is scoped to its
    document, ``gold_ids`` is that document, and ``answers`` holds every expected string.
    Raises ``ValueError`` for a bad kind, depth or length.
    """
    if kind not in {"needle", "multi", "babi"}:
        raise ValueError(f"kind must be 'needle', 'multi' or 'babi', got {kind!r}")
    if kind == "babi" and not babi_stories:
        raise ValueError("kind 'babi' needs babi_stories (see load_babi)")
    if any(not 0 <= d <= 100 for d in depths):
        raise ValueError(f"depths must be within 0..100 (percent), got {list(depths)}")
    if any(n <= 0 for n in lengths):
        raise ValueError(f"lengths must be > 0 tokens, got {list(lengths)}")
    if not filler_words:
        raise ValueError("filler is empty")
    rng = random.Random(seed)
    docs: list[Document] = []
    questions: list[Question] = []
    for length in lengths:
        for depth in depths:
            i = len(docs)
            did = f"{kind}-{length}-d{int(depth)}"
            if kind == "needle":
                city = rng.choice(NEEDLE_CITIES)
                number = str(rng.randint(1_000_000, 9_999_999))
                facts, at = [f"The special magic number for {city} is {number}."], [depth]
                question, answers = f"What is the special magic number for {city}?", [number]
            elif kind == "multi":
                cities = rng.sample(NEEDLE_CITIES, n_needles)
                numbers = [str(rng.randint(1_000_000, 9_999_999)) for _ in cities]
                facts = [f"The special magic number for {c} is {n}." for c, n in zip(cities, numbers)]
                at = [depth + (100 - depth) * k / max(1, n_needles) for k in range(n_needles)]
                question = "What are the special magic numbers for " + ", ".join(cities) + "?"
                answers = numbers
            else:
                story, question, answer = babi_stories[i % len(babi_stories)]  # type: ignore[index]
                facts = story
                at = [depth + (100 - depth) * k / max(1, len(story)) for k in range(len(story))]
                answers = [answer]
            fact_words = sum(len(f.split()) for f in facts)
            n_words = max(1, int(length / tokens_per_word) - fact_words)
            text = _plant(filler_words, n_words, facts, at, offset=rng.randrange(0, max(1, len(filler_words))))
            if count_tokens is not None:
                # One correction step in token space keeps lengths close to the target.
                ratio = length / max(1, count_tokens(text))
                text = _plant(filler_words, max(1, int(n_words * ratio)), facts, at, offset=i * 997)
            docs.append(Document(id=did, text=text, meta={"kind": kind, "length": length, "depth": depth}))
            questions.append(Question(id=f"q-{did}", question=question, answers=answers, doc_ids=[did], gold_ids=[did]))
    return docs, questions


def load_babi(path: str | Path, *, max_stories: int | None = None) -> list[tuple[list[str], str, str]]:
    """Read a bAbI task file into ``(supporting-story sentences, question, answer)`` triples.

    Each question keeps the story lines up to it. Raises ``ValueError`` on a malformed line.
    """
    out: list[tuple[list[str], str, str]] = []
    story: list[str] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        num, _, rest = line.partition(" ")
        if not num.isdigit():
            raise ValueError(f"{path}:{n}: bAbI lines start with a number, got {line[:30]!r}")
        if num == "1":
            story = []
        if "\t" in rest:
            parts = rest.split("\t")
            if len(parts) < 2:
                raise ValueError(f"{path}:{n}: question line without an answer")
            out.append((list(story), parts[0].strip(), parts[1].strip()))
            if max_stories is not None and len(out) >= max_stories:
                break
        else:
            story.append(rest.strip())
    return out


def ruler_score(prediction: str | None, answers: Sequence[str], mode: str = "all") -> float:
    """RULER string match: ``all`` → 1.0 iff every answer occurs in the prediction; ``part`` → fraction."""
    if mode not in {"all", "part"}:
        raise ValueError(f"mode must be 'all' or 'part', got {mode!r}")
    if not answers:
        raise ValueError("ruler_score needs at least one expected answer")
    pred = (prediction or "").lower()
    hits = sum(1 for a in answers if a.lower() in pred)
    return float(hits == len(answers)) if mode == "all" else hits / len(answers)
