"""Answer styles and prompt templates for readers.

A reader's ``prompt`` param is a style name or a template:

- ``short``: only the answer, a few words (SQuAD-style extractive QA). Default, 32 new tokens.
- ``span``: the one sentence of the passages that answers, quoted verbatim. 96 new tokens.
- ``free``: a complete answer in a few sentences. 256 new tokens.
- ``cite``: an answer in words that carries ``[n]`` markers pointing at the numbered passages
  (parsed into citations by :func:`parse_citations`), cleaned by :func:`clean_cite`. 256 new tokens.
- a template: any text with ``{context}`` and ``{question}`` placeholders (``{{``/``}}`` for
  literal braces), used as the whole user message; answers are cleaned as ``free``.

Placeholders are checked when the config loads (:func:`check_template`). The same style reads
"passages" for RAG readers and "document" for long-context readers.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "STYLES",
    "Style",
    "PromptSpec",
    "check_template",
    "resolve_prompt",
    "clean_answer",
    "clean_free",
    "clean_cite",
    "has_words",
    "parse_citations",
    "strip_citations",
    "UNANSWERABLE",
]

Source = Literal["passages", "document"]
UNANSWERABLE = "unanswerable"


@dataclass(frozen=True)
class Style:
    """One answer style: its instruction (``{source}`` is "passages" or "document"), default
    ``max_new_tokens`` and how raw output is cleaned (``short``, ``free`` or ``cite``)."""

    name: str
    instruction: str
    max_new_tokens: int
    cleaner: Literal["short", "free", "cite"]
    numbered: bool = True  # passages shown as [1], [2], ...


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style(
            "short",
            "Answer the question using the {source} below. Reply with only the answer, as a short phrase "
            "of a few words, with no explanation.",
            32,
            "short",
        ),
        Style(
            "span",
            "Answer the question by quoting the one sentence of the {source} below that answers it. Reply with "
            "that sentence only, copied exactly, with no explanation.",
            96,
            "short",
        ),
        Style(
            "free",
            "Answer the question using the {source} below. Give a complete, accurate answer in a few sentences. "
            "If the {source} do not contain the answer, say so.",
            256,
            "free",
        ),
        # Tried on qwen2.5-0.5b-instruct and smollm2-135m-instruct (10 SQuAD demo questions, BM25
        # top 3): "After each sentence ... cite the passage numbers" made qwen reply with nothing but
        # "[1]" (10/10); a concrete example answer was copied word for word; a few-shot chat turn or a
        # two-line "Answer:/Source:" form gave words but markers in only 2-3/10. Asking for the words
        # first, then the number, gave markers in 9/10 (7 with words, the marker often first, which
        # clean_cite moves to the end); the reader completes marker-only answers (see reader.hf).
        Style(
            "cite",
            "Answer the question using only the numbered {source} below. First write the answer in words, in "
            "one short sentence. Then put the number of the passage that says it in square brackets at the end "
            "of the sentence. If the {source} do not contain the answer, say so.",
            256,
            "cite",
        ),
    )
}

_FIELDS = {"context", "question"}


def check_template(template: str) -> None:
    """Raise ``ValueError`` unless ``template`` has ``{question}`` and ``{context}`` and no other field."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"prompt template is malformed ({e}); write literal braces as '{{{{' and '}}}}'") from None
    bad = sorted({f for f in fields if f not in _FIELDS})
    if bad:
        shown = ", ".join("{" + f + "}" if f else "{}" for f in bad)
        raise ValueError(f"prompt template has unknown placeholder(s) {shown}; valid: {{context}}, {{question}}")
    missing = sorted(_FIELDS - set(fields))
    if missing:
        raise ValueError(f"prompt template must contain {', '.join('{' + m + '}' for m in missing)}")


@dataclass(frozen=True)
class PromptSpec:
    """A resolved ``prompt`` param: a style, or a template (``style`` is then ``None``)."""

    style: Style | None
    template: str | None = None

    @property
    def cleaner(self) -> str:
        """``short``, ``free`` or ``cite``."""
        return self.style.cleaner if self.style is not None else "free"

    @property
    def default_max_new_tokens(self) -> int:
        """The style's default answer length (templates: 256)."""
        return self.style.max_new_tokens if self.style is not None else 256

    @property
    def cites(self) -> bool:
        """True for the ``cite`` style, whose answers are parsed into citations."""
        return self.style is not None and self.style.name == "cite"

    def message(self, context: str, question: str, *, source: Source = "passages", extra: str = "") -> str:
        """The user message for ``question`` over ``context``; ``extra`` is appended to the instruction."""
        if self.template is not None:
            return self.template.format(context=context, question=question)
        instruction = self.style.instruction.format(source=source)
        if extra:
            instruction = f"{instruction} {extra}"
        return f"{instruction}\n\n{context}\n\nQuestion: {question}\nAnswer:"


