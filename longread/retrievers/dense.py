"""Dense retrieval: an encoder turns chunks and questions into unit vectors; faiss finds the nearest.

Index part (built once, at index time): ``vectors.npy`` (float32, one row per chunk in index
order, saved without pickle), ``index.faiss`` (faiss' own binary format, no pickle) and
``meta.json``. Each store shard is encoded apart (in parallel by a Ray actor pool, kept for a
resumed build); the shards' vectors are then joined into ``vectors.npy`` and the faiss index is
built from its memory map. The faiss index is chosen with ``index``:

- ``flat``: exact ``IndexFlatIP``; memory and time per query grow with the corpus.
- ``hnsw``: ``IndexHNSWFlat`` graph (``hnsw_m`` links, ``ef_construction``; ``ef_search`` at
  query time); approximate, fast, holds the full vectors.
- ``ivfpq``: ``IndexIVFPQ`` for large corpora: a trained coarse quantiser of ``nlist`` lists
  (default about 4·sqrt(n)) and product-quantised codes of ``pq_m`` bytes of ``pq_bits`` bits;
  ``nprobe`` lists are searched per query and the ``refine * top_k`` candidates re-scored
  exactly from ``vectors.npy``, so returned scores are exact cosines. ``pq_m`` must divide the
  encoder's dim and the corpus needs at least ``nlist`` and ``2**pq_bits`` chunks; both are
  checked before anything is encoded (``benchmarks/scale.py dense`` measures recall@10 vs flat).

Flat and HNSW indexes are opened memory-mapped (``IO_FLAG_MMAP_IFC``): answering workers share
the pages instead of each reading a copy. With faiss-gpu installed, ``faiss_gpu: auto`` puts
flat and IVF-PQ indexes on the GPU when the run's device is CUDA (``on`` requires it; HNSW has
no GPU version and stays on the CPU); the part on disk is always a CPU index.

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
import math
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, Sequence

import numpy as np
from pydantic import field_validator, model_validator

from ..io import atomic_write_json
from ..registry import register
from ..stage import ChunkShard, IndexBuilder, Params, RunContext, ShardedBuilder, Stage, timed
from ..types import QAState
from .common import Hits, make_passages, part_name, select_top_k, slug, top_k

__all__ = ["DenseRetriever", "build_faiss_index", "check_ann", "auto_nlist", "configure_search", "ann_search",
           "gpu_available", "FORMAT_VERSION", "ANN_KINDS"]

FORMAT_VERSION = 1
ANN_KINDS = ("flat", "hnsw", "ivfpq")
_EMPTY: Hits = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
_ENCODE_SLICE = 2048  # chunks encoded between progress reports within a shard
_ADD_BATCH = 65_536  # vectors copied to faiss at a time: bounded memory when vectors are a memmap
# Bytes per code GPU IVF-PQ supports (faiss GpuIndexIVFPQ), with 8-bit codes only.
_GPU_PQ_M = frozenset({1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96})


def auto_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors when ``nlist`` is not given: about 4·sqrt(n), and no more than
    n/39 (faiss wants 39 training points per list), at least 1."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def check_ann(kind: str, n: int, dim: int | None, *, nlist: int | None = None, pq_m: int = 32, pq_bits: int = 8) -> int | None:
    """Check that an index of ``kind`` can be built over ``n`` vectors of ``dim``; return IVF-PQ's nlist.

    ``dim`` None (the encoder is not loaded yet) checks only what depends on ``n``.
    Raises ``ValueError`` naming the param: ``pq_m`` not dividing ``dim``, ``nlist > n``, or fewer
    vectors than the ``2**pq_bits`` centroids each sub-quantiser trains.
    """
    if kind not in ANN_KINDS:
        raise ValueError(f"unknown faiss index kind {kind!r}; valid: {', '.join(ANN_KINDS)}")
    if kind != "ivfpq":
        return None
    if dim is not None and dim % pq_m:
        divisors = [d for d in range(1, min(dim, 96) + 1) if dim % d == 0]
        raise ValueError(f"pq_m must divide the vector dim {dim}, got pq_m={pq_m}; valid up to 96: {divisors}")
    nl = auto_nlist(n) if nlist is None else nlist
    if nl > n:
        raise ValueError(f"nlist must be <= the number of vectors ({n}), got nlist={nl}; lower it or leave it unset")
    if n < 2**pq_bits:
        raise ValueError(f"ivfpq with pq_bits={pq_bits} trains {2**pq_bits} centroids per sub-quantiser and needs at "
                         f"least that many vectors, got {n}; lower pq_bits or use index: flat or hnsw")
    return nl


def gpu_available() -> bool:
    """Whether the installed faiss has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _to_gpu(index: Any, device: int) -> tuple[Any, Any]:
    import faiss

    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, device, index), res


