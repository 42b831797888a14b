"""Hybrid retrieval: reciprocal rank fusion (RRF) of BM25 and dense retrieval.

Each component retrieves its ``candidates`` best chunks; a chunk's fused score is
``sum over components of weight / (rrf_k + rank)`` with ranks starting at 1 (Cormack, Clarke and
Buettcher, SIGIR 2009; ``rrf_k = 60`` is their constant; weights ``bm25_weight`` and
``dense_weight``, 1 each by default, tilt the fusion towards one component). Ties break by the better single
component rank, then by chunk index. Each passage keeps the component scores it got in
``passage.scores`` (``retriever.bm25``, ``retriever.dense``) next to ``retriever.hybrid``.
Scoping and empty queries behave as in the components; the components' own ``top_k`` is
not used (``candidates`` is).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..registry import register
from ..stage import IndexBuilder, Params, RunContext, Stage, timed
from ..types import Passage, QAState
from .bm25 import BM25Retriever
from .common import Hits
from .dense import DenseRetriever

__all__ = ["HybridRetriever", "rrf_fuse"]


def rrf_fuse(runs: Sequence[Hits], rrf_k: float, k: int,
             weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked runs (each ``(positions, scores)`` best first) by (weighted) reciprocal rank.

    ``weights``: one per run (default 1 each). Returns ``(positions, fused_scores)`` best first, at
    most ``k``.
    """
    fused: dict[int, float] = {}
    best: dict[int, int] = {}
    for (positions, _), w in zip(runs, weights if weights is not None else [1.0] * len(runs)):
        for rank, p in enumerate(positions.tolist(), start=1):
            fused[p] = fused.get(p, 0.0) + w / (rrf_k + rank)
            best[p] = min(best.get(p, rank), rank)
    order = sorted(fused, key=lambda p: (-fused[p], best[p], p))[:k]
    return np.asarray(order, dtype=np.int64), np.asarray([fused[p] for p in order], dtype=np.float64)


@register
class HybridRetriever(Stage):
    """``retriever.hybrid``: RRF of ``retriever.bm25`` and ``retriever.dense`` (see the module docstring)."""

    key: ClassVar[str] = "retriever.hybrid"

    class Params(Params):
        """Component params (``bm25``, ``dense``), ``rrf_k``, component weights, per-component
        ``candidates`` and final ``top_k``."""

        bm25: BM25Retriever.Params = Field(default_factory=BM25Retriever.Params)
        dense: DenseRetriever.Params = Field(default_factory=DenseRetriever.Params)
        rrf_k: float = 60.0
        bm25_weight: float = Field(default=1.0, description="weight of BM25's reciprocal ranks in the fusion")
        dense_weight: float = Field(default=1.0, description="weight of the dense retriever's reciprocal ranks")
        candidates: int = 50
        top_k: int = 20

        @field_validator("rrf_k", "bm25_weight", "dense_weight")
        @classmethod
        def _non_negative(cls, v: float, info: Any) -> float:
            if not v >= 0:
                raise ValueError(f"{info.field_name} must be >= 0, got {v}")
            return v

        @field_validator("candidates", "top_k")
        @classmethod
        def _positive(cls, v: int, info: Any) -> int:
            if v <= 0:
                raise ValueError(f"{info.field_name} must be > 0, got {v}")
            return v

        @model_validator(mode="after")
        def _enough(self) -> "HybridRetriever.Params":
            if self.bm25_weight == 0 and self.dense_weight == 0:
                raise ValueError("bm25_weight and dense_weight are both 0: nothing would be retrieved")
            if self.candidates < self.top_k:
                raise ValueError(f"candidates must be >= top_k, got candidates={self.candidates} top_k={self.top_k}")
            return self

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.bm25 = BM25Retriever(self.params.bm25)
        self.dense = DenseRetriever(self.params.dense)
        self._store: Any = None

    def indexes(self) -> dict[str, IndexBuilder]:
        """The union of the BM25 and dense parts."""
        return {**self.bm25.indexes(), **self.dense.indexes()}

    def setup(self, ctx: RunContext) -> None:
        """Open both components' persisted parts."""
        self.bm25.setup(ctx)
        self.dense.setup(ctx)
        self._store = ctx.require_store()

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Set ``passages`` of each state to the fused hits, best first."""
        p = self.params
        with timed(batch, self.key):
            queries = [s.question.question for s in batch]
            scopes = [s.question.doc_ids for s in batch]
            runs = {
                self.bm25.key: self.bm25.search(queries, scopes, k=p.candidates),
                self.dense.key: self.dense.search(queries, scopes, k=p.candidates),
            }
            chunks = self._store.chunks
            for i, s in enumerate(batch):
                comp = {key: dict(zip(h[i][0].tolist(), h[i][1].tolist())) for key, h in runs.items()}
                positions, fused = rrf_fuse([h[i] for h in runs.values()], p.rrf_k, p.top_k,
                                            weights=[p.bm25_weight, p.dense_weight])
                passages = []
                for pos, f in zip(positions.tolist(), fused.tolist()):
                    scores = {key: c[pos] for key, c in comp.items() if pos in c}
                    scores[self.key] = f
                    passages.append(Passage(chunk=chunks[pos], score=f, scores=scores))
                s.passages = passages
        return batch
