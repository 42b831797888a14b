"""Dense retrieval: an encoder turns chunks and questions into unit vectors; faiss finds the nearest.

Index part (built once, at index time): ``vectors.npy`` (float32, one row per chunk in index
order, saved without pickle), ``index.faiss`` (faiss' own format: ``IndexFlatIP`` by default,
``IndexHNSWFlat`` with inner product when ``index: hnsw``) and ``meta.json``.

Scores are inner products of unit vectors (cosine similarity). A question with ``doc_ids``
is scored exactly against just those documents' chunk vectors with numpy (no approximate
index involved); an unknown document raises ``KeyError`` naming it. An empty or
whitespace-only query returns no passages. Ties break by chunk index order.

Threads: ``faiss_threads`` (default 1) is applied with ``faiss.omp_set_num_threads`` around each
faiss call only (index build and search) and restored after: the OpenMP setting is process-wide and
torch shares it, so setting it once in ``setup`` made every model in the process (the reader too)
run on one thread (measured: reader 22 s instead of 13 s per question). On a 2-core machine one
thread answers single queries several times faster than faiss' default OpenMP pool (see
``benchmarks/dense_threads.py``); while building, one thread makes the HNSW graph reproducible.
``None`` leaves the setting alone.
"""

from __future__ import annotations

import contextlib

import json
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, Sequence

import numpy as np
from pydantic import field_validator

from ..io import atomic_write_json
from ..registry import register
from ..stage import ChunkShard, IndexBuilder, Params, RunContext, ShardedBuilder, Stage, timed
from ..types import QAState
from .common import Hits, make_passages, part_name, slug, top_k

__all__ = ["DenseRetriever", "build_faiss_index", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_ENCODE_SLICE = 2048
_EMPTY: Hits = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))


def build_faiss_index(vectors: np.ndarray, kind: str, *, hnsw_m: int = 32, ef_construction: int = 200) -> Any:
    """A faiss inner-product index over ``vectors`` (float32, (n, dim)).

    ``kind``: ``"flat"`` (exact ``IndexFlatIP``) or ``"hnsw"`` (``IndexHNSWFlat``, approximate).
    Raises ``ValueError`` for another kind.
    """
    import faiss

    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise ValueError(f"unknown faiss index kind {kind!r}; valid: flat, hnsw")
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _check_positive(name: str, v: int) -> int:
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v



