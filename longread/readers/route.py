"""``reader.route``: answer with RAG first; fall back to a long-context reader only when the RAG
reader says the passages do not answer the question (Self-Route, Li et al. 2024), or (``when:
ungrounded``) when its answer is not spelled out in the passages it read.

The RAG step is ``reader.hf`` in its chosen answer style (``rag.prompt``) with one sentence added
to the instruction: if the passages do not contain the answer, reply ``unanswerable`` (a template
must say so itself). Questions whose answer contains the ``marker`` (or is empty) go to the fallback
reader (``reader.long_context``, ``reader.retrolm`` or ``reader.refrag``), which sees the whole
document. ``trace["route"]`` records ``rag`` or ``fallback`` per question (and ``rag_answer`` what RAG
said before falling back); cost is recorded as this stage's usage parts ``rag`` and ``fallback``, so
the tokens a route saves are measured, not assumed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .. import registry
from ..llm.prompts import UNANSWERABLE, resolve_prompt
from ..llm.usage import relabel
from ..registry import register
from ..stage import Params, RunContext, Stage
from ..types import QAState
from .hf import HFReader

__all__ = ["RouteReader", "needs_fallback", "answer_support", "SELF_ROUTE_CLAUSE"]

SELF_ROUTE_CLAUSE = f"If the passages do not contain the answer, reply exactly: {UNANSWERABLE}"
"""The sentence Self-Route adds to the RAG step's instruction."""


def needs_fallback(answer: str | None, marker: str = UNANSWERABLE) -> bool:
    """True when a RAG answer is empty or declares itself unanswerable (case-insensitive)."""
    text = (answer or "").strip().lower()
    return not text or marker.lower() in text


def answer_support(answer: str | None, context: str | None) -> float:
    """Share of the answer's words (SQuAD-normalised) that occur in ``context``: 1.0 for an answer
    the passages spell out, lower for one the model made up. 0.0 for an empty answer or context."""
    from ..eval.metrics import normalize_answer

    words = normalize_answer(answer or "").split()
    seen = set(normalize_answer(context or "").split())
    return sum(w in seen for w in words) / len(words) if words and seen else 0.0


class _SelfRouteRAG(HFReader):
    """``reader.hf`` with the Self-Route clause (not registered: used inside ``reader.route``)."""

    extra_instruction = SELF_ROUTE_CLAUSE


class RouteParams(Params):
    """Params of ``reader.route``.

    ``rag``: params of the RAG step (``reader.hf``'s, ``prompt`` included; a template must tell
    the model to reply ``unanswerable`` itself). ``fallback``: the reader key for the fallback and
    ``fallback_params`` its params. ``when``: ``unanswerable`` (Self-Route), ``always`` (every
    question takes the fallback) or ``never`` (pure RAG) for ablations. ``marker``: the text in a
    RAG answer that sends its question to the fallback. ``ungrounded``: the RAG step is plain
    ``reader.hf`` (no clause; small models rarely say "unanswerable") and a question falls back
    when its answer is empty or less than ``min_support`` of its words occur in the passages the
    reader saw (:func:`answer_support`): on extractive questions an answer the passages do not
    spell out is usually wrong (benchmarks/quality.py reports the signal's calibration).
    """

    rag: dict[str, Any] = Field(default_factory=dict)
    fallback: Literal["reader.long_context", "reader.retrolm", "reader.refrag"] = "reader.long_context"
    fallback_params: dict[str, Any] = Field(default_factory=dict)
    when: Literal["unanswerable", "ungrounded", "always", "never"] = "unanswerable"
    marker: str = Field(default=UNANSWERABLE, min_length=1)
    min_support: float = Field(default=1.0, gt=0.0, le=1.0, description="when=ungrounded: answer words that must be in the passages")

    @model_validator(mode="after")
    def _check_children(self) -> "RouteParams":
        # Validate the nested params now, so a config error surfaces before any model loads.
        rag = HFReader.Params.model_validate(self.rag)
        registry.get(self.fallback).Params.model_validate(self.fallback_params)
        template = resolve_prompt(rag.prompt).template
        if template is not None and self.when == "unanswerable" and self.marker.lower() not in template.lower():
            raise ValueError(
                f"rag.prompt is a template, so Self-Route cannot add its clause to it: the template must tell the model "
                f"to reply {self.marker!r} when the passages do not answer (e.g. {SELF_ROUTE_CLAUSE!r})"
            )
        return self


@register
class RouteReader(Stage):
    """RAG first, long context only where RAG declares the passages insufficient."""

    key: ClassVar[str] = "reader.route"
    Params: ClassVar[type[Params]] = RouteParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        p: RouteParams = self.params  # type: ignore[assignment]
        self.rag = _SelfRouteRAG(HFReader.Params.model_validate(p.rag))
        if self.rag.params.prompt_spec.template is not None or p.when == "ungrounded":
            self.rag.extra_instruction = ""  # a template carries its own clause (checked in RouteParams)
        cls = registry.get(p.fallback)
        self.fallback = cls(cls.Params.model_validate(p.fallback_params))

    def setup(self, ctx: RunContext) -> None:
        """Set up both readers (a model shared by name is loaded once by the hub)."""
        self.rag.setup(ctx)
        self.fallback.setup(ctx)

    def indexes(self):
        """The fallback reader's index parts (e.g. RetroLM page KV)."""
        return self.fallback.indexes()

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Answer with RAG, then re-answer with the fallback the questions it could not answer."""
        p: RouteParams = self.params  # type: ignore[assignment]
        batch = list(batch)
        if p.when == "always":
            todo = list(batch)
        else:
            batch = self.rag(batch)
            for s in batch:
                relabel(s, self.rag.key, self.key, "rag")
            # A question whose RAG call failed carries its error; it does not fall back.
            todo = [s for s in batch if "error" not in s.trace and self._falls_back(s)]
        for s in batch:
            s.trace["route"] = "rag"
        if todo:
            for s in todo:
                s.trace["route"] = "fallback"
                s.trace["rag_answer"] = s.answer
                s.citations = []
            done = self.fallback(todo)
            at = {id(s): i for i, s in enumerate(batch)}
            for old, s in zip(todo, done):
                relabel(s, self.fallback.key, self.key, "fallback")
                batch[at[id(old)]] = s
        return batch

    def _falls_back(self, state: QAState) -> bool:
        p: RouteParams = self.params  # type: ignore[assignment]
        if p.when == "unanswerable":
            return needs_fallback(state.answer, p.marker)
        if p.when == "ungrounded":
            support = answer_support(state.answer, state.context)
            state.trace["rag_support"] = round(support, 3)
            return support < p.min_support
        return False