def build_faiss_index(vectors: np.ndarray, kind: str, *, hnsw_m: int = 32, ef_construction: int = 200,
                      nlist: int | None = None, pq_m: int = 32, pq_bits: int = 8, gpu: int | None = None,
                      seed: int = 1234) -> Any:
    """A faiss inner-product index over ``vectors`` (float32 ``(n, dim)``, may be a memmap).

    ``kind``: ``flat``, ``hnsw`` or ``ivfpq`` (see the module docstring); IVF-PQ trains on a
    seeded sample (64 points per list, at least 256 per PQ centroid). ``gpu``: a GPU number to train and add on
    (flat and ivfpq), the result is always a CPU index. Raises ``ValueError`` as :func:`check_ann`.
    """
    import faiss

    n, dim = vectors.shape
    nl = check_ann(kind, n, dim, nlist=nlist, pq_m=pq_m, pq_bits=pq_bits)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        index = faiss.index_factory(dim, f"IVF{nl},PQ{pq_m}x{pq_bits}", faiss.METRIC_INNER_PRODUCT)
        # check_ann guarantees enough points for a usable (if small) index; faiss' per-centroid
        # minimum only prints a warning, which a normal run must not show.
        index.cp.min_points_per_centroid = 1
        index.pq.cp.min_points_per_centroid = 1
        index.cp.seed = index.pq.cp.seed = seed
        # The factory turns on polysemous training, which made training ~7x slower (20k vectors:
        # 110 s instead of 17 s) for a Hamming pre-filter this search never uses.
        index.do_polysemous_training = False
    res = None
    if gpu is not None and kind != "hnsw":
        index, res = _to_gpu(index, gpu)
    if not index.is_trained:
        # 64 points per list (faiss asks for 39 to 256) and 256 per PQ centroid: at 1M vectors
        # k-means sees 256k points, not all of them.
        size = min(n, max(64 * (nl or 1), 256 * 2**pq_bits))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    for a in range(0, n, _ADD_BATCH):
        index.add(np.ascontiguousarray(vectors[a : a + _ADD_BATCH], dtype=np.float32))
    if res is not None:
        index = faiss.index_gpu_to_cpu(index)
    return index


def configure_search(index: Any, kind: str, *, ef_search: int = 128, nprobe: int = 16) -> None:
    """Set the query-time knobs of a CPU index: HNSW ``efSearch``, IVF ``nprobe`` (capped at nlist)."""
    import faiss

    if kind == "hnsw":
        index.hnsw.efSearch = ef_search
    elif kind == "ivfpq":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(nprobe, ivf.nlist)


