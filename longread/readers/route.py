"""``reader.route``: answer with RAG first; fall back to a long-context reader only when the RAG
reader says the passages do not answer the question (Self-Route, Li et al. 2024).

The RAG step is ``reader.hf`` with one change to its instruction: it may reply ``unanswerable``.
Questions whose answer is that marker (or empty) go to the fallback reader (``reader.long_context``
or ``reader.retrolm``), which sees the whole document. ``trace["route"]`` records ``rag`` or
``fallback`` per question, and ``reader_tokens`` adds both steps' prompt tokens so that the cost a
route saves is measured, not assumed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .. import registry
from ..registry import register
from ..stage import Params, RunContext, Stage
from ..types import QAState
from .hf import HFReader

__all__ = ["RouteReader", "needs_fallback", "SELF_ROUTE_INSTRUCTION"]

SELF_ROUTE_INSTRUCTION = (
    "Answer the question using the passages below. Reply with only the answer, as a short phrase of a few words, "
    "with no explanation. If the passages do not contain the answer, reply exactly: unanswerable"
)


def needs_fallback(answer: str | None, marker: str = "unanswerable") -> bool:
    """True when a RAG answer is empty or declares itself unanswerable (case-insensitive)."""
    text = (answer or "").strip().lower()
    return not text or marker.lower() in text


class _SelfRouteRAG(HFReader):
    """``reader.hf`` with the Self-Route instruction (not registered: used inside ``reader.route``)."""

    instruction: ClassVar[str] = SELF_ROUTE_INSTRUCTION


class RouteParams(Params):
    """Params of ``reader.route``.

    ``rag``: params of the RAG step (``reader.hf``'s). ``fallback``: the reader key for the
    fallback and ``fallback_params`` its params. ``when``: ``unanswerable`` (Self-Route),
    ``always`` (every question takes the fallback) or ``never`` (pure RAG) for ablations.
    """

    rag: dict[str, Any] = Field(default_factory=dict)
    fallback: Literal["reader.long_context", "reader.retrolm", "reader.refrag"] = "reader.long_context"
    fallback_params: dict[str, Any] = Field(default_factory=dict)
    when: Literal["unanswerable", "always", "never"] = "unanswerable"
    marker: str = Field(default="unanswerable", min_length=1)

    @model_validator(mode="after")
    def _check_children(self) -> "RouteParams":
        # Validate the nested params now, so a config error surfaces before any model loads.
        HFReader.Params.model_validate(self.rag)
        registry.get(self.fallback).Params.model_validate(self.fallback_params)
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
        if p.when == "always":
            todo = list(batch)
        else:
            batch = self.rag(batch)
            todo = [s for s in batch if p.when == "unanswerable" and needs_fallback(s.answer, p.marker)]
        for s in batch:
            s.trace["route"] = "rag"
        if todo:
            rag_tokens = {}
            for s in todo:
                s.trace["route"] = "fallback"
                s.trace["rag_answer"] = s.answer
                # Readers either add to or set reader_tokens; start the fallback from 0 and add RAG's back.
                rag_tokens[id(s)] = s.trace.pop("reader_tokens", 0)
            self.fallback(todo)
            for s in todo:
                s.trace["route_rag_tokens"] = rag_tokens[id(s)]
                s.trace["reader_tokens"] = s.trace.get("reader_tokens", 0) + rag_tokens[id(s)]
        return batch