def resolve_prompt(value: str) -> PromptSpec:
    """A style name or a template → :class:`PromptSpec`; ``ValueError`` names the valid styles."""
    if value in STYLES:
        return PromptSpec(STYLES[value])
    if "{" not in value:
        raise ValueError(
            f"prompt must be a style ({', '.join(STYLES)}) or a template with {{context}} and {{question}}, got {value!r}"
        )
    check_template(value)
    return PromptSpec(None, value)


_PREFIX = re.compile(r"^\s*(final answer|answer)\s*[:\-]\s*", re.IGNORECASE)


def clean_answer(text: str) -> str:
    """Clean a short answer: first non-empty line, no "Answer:" prefix, no wrapping quotes, and no
    trailing period unless it ends an abbreviation ("U.S.")."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    ans = _PREFIX.sub("", lines[0]).strip()
    if len(ans) >= 2 and ans[0] == ans[-1] and ans[0] in "\"'":
        ans = ans[1:-1].strip()
    if ans.endswith(".") and not ans.endswith(".."):
        last = ans.rsplit(maxsplit=1)[-1][:-1]
        # "U.S." / "a.m." keep their final dot; "Zorbatown." and "3.5." lose it.
        if "." not in last or re.fullmatch(r"[\d.,]+", last):
            ans = ans[:-1].rstrip()
    return ans


def clean_free(text: str) -> str:
    """Clean a long answer: surrounding whitespace and a leading "Answer:" label go, lines stay."""
    return _PREFIX.sub("", text.strip(), count=1).strip()


def clean(text: str, cleaner: str) -> str:
    """Apply the ``short``, ``free`` or ``cite`` cleaner."""
    if cleaner == "short":
        return clean_answer(text)
    return clean_cite(text) if cleaner == "cite" else clean_free(text)


_MARKER = re.compile(r"\[\s*(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\s*\]")
_NUMS = r"\d{1,4}(?:\s*(?:,|;|&|and)\s*\d{1,4})*"
# "[Passage 2]", "(passages 1 and 3)", "[Source: 2]": another way small models write a marker.
_WORDY_MARKER = re.compile(rf"[\[(]\s*(?:passages?|sources?)\s*:?\s*({_NUMS})\s*[\])]", re.IGNORECASE)
# A line of its own naming the sources: "Source: [2]", "Sources: 1, 3", "(Passage 2)".
_SOURCE_LINE = re.compile(rf"^\s*\(?\s*(?:sources?|citations?|references?|passages?)\s*:?\s*((?:\[?\s*{_NUMS}\s*\]?\s*)+)\)?\s*\.?\s*$",
                          re.IGNORECASE)
_LEADING = re.compile(r"^\s*((?:\[\s*\d{1,4}(?:\s*[,;]\s*\d{1,4})*\s*\]\s*)+)(.*)$", re.DOTALL)


def _markers(numbers: list[str]) -> str:
    return "".join(f"[{k}]" for k in numbers)


def clean_cite(text: str) -> str:
    """Clean a ``cite`` answer into "words [n]" form; the words and numbers are the model's.

    Like :func:`clean_free`, plus: ``[Passage 2]``/``(passages 1 and 3)`` become ``[2]``/``[1][3]``;
    a line that only names sources ("Source: [2]", "Sources: 1, 3") becomes markers at the end of
    the answer; markers the answer starts with ("[1] 182 million tons", the passages' own layout)
    move to its end ("182 million tons [1]"). An answer that is only markers stays as it is.
    """
    text = clean_free(text)
    text = _WORDY_MARKER.sub(lambda m: _markers(re.findall(r"\d+", m.group(1))), text)
    body, tail = [], []
    for line in text.splitlines():
        m = _SOURCE_LINE.match(line)
        if m:
            tail += re.findall(r"\d+", m.group(1))
        else:
            body.append(line)
    text = "\n".join(body).strip()
    m = _LEADING.match(text)
    if m and re.search(r"\w", _MARKER.sub("", m.group(2))):
        text = _PREFIX.sub("", m.group(2).strip(), count=1)
        tail = re.findall(r"\d+", m.group(1)) + tail
    if tail:
        # Before a final period, as a writer would: "... 1995 [1]."
        end = "." if text.endswith(".") and not text.endswith("..") else ""
        text = f"{text[: len(text) - len(end)].rstrip()} {_markers(tail)}{end}".strip()
    return text


def has_words(answer: str) -> bool:
    """True when ``answer`` says something besides its ``[n]`` markers."""
    return bool(re.search(r"\w", _MARKER.sub("", answer)))


def parse_citations(text: str, n_passages: int) -> list[int]:
    """1-based passage numbers cited in ``text`` as ``[n]``, ``[n, m]`` or ``[n][m]``, in first-seen
    order, without repeats; numbers outside ``1..n_passages`` are dropped."""
    out: list[int] = []
    for m in _MARKER.finditer(text):
        for part in re.split(r"[,;]", m.group(1)):
            k = int(part)
            if 1 <= k <= n_passages and k not in out:
                out.append(k)
    return out


def strip_citations(text: str) -> str:
    """``text`` without its ``[n]`` markers (for scoring an answer's words)."""
    return re.sub(r"\s+([.,;:!?])", r"\1", _MARKER.sub("", text)).strip()
