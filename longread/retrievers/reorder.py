"""Retrieval reordering: where the passages sit in the reader's prompt.

Long-context readers attend best to the start and the end of their input ("lost in the
middle"); Jin et al. ("Long-Context LLMs Meet RAG", 2024) show that hard negatives placed
in the middle hurt less, and propose putting the strongest passages at both ends:
``[d1, d3, d5, ..., d6, d4, d2]`` for passages ``d1..dn`` ranked best first.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Sequence, TypeVar

from pydantic import field_validator

from ..registry import register
from ..stage import Params, Stage, timed
from ..types import QAState

__all__ = ["ReorderMode", "reorder_positions", "reorder", "HardNegativeReorder"]

ReorderMode = Literal["hard_negative", "reverse", "identity"]
MODES: tuple[str, ...] = ("hard_negative", "reverse", "identity")

T = TypeVar("T")


def reorder_positions(n: int, mode: str) -> list[int]:
    """Indices into a best-first list of length ``n``, in the order they should be placed.

    ``hard_negative``: ``[0, 2, 4, ..., 5, 3, 1]`` (best at both ends, weakest in the middle);
    ``reverse``: ``[n-1, ..., 0]`` (best last, nearest the question); ``identity``: unchanged.
    Raises ``ValueError`` for a negative ``n`` or an unknown mode.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if mode == "identity":
        return list(range(n))
    if mode == "reverse":
        return list(range(n - 1, -1, -1))
    if mode == "hard_negative":
        front = list(range(0, n, 2))  # ranks 1, 3, 5, ... (0-based 0, 2, 4, ...)
        back = list(range(1, n, 2))[::-1]  # ..., ranks 6, 4, 2
        return front + back
    raise ValueError(f"unknown reorder mode {mode!r}; valid modes: {', '.join(MODES)}")


def reorder(items: Sequence[T], mode: str) -> list[T]:
    """Return ``items`` (best first) placed according to ``mode``; see ``reorder_positions``."""
    return [items[i] for i in reorder_positions(len(items), mode)]


@register
class HardNegativeReorder(Stage):
    """Permute each question's passages (best first in) for the reader's prompt.

    Put it last before the reader, and let the reader read every passage it gets: the
    second-best passage ends up *last*, so a reader that cuts the list would drop it. Use
    ``top_k`` to choose how many passages the reader sees; they are cut before reordering.
    Scores are left as they were; ``trace["reorder"]`` records the mode.
    """

    key: ClassVar[str] = "reorder.hard_negative"
    stateless: ClassVar[bool] = True

    class Params(Params):
        """``mode``: hard_negative | reverse | identity; ``top_k``: keep the best k first (None: all)."""

        mode: ReorderMode = "hard_negative"
        top_k: int | None = None

        @field_validator("top_k")
        @classmethod
        def _top_k(cls, v: int | None) -> int | None:
            if v is not None and v <= 0:
                raise ValueError(f"top_k must be > 0 or null, got {v}")
            return v

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Reorder every state's passages in place; returns the same states."""
        with timed(batch, self.key):
            for state in batch:
                kept = state.passages if self.params.top_k is None else state.passages[: self.params.top_k]
                state.passages = reorder(kept, self.params.mode)
                state.trace["reorder"] = self.params.mode
        return batch