@contextlib.contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` OpenMP threads (faiss and torch share the setting); restore after."""
    if n is None:
        yield
        return
    import faiss

    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


@register
class DenseRetriever(Stage):
    """``retriever.dense``: encoder + faiss inner-product search (see the module docstring)."""

    key: ClassVar[str] = "retriever.dense"

    class Params(Params):
        """``encoder`` model name or path; ``index`` flat|hnsw with HNSW ``hnsw_m``/``ef_construction``
        (build time) and ``ef_search`` (query time); ``batch_size`` for encoding; ``faiss_threads``."""

        encoder: str = "all-minilm-l6-v2"
        top_k: int = 20
        index: Literal["flat", "hnsw"] = "flat"
        hnsw_m: int = 32
        ef_construction: int = 200
        ef_search: int = 128
        batch_size: int = 32
        faiss_threads: int | None = 1
        # Long-document options (see longread.encoders.longdoc): "split" embeds a chunk longer
        # than the encoder's limit as its fewest windows (the chunk scores as its best window) —
        # with ``chunker: whole`` and a long encoder, a document is one vector or a few.
        long_docs: Literal["truncate", "split"] = "truncate"
        # Rank documents instead of chunks: each document scores the max (or sum of its top
        # ``doc_top_m``) chunk scores and is returned as its best chunk.
        doc_aggregate: Literal["none", "max", "sum_top_m"] = "none"
        doc_top_m: int = 3

        @field_validator("top_k", "hnsw_m", "ef_construction", "ef_search", "batch_size", "doc_top_m")
        @classmethod
        def _positive(cls, v: int, info: Any) -> int:
            return _check_positive(info.field_name, v)

        @field_validator("faiss_threads")
        @classmethod
        def _threads(cls, v: int | None) -> int | None:
            if v is not None and v <= 0:
                raise ValueError(f"faiss_threads must be > 0 or None, got {v}")
            return v

        @field_validator("encoder")
        @classmethod
        def _encoder(cls, v: str) -> str:
            if not v.strip():
                raise ValueError(f"encoder must be a model name or path, got {v!r}")
            return v

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._encoder: Any = None
        self._index: Any = None
        self._vectors: np.ndarray | None = None
        self._store: Any = None
        self._owner: np.ndarray | None = None
        self._chunk_doc: np.ndarray | None = None

    @property
    def part(self) -> str:
        """Index part name: encoder slug plus a hash of everything that shapes the artifact."""
        p = self.params
        fields: dict[str, Any] = {"encoder": p.encoder, "index": p.index, "format": FORMAT_VERSION}
        if p.index == "hnsw":
            fields.update(hnsw_m=p.hnsw_m, ef_construction=p.ef_construction)
        if p.long_docs != "truncate":
            fields.update(long_docs=p.long_docs)
        return part_name(f"dense-{slug(p.encoder)}", fields)

    def indexes(self) -> dict[str, IndexBuilder]:
        """One part: chunk vectors (encoded shard by shard) and the faiss index over them."""
        return {self.part: ShardedBuilder(map=self._encode_shard, reduce=self._build, uses_model=True)}

    def _encode_shard(self, ctx: RunContext, shard: ChunkShard, out: Path) -> None:
        p = self.params
        encoder = ctx.models.encoder(p.encoder)
        vecs, owners = [np.zeros((0, encoder.dim), dtype=np.float32)], [np.zeros(0, dtype=np.int64)]
        # Slices of a shard, so a long shard's progress shows; batches never span two slices.
        for i in range(0, len(shard.texts), _ENCODE_SLICE):
            texts = shard.texts[i : i + _ENCODE_SLICE]
            if p.long_docs == "split":
                from ..encoders.longdoc import encode_windows

                v, owner, _ = encode_windows(encoder, texts, kind="document", batch_size=p.batch_size)
                owners.append(owner + shard.start + i)  # rows name global chunk positions
            else:
                v = encoder.encode(texts, kind="document", batch_size=p.batch_size)
            vecs.append(np.asarray(v, dtype=np.float32))
            ctx.progress(len(texts))
        if p.long_docs == "split":
            np.save(out / "owner.npy", np.concatenate(owners), allow_pickle=False)
        np.save(out / "vectors.npy", np.concatenate(vecs), allow_pickle=False)

    def _build(self, ctx: RunContext, shards: Sequence[Path], out: Path) -> None:
        import faiss

        from ..pipelines.indexing import concat_npy

        p = self.params
        if p.long_docs == "split":
            concat_npy([d / "owner.npy" for d in shards], out / "owner.npy")
        vectors = concat_npy([d / "vectors.npy" for d in shards], out / "vectors.npy")
        # One thread also makes HNSW construction reproducible (parallel inserts race).
        with omp_threads(p.faiss_threads):
            built = build_faiss_index(vectors, p.index, hnsw_m=p.hnsw_m, ef_construction=p.ef_construction)
        faiss.write_index(built, str(out / "index.faiss"))
        atomic_write_json(out / "meta.json", {
            "format": FORMAT_VERSION, "encoder": p.encoder, "dim": int(vectors.shape[1]), "n": int(vectors.shape[0]),
            "index": p.index, "hnsw_m": p.hnsw_m, "ef_construction": p.ef_construction,
        })

    def setup(self, ctx: RunContext) -> None:
        """Load the encoder and open the persisted vectors and faiss index (never rebuilt here).

        Raises ``ValueError`` when the part does not fit the corpus or the encoder.
        """
        import faiss

        store = ctx.require_store()
        path = ctx.index_part(self.part)
        with open(path / "meta.json", encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: dense index format {meta.get('format')!r}, expected {FORMAT_VERSION}; rebuild the index")
        vectors = np.load(path / "vectors.npy", allow_pickle=False, mmap_mode="r")
        index = faiss.read_index(str(path / "index.faiss"))
        owner = None
        if self.params.long_docs == "split":
            owner = np.load(path / "owner.npy", allow_pickle=False)
            if len(owner) != vectors.shape[0] or (len(owner) and int(owner.max()) >= len(store.chunks)):
                raise ValueError(f"{path}: owner.npy does not match the vectors or the corpus; rebuild the index")
        rows = len(store.chunks) if owner is None else len(owner)
        if vectors.shape[0] != rows or index.ntotal != rows:
            raise ValueError(
                f"{path}: dense index has {vectors.shape[0]} vectors / {index.ntotal} faiss entries "
                f"but the corpus has {len(store.chunks)} chunks; rebuild the index"
            )
        encoder = ctx.models.encoder(self.params.encoder)
        if encoder.dim != vectors.shape[1]:
            raise ValueError(f"{path}: vectors have dim {vectors.shape[1]} but encoder {self.params.encoder!r} gives {encoder.dim}")
        if self.params.index == "hnsw":
            index.hnsw.efSearch = self.params.ef_search
        self._encoder, self._index, self._vectors, self._store = encoder, index, vectors, store
        self._owner = owner
        self._chunk_doc = store.chunk_doc_positions()

    def search(self, queries: Sequence[str], doc_ids: Sequence[Sequence[str] | None] | None = None, k: int | None = None) -> list[Hits]:
        """Hits for each query (optionally scoped to ``doc_ids[i]``), best first.

        Raises ``RuntimeError`` before ``setup`` and ``KeyError`` for an unknown document id.
        """
        if self._index is None:
            raise RuntimeError("DenseRetriever.search called before setup()")
        k = self.params.top_k if k is None else k
        scopes = list(doc_ids) if doc_ids is not None else [None] * len(queries)
        # Resolve scopes first so an unknown document fails before any encoding work.
        positions = [self._store.positions_for(s) for s in scopes]
        out: list[Hits] = [_EMPTY] * len(queries)
        live = [i for i, q in enumerate(queries) if q.strip()]
        if not live:
            return out
        qv = self._encoder.encode([queries[i] for i in live], kind="query", batch_size=self.params.batch_size)
        if self._owner is not None or self.params.doc_aggregate != "none":
            for j, i in enumerate(live):
                out[i] = self._search_exact(qv[j], positions[i], k)
            return out
        free = [j for j, i in enumerate(live) if positions[i] is None]
        if free:
            kk = min(k, self._index.ntotal)
            with omp_threads(self.params.faiss_threads):
                sims, ids = self._index.search(np.ascontiguousarray(qv[free]), kk)
            for j, s_row, i_row in zip(free, sims, ids):
                ok = i_row >= 0  # faiss pads with -1 when it finds fewer than kk
                pos, sc = i_row[ok].astype(np.int64), s_row[ok].astype(np.float64)
                order = np.lexsort((pos, -sc))
                out[live[j]] = (pos[order], sc[order])
        for j, i in enumerate(live):
            if positions[i] is not None:
                # Sorted, de-duplicated positions: ties then break by chunk index, as elsewhere.
                cand = np.unique(np.asarray(positions[i], dtype=np.int64))
                sims = np.asarray(self._vectors[cand], dtype=np.float32) @ qv[j]
                sel, sc = top_k(sims, k)
                out[i] = (cand[sel], sc)
        return out

    def _search_exact(self, q: np.ndarray, positions: list[int] | None, k: int) -> Hits:
        """Exact scoring for window vectors and/or document aggregation (numpy, no faiss)."""
        from ..encoders.longdoc import max_by_owner, rank_chunks_or_docs

        n = len(self._store.chunks)
        owner = self._owner if self._owner is not None else np.arange(n, dtype=np.int64)
        rows = np.arange(len(owner)) if positions is None else np.nonzero(np.isin(owner, np.asarray(positions, dtype=np.int64)))[0]
        sims = np.asarray(self._vectors[rows], dtype=np.float32) @ q
        chunk_scores = max_by_owner(sims, owner[rows], n)
        p = self.params
        return rank_chunks_or_docs(chunk_scores, self._chunk_doc, len(self._store.documents), k, p.doc_aggregate, p.doc_top_m)

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Set ``passages`` of each state to its dense hits, best first."""
        with timed(batch, self.key):
            hits = self.search([s.question.question for s in batch], [s.question.doc_ids for s in batch])
            for s, h in zip(batch, hits):
                s.passages = make_passages(self._store.chunks, h, self.key)
        return batch