def ann_search(index: Any, kind: str, vectors: np.ndarray, queries: np.ndarray, k: int, *, refine: int = 1) -> list[Hits]:
    """Top ``k`` chunk positions per query row of ``queries`` from ``index``, best first, ties by position.

    For ``ivfpq`` the ``refine * k`` nearest codes are re-scored exactly against ``vectors`` (the
    returned scores are then exact inner products); flat and HNSW scores already are.
    """
    kk = min(k * (refine if kind == "ivfpq" else 1), index.ntotal)
    sims, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), kk)
    out = []
    for q, s_row, i_row in zip(queries, sims, ids):
        ok = i_row >= 0  # faiss pads with -1 when it finds fewer than kk
        pos = i_row[ok].astype(np.int64)
        sc = s_row[ok].astype(np.float64)
        if kind == "ivfpq" and len(pos):
            # Sorted rows: a memmap reads them in file order.
            order = np.argsort(pos)
            pos = pos[order]
            sc = (np.asarray(vectors[pos], dtype=np.float32) @ np.asarray(q, dtype=np.float32)).astype(np.float64)
        out.append(select_top_k(pos, sc, k))
    return out


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
        """``encoder`` model name or path; ``index`` flat|hnsw|ivfpq (module docstring): HNSW
        ``hnsw_m``/``ef_construction`` (build) and ``ef_search`` (query); IVF-PQ ``nlist`` (None:
        about 4·sqrt(n)), ``pq_m`` bytes of ``pq_bits`` bits (build), ``nprobe`` and ``refine``
        (query); ``batch_size`` for encoding; ``faiss_threads``; ``faiss_gpu`` auto|on|off."""

        encoder: str = "all-minilm-l6-v2"
        top_k: int = 20
        index: Literal["flat", "hnsw", "ivfpq"] = "flat"
        hnsw_m: int = 32
        ef_construction: int = 200
        ef_search: int = 128
        nlist: int | None = None
        pq_m: int = 32
        pq_bits: int = 8
        nprobe: int = 32
        refine: int = 4
        batch_size: int = 32
        faiss_threads: int | None = 1
        faiss_gpu: Literal["auto", "on", "off"] = "auto"
        # Long-document options (see longread.encoders.longdoc): "split" embeds a chunk longer
        # than the encoder's limit as its fewest windows (the chunk scores as its best window) —
        # with ``chunker: whole`` and a long encoder, a document is one vector or a few.
        long_docs: Literal["truncate", "split"] = "truncate"
        # Rank documents instead of chunks: each document scores the max (or sum of its top
        # ``doc_top_m``) chunk scores and is returned as its best chunk.
        doc_aggregate: Literal["none", "max", "sum_top_m"] = "none"
        doc_top_m: int = 3

        @field_validator("top_k", "hnsw_m", "ef_construction", "ef_search", "batch_size", "doc_top_m", "pq_m",
                         "nprobe", "refine")
        @classmethod
        def _positive(cls, v: int, info: Any) -> int:
            return _check_positive(info.field_name, v)

        @field_validator("nlist")
        @classmethod
        def _nlist(cls, v: int | None) -> int | None:
            if v is not None and v <= 0:
                raise ValueError(f"nlist must be > 0 or None (automatic), got {v}")
            return v

        @field_validator("pq_bits")
        @classmethod
        def _pq_bits(cls, v: int) -> int:
            if not 1 <= v <= 16:
                raise ValueError(f"pq_bits must be in [1, 16], got {v}")
            return v

        @model_validator(mode="after")
        def _ivf(self) -> "DenseRetriever.Params":
            # What depends on the encoder's dim (pq_m divides it) or the corpus size (nlist <= n)
            # is checked when indexing starts, before any chunk is encoded.
            if self.nlist is not None and self.nprobe > self.nlist:
                raise ValueError(f"nprobe must be <= nlist, got nprobe={self.nprobe} nlist={self.nlist}")
            if self.pq_m > 256:
                raise ValueError(f"pq_m must be <= 256 bytes per vector, got {self.pq_m}")
            return self

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
        self._gpu_res: Any = None  # faiss GPU resources, alive as long as the GPU index

    @property
    def part(self) -> str:
        """Index part name: encoder slug plus a hash of everything that shapes the artifact."""
        p = self.params
        fields: dict[str, Any] = {"encoder": p.encoder, "index": p.index, "format": FORMAT_VERSION}
        if p.index == "hnsw":
            fields.update(hnsw_m=p.hnsw_m, ef_construction=p.ef_construction)
        if p.index == "ivfpq":
            fields.update(nlist=p.nlist, pq_m=p.pq_m, pq_bits=p.pq_bits)
        if p.long_docs != "truncate":
            fields.update(long_docs=p.long_docs)
        return part_name(f"dense-{slug(p.encoder)}", fields)

    def indexes(self) -> dict[str, IndexBuilder]:
        """One part: chunk vectors (encoded shard by shard, on Ray by an actor pool) and the faiss
        index built over them from disk."""
        return {self.part: ShardedBuilder(map=self._encode_shard, reduce=self._build, uses_model=True, check=self._check)}

    def _check(self, ctx: RunContext) -> None:
        """Before any shard is encoded: params that cannot fit this corpus fail now, not after
        hours of encoding (with split long docs there are at least as many vectors as chunks).
        The encoder's dim is checked by each shard's map once its encoder is loaded."""
        p = self.params
        check_ann(p.index, len(ctx.require_store()), None, nlist=p.nlist, pq_m=p.pq_m, pq_bits=p.pq_bits)
        self._gpu(ctx)

    def _encode_shard(self, ctx: RunContext, shard: ChunkShard, out: Path) -> None:
        p = self.params
        encoder = ctx.models.encoder(p.encoder)
        check_ann(p.index, len(ctx.require_store()), encoder.dim, nlist=p.nlist, pq_m=p.pq_m, pq_bits=p.pq_bits)
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
        gpu = self._gpu(ctx)
        if p.long_docs == "split":
            concat_npy([d / "owner.npy" for d in shards], out / "owner.npy")
        # A memory map of the part's own file: faiss trains on a sample and adds in batches.
        vectors = concat_npy([d / "vectors.npy" for d in shards], out / "vectors.npy")
        # One thread also makes HNSW construction reproducible (parallel inserts race).
        with omp_threads(p.faiss_threads):
            built = build_faiss_index(vectors, p.index, hnsw_m=p.hnsw_m, ef_construction=p.ef_construction,
                                      nlist=p.nlist, pq_m=p.pq_m, pq_bits=p.pq_bits, gpu=gpu)
        faiss.write_index(built, str(out / "index.faiss"))
        meta = {"format": FORMAT_VERSION, "encoder": p.encoder, "dim": int(vectors.shape[1]), "n": int(vectors.shape[0]),
                "index": p.index, "hnsw_m": p.hnsw_m, "ef_construction": p.ef_construction}
        if p.index == "ivfpq":
            meta.update(nlist=int(faiss.extract_index_ivf(built).nlist), pq_m=p.pq_m, pq_bits=p.pq_bits)
        atomic_write_json(out / "meta.json", meta)

    def _gpu(self, ctx: RunContext) -> int | None:
        """The GPU to put faiss on, or None (see ``faiss_gpu``); raise ``ValueError`` when ``on`` cannot be met."""
        p = self.params
        if p.faiss_gpu == "off" or p.index == "hnsw":
            return None
        device = ctx.device or "cpu"
        if p.faiss_gpu == "auto":
            on_cuda = device.startswith("cuda")
            gpu_pq = p.index != "ivfpq" or (p.pq_bits == 8 and p.pq_m in _GPU_PQ_M)
            if not (on_cuda and gpu_pq and gpu_available()):
                return None
        elif not gpu_available():
            import faiss

            raise ValueError(f"faiss_gpu: on needs faiss with GPU support and a visible GPU; faiss {faiss.__version__} has "
                             f"{'no GPU support' if not hasattr(faiss, 'StandardGpuResources') else 'no GPU'}")
        return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0

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
        if meta.get("index", "flat") != self.params.index:
            raise ValueError(f"{path}: holds a {meta.get('index')!r} index, params ask for {self.params.index!r}; rebuild the index")
        vectors = np.load(path / "vectors.npy", allow_pickle=False, mmap_mode="r")
        # Flat codes memory-mapped (flat, HNSW): workers share the page cache instead of copies.
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if self.params.index != "ivfpq" else 0
        index = faiss.read_index(str(path / "index.faiss"), flags)
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
        configure_search(index, self.params.index, ef_search=self.params.ef_search, nprobe=self.params.nprobe)
        gpu = self._gpu(ctx)
        if gpu is not None:
            index, self._gpu_res = _to_gpu(index, gpu)
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
            with omp_threads(self.params.faiss_threads):
                hits = ann_search(self._index, self.params.index, self._vectors, qv[free], k, refine=self.params.refine)
            for j, h in zip(free, hits):
                out[live[j]] = h
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
