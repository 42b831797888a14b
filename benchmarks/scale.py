"""Scale: BM25 and dense ANN at 100k, 1M and 10M chunks, longread side by side with bm25s and rank_bm25.

Corpus: 100-word windows (stride 50) over the real text in ``--data`` (SQuAD, HotpotQA and
PubMedQA paragraphs, Paul Graham essays; not bAbI, not the NQ questions), recombined (first half
of one window + second half of another, seeded) once the windows run out, streamed so that no
size needs the corpus in memory. Questions: NQ-open dev (``--data``/nq_open).

``bm25`` rows, each step in a fresh process (peak RSS is per step):

- longread index: ``BM25Retriever.build_part`` over the streamed texts in one process (the same
  bytes ``Pipeline.index`` writes shard by shard, see ``benchmarks/index_scale.py`` for that
  path locally and on Ray): seconds, peak RSS, disk;
- longread engine / bm25s engine: the same part opened memory-mapped, queried in batches with
  ``search_many``, and by bm25s' own ``retrieve`` (``bm25s.BM25.load`` of the same files);
- Pipeline.answer: ``retriever.bm25`` alone through the public API (index with the ``whole``
  chunker into the sharded, memory-mapped store, then answer); up to ``--pipeline-max``
  (default 1M: at 10M the store adds ~6 GB of disk and the index step hours);
- bm25s native: ``bm25s.BM25().index()`` (Lucene idf) + ``retrieve`` on the same tokens
  (up to ``--native-max``), 1 thread and all cores; index seconds include tokenising, as
  longread's do (queries are tokenised before the clock for bm25s and the engines; inside it
  for Pipeline.answer);
- rank_bm25: ``BM25Okapi`` on the same tokens (up to ``--rank-max``, ``--rank-queries`` queries),
  and top-10 parity of longread against it.

``dense`` rows: synthetic unit vectors clustered on a 24-dim latent space (or ``--vectors FILE.npy``), exact top-10 by
numpy as ground truth, then per index type (flat, hnsw, ivfpq; longread's own build and search
functions and defaults): build seconds and RSS, then in a fresh process opened as an answering
worker opens it: RSS, queries/s, recall@10 vs flat. ``encode``: MiniLM chunks/s on a slice of
real windows (time per chunk for the dense index).

    python benchmarks/scale.py bm25 --sizes 100k 1M 10M          # the issue's table (hours at 10M)
    python benchmarks/scale.py dense --dense-sizes 100k 1M
    python benchmarks/scale.py encode
    python benchmarks/scale.py all --sizes 2000 --dense-sizes 5000 --queries 50   # correctness, tiny

Disk: the work dir (``--workdir``, default the system temp dir) holds one size at a time; 10M
BM25 chunks need ~7 GB there (12 bytes a posting, ~60 postings a chunk). HNSW at 1M vectors is the
slowest build (``--kinds flat ivfpq`` skips it; ``--dense-params '{"ef_construction": 100}'`` halves it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
WINDOW, STRIDE = 100, 50
LATENT = 24  # intrinsic dimension of the synthetic dense vectors


# --- inputs ------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``100k`` / ``1M`` / ``2500`` -> int; raise ``argparse.ArgumentTypeError`` otherwise."""
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 2000, 100k or 1M, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    return n


def harvest_text(data: Path) -> list[str]:
    """Every distinct paragraph-like string (>= 200 chars) of the JSON files and every essay."""
    if not data.is_dir():
        raise SystemExit(f"error: --data {str(data)!r} is not a directory (expected the shared QA data)")
    seen: set[str] = set()
    out: list[str] = []

    def walk(o: Any) -> None:
        if isinstance(o, str):
            if len(o) >= 200 and o not in seen:
                seen.add(o)
                out.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for p in sorted(data.rglob("*")):
        # bAbI is simulator output, nq_open holds the questions: neither is corpus text.
        if not p.is_file() or {"nq_open", "babi"} & set(p.relative_to(data).parts):
            continue
        if p.suffix == ".json":
            walk(json.loads(p.read_text(encoding="utf-8")))
        elif p.suffix == ".txt" and not p.name.upper().startswith(("LICENSE", "README")):
            walk(p.read_text(encoding="utf-8", errors="replace"))
    if not out:
        raise SystemExit(f"error: no text found under {data}")
    return out


class Windows:
    """The synthetic corpus: window ``i`` of the real text, then seeded half-window recombinations."""

    def __init__(self, data: Path, seed: int = 0) -> None:
        words = " ".join(harvest_text(data)).split()
        starts = range(0, max(1, len(words) - WINDOW + 1), STRIDE)
        half = WINDOW // 2
        self.first = [" ".join(words[s : s + half]) for s in starts]
        self.second = [" ".join(words[s + half : s + WINDOW]) for s in starts]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.first)

    def texts(self, n: int, block: int = 100_000) -> Iterator[str]:
        """The first ``n`` chunk texts, deterministic for the seed, generated a block at a time."""
        w = len(self.first)
        for b0 in range(0, n, block):
            rng = np.random.default_rng([self.seed, b0])
            b1 = min(n, b0 + block)
            a, c = rng.integers(0, w, size=(2, b1 - b0)).tolist()
            for i, x, y in zip(range(b0, b1), a, c):
                yield f"{self.first[i]} {self.second[i]}" if i < w else f"{self.first[x]} {self.second[y]}"


def nq_questions(data: Path, n: int) -> list[str]:
    """The first ``n`` NQ-open dev questions (repeated if more are asked for)."""
    path = data / "nq_open" / "NQ-open.dev.jsonl"
    qs = [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [qs[i % len(qs)] for i in range(n)]


def nq_answers(data: Path, n: int) -> list[list[str]]:
    path = data / "nq_open" / "NQ-open.dev.jsonl"
    rows = [json.loads(line)["answer"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [rows[i % len(rows)] for i in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# --- steps (each runs in its own process) ------------------------------------------------------

BM25_PARAMS = {"top_k": 10}


def step_bm25_build(a: dict) -> dict:
    from longread.retrievers.bm25 import BM25Retriever

    corpus = Windows(Path(a["data"]), a["seed"])
    part = Path(a["work"]) / "bm25"
    part.mkdir(parents=True)
    stage = BM25Retriever(BM25_PARAMS)
    sec, _ = timed(lambda: stage.build_part(corpus.texts(a["n"]), part, n=a["n"], show_progress=a["n"] > 50_000))
    meta = json.loads((part / "params.index.json").read_text())
    return {"seconds": sec, "rss_mb": peak_rss_mb(), "disk_mb": disk_mb(part), "n": meta["num_docs"],
            "nnz": int(np.load(part / "data.csc.index.npy", mmap_mode="r").shape[0]), "base_windows": len(corpus)}


def _query_tokens(a: dict) -> list[list[str]]:
    from longread.retrievers.bm25 import BM25Tokenizer

    tok = BM25Tokenizer(BM25_PARAMS.get("stemmer", "english"), BM25_PARAMS.get("stopwords", "en"))
    return [tok(q) for q in nq_questions(Path(a["data"]), a["queries"])]


def step_bm25_engines(a: dict) -> dict:
    import bm25s

    from longread.retrievers.bm25 import open_index

    part = Path(a["work"]) / "bm25"
    qt = _query_tokens(a)
    index, _ = open_index(part)
    batch = a["batch"]

    def ours() -> list:
        out = []
        for i in range(0, len(qt), batch):
            out.extend(index.search_many(qt[i : i + batch], 10))
        return out

    ours()  # warm the page cache: every engine then reads the same resident matrix
    sec, hits = timed(ours)
    (Path(a["work"]) / "longread_top10.json").write_text(json.dumps([h[0].tolist() for h in hits]))
    engine = bm25s.BM25.load(str(part), mmap=True)
    qb = qt[: a.get("bm25s_queries") or len(qt)]  # bm25s' retrieve is slow at 10M: a subset keeps the step short
    sec_b, _ = timed(lambda: engine.retrieve(qb, k=10, n_threads=0, show_progress=False))
    return {"longread_qps": len(qt) / sec, "bm25s_engine_qps": len(qb) / sec_b, "bm25s_queries": len(qb),
            "rss_mb": peak_rss_mb()}


def step_bm25_pipeline(a: dict) -> dict:
    from longread.pipelines.pipeline import Pipeline
    from longread.types import Document, Question

    corpus = Windows(Path(a["data"]), a["seed"])
    cfg = {"name": "scale-bm25", "chunker": {"kind": "whole"},
           "stages": [{"key": "retriever.bm25", "params": BM25_PARAMS, "resources": {"batch_size": a["batch"]}}]}
    pipe = Pipeline.from_config(cfg)
    index_dir = Path(a["work"]) / "pipeline-index"
    docs = (Document(id=f"c{i}", text=t) for i, t in enumerate(corpus.texts(a["n"])))
    sec_index, _ = timed(lambda: pipe.index(docs, index_dir, show_progress=a["n"] > 50_000))
    data = Path(a["data"])
    qs = [Question(id=f"q{i}", question=q, answers=ans)
          for i, (q, ans) in enumerate(zip(nq_questions(data, a["queries"]), nq_answers(data, a["queries"])))]
    pipe.answer(qs[:8], index_dir=index_dir)  # setup: opens the store and the part
    sec, states = timed(lambda: pipe.answer(qs, index_dir=index_dir))
    errors = [s.trace["error"] for s in states if "error" in s.trace]
    ours = json.loads((Path(a["work"]) / "longread_top10.json").read_text())
    # One chunk per document ("whole"), document c{i} is chunk i.
    same = sum([int(p.chunk.doc_id[1:]) for p in s.passages] == o for s, o in zip(states, ours))
    return {"index_seconds": sec_index, "answer_qps": len(qs) / sec, "rss_mb": peak_rss_mb(),
            "disk_mb": disk_mb(index_dir), "same_as_engine": same, "errors": errors[:3]}


def _corpus_tokens(a: dict, corpus: Windows) -> list[list[str]]:
    from longread.retrievers.bm25 import BM25Tokenizer

    tok = BM25Tokenizer(BM25_PARAMS.get("stemmer", "english"), BM25_PARAMS.get("stopwords", "en"))
    return [tok(t) for t in corpus.texts(a["n"])]


def step_bm25s_native(a: dict) -> dict:
    import bm25s

    windows = Windows(Path(a["data"]), a["seed"])
    sec_tok, corpus = timed(lambda: _corpus_tokens(a, windows))
    qt = _query_tokens(a)
    rss_tokens = peak_rss_mb()
    engine = bm25s.BM25()
    # Tokenising counts as indexing for every engine (longread's build includes it).
    sec_index, _ = timed(lambda: engine.index(corpus, show_progress=False))
    sec_index += sec_tok
    del corpus
    sec1, _ = timed(lambda: engine.retrieve(qt, k=10, n_threads=0, show_progress=False))
    threads = os.cpu_count() or 1
    sec_n, _ = timed(lambda: engine.retrieve(qt, k=10, n_threads=threads, show_progress=False))
    return {"index_seconds": sec_index, "qps_1": len(qt) / sec1, "qps_n": len(qt) / sec_n, "threads": threads,
            "rss_mb": peak_rss_mb(), "rss_tokens_mb": rss_tokens}


def step_rank_bm25(a: dict) -> dict:
    from longread.retrievers.bm25 import RankBM25Index
    from longread.retrievers.common import top_k

    windows = Windows(Path(a["data"]), a["seed"])
    sec_tok, corpus = timed(lambda: _corpus_tokens(a, windows))
    qt = _query_tokens(a)[: a["rank_queries"]]
    sec_index, ref = timed(lambda: RankBM25Index.build(corpus, k1=1.5, b=0.75))
    sec_index += sec_tok
    del corpus

    def run() -> list:
        return [top_k(ref.scores(q), 10, ref.matched(q))[0].tolist() if q else [] for q in qt]

    sec, hits = timed(run)
    ours = json.loads((Path(a["work"]) / "longread_top10.json").read_text())
    same = sum(h == o for h, o in zip(hits, ours))
    return {"index_seconds": sec_index, "qps": len(qt) / sec, "rss_mb": peak_rss_mb(), "same_top10": same,
            "compared": len(qt)}


def step_dense_data(a: dict) -> dict:
    """Vectors (memmap), queries and exact top-10 ground truth, in the work dir."""
    work = Path(a["work"])
    n, dim = a["n"], a["dim"]
    vec_path = work / "vectors.npy"
    rng = np.random.default_rng(a["seed"])
    if a.get("vectors"):
        src = np.load(a["vectors"], mmap_mode="r")
        if src.shape[0] < n + a["queries"]:
            raise SystemExit(f"error: --vectors has {src.shape[0]} rows, need {n + a['queries']} (size + queries)")
        vectors = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(n, src.shape[1]))
        vectors[:] = src[:n]
        queries = np.ascontiguousarray(src[n : n + a["queries"]], dtype=np.float32)
    else:
        # Embedding-like: clusters on a low-dimensional (24) latent space, mapped into ``dim``.
        # Isotropic noise in all 384 dims would make every point nearly equidistant, which no
        # real encoder's output is, and would measure the curse of dimensionality, not the index.
        centres = rng.standard_normal((max(8, n // 500), LATENT)).astype(np.float32)
        proj = rng.standard_normal((LATENT, dim)).astype(np.float32)

        def sample(m: int) -> np.ndarray:
            z = centres[rng.integers(0, len(centres), m)] + 0.7 * rng.standard_normal((m, LATENT)).astype(np.float32)
            x = z @ proj + 0.3 * rng.standard_normal((m, dim)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        vectors = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(n, dim))
        for b0 in range(0, n, 100_000):
            vectors[b0 : b0 + 100_000] = sample(min(100_000, n - b0))
        queries = sample(a["queries"])
    vectors.flush()
    np.save(work / "queries.npy", queries)
    # Exact top-10 by blocks of rows (bounded memory), merged.
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 10), dtype=np.int64)
    for b0 in range(0, n, 200_000):
        sims = queries @ np.asarray(vectors[b0 : b0 + 200_000]).T
        s = np.concatenate([best_s, sims], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(b0, b0 + sims.shape[1]), sims.shape)], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :10]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    np.save(work / "truth.npy", best_i)
    return {"rss_mb": peak_rss_mb()}


def _dense_params(a: dict) -> Any:
    from longread.retrievers.dense import DenseRetriever

    return DenseRetriever.Params(index=a["kind"], **a.get("dense_params", {}))


def step_dense_build(a: dict) -> dict:
    import faiss

    from longread.retrievers.dense import build_faiss_index, omp_threads

    work = Path(a["work"])
    p = _dense_params(a)
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    with omp_threads(a["build_threads"]):
        sec, index = timed(lambda: build_faiss_index(vectors, p.index, hnsw_m=p.hnsw_m, ef_construction=p.ef_construction,
                                                     nlist=p.nlist, pq_m=p.pq_m, pq_bits=p.pq_bits))
    path = work / f"{p.index}.faiss"
    faiss.write_index(index, str(path))
    extra = {"nlist": int(faiss.extract_index_ivf(index).nlist)} if p.index == "ivfpq" else {}
    return {"seconds": sec, "rss_mb": peak_rss_mb(), "disk_mb": path.stat().st_size / 2**20, **extra}


def step_dense_query(a: dict) -> dict:
    import faiss

    from longread.retrievers.dense import ann_search, configure_search, omp_threads

    work = Path(a["work"])
    p = _dense_params(a)
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    # As DenseRetriever.setup opens it: flat codes memory-mapped for flat and HNSW.
    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if p.index != "ivfpq" else 0
    index = faiss.read_index(str(work / f"{p.index}.faiss"), flags)
    configure_search(index, p.index, ef_search=p.ef_search, nprobe=p.nprobe)
    batch = a["batch"]

    def run() -> list:
        out = []
        with omp_threads(p.faiss_threads):
            for i in range(0, len(queries), batch):
                out.extend(ann_search(index, p.index, vectors, queries[i : i + batch], 10, refine=p.refine))
        return out

    run()  # warm the page cache
    sec, hits = timed(run)
    recall = float(np.mean([len(set(h[0].tolist()) & set(t.tolist())) / 10 for h, t in zip(hits, truth)]))
    return {"qps": len(queries) / sec, "recall10": recall, "rss_mb": peak_rss_mb()}


def step_encode(a: dict) -> dict:
    from longread.models.hub import ModelHub

    texts = list(Windows(Path(a["data"]), a["seed"]).texts(a["n"]))
    enc = ModelHub().encoder(a["encoder"])
    enc.encode(texts[:16], kind="document", batch_size=32)  # load and warm
    sec, vecs = timed(lambda: enc.encode(texts, kind="document", batch_size=32))
    return {"chunks_per_s": len(texts) / sec, "dim": int(vecs.shape[1]), "rss_mb": peak_rss_mb()}


STEPS: dict[str, Callable[[dict], dict]] = {
    "bm25-build": step_bm25_build, "bm25-engines": step_bm25_engines, "bm25-pipeline": step_bm25_pipeline,
    "bm25s-native": step_bm25s_native, "rank-bm25": step_rank_bm25, "dense-data": step_dense_data,
    "dense-build": step_dense_build, "dense-query": step_dense_query, "encode": step_encode,
}


def run_step(name: str, args: dict) -> dict:
    """Run one step in a fresh interpreter (its own peak RSS) and return its JSON result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([sys.executable, __file__, "_step", name, json.dumps(args)], env=env,
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: step {name} (n={args.get('n')}) failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- tables ------------------------------------------------------------------------------------


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def bench_bm25(ns: argparse.Namespace, work: Path) -> list[dict]:
    rows = []
    for n in ns.sizes:
        w = work / f"bm25-{n}"
        w.mkdir(parents=True)
        base = {"data": str(ns.data), "seed": ns.seed, "n": n, "work": str(w), "queries": ns.queries, "batch": ns.batch,
                "rank_queries": ns.rank_queries, "bm25s_queries": ns.bm25s_queries}
        print(f"bm25 {n:,} chunks ...", file=sys.stderr, flush=True)
        row: dict[str, Any] = {"n": n, "build": run_step("bm25-build", base), "engines": run_step("bm25-engines", base)}
        row["pipeline"] = run_step("bm25-pipeline", base) if n <= ns.pipeline_max else None
        row["native"] = run_step("bm25s-native", base) if n <= ns.native_max else None
        row["rank"] = run_step("rank-bm25", base) if n <= ns.rank_max else None
        rows.append(row)
        if not ns.keep:
            shutil.rmtree(w)
    print(f"\nBM25, {ns.queries} NQ-open questions, top-10, batches of {ns.batch}; RSS = peak of the step's own process")
    head = (f"{'chunks':>10} {'lr idx s':>9} {'lr RSS MB':>9} {'disk MB':>8} {'answer q/s':>10} {'lr eng q/s':>10} "
            f"{'bm25s eng':>9} {'native idx s':>12} {'nat RSS':>8} {'nat q/s 1t':>10} {'nat q/s Nt':>10} "
            f"{'rank idx s':>10} {'rank RSS':>8} {'rank q/s':>8} | {'answer/nat1':>11} {'eng/nat1':>8} {'nat/lr idx':>10} "
            f"{'rank/lr idx':>11} {'parity':>8}")
    print(head)
    for r in rows:
        b, e, p, nat, rk = r["build"], r["engines"], r["pipeline"] or {}, r["native"] or {}, r["rank"] or {}
        parity = f"{rk['same_top10']}/{rk['compared']}" if rk else "-"
        print(f"{r['n']:>10,} {fmt(b['seconds']):>9} {fmt(b['rss_mb'], '.0f'):>9} {fmt(b['disk_mb'], '.0f'):>8} "
              f"{fmt(p.get('answer_qps')):>10} {fmt(e['longread_qps']):>10} {fmt(e['bm25s_engine_qps']):>9} "
              f"{fmt(nat.get('index_seconds')):>12} {fmt(nat.get('rss_mb'), '.0f'):>8} {fmt(nat.get('qps_1')):>10} "
              f"{fmt(nat.get('qps_n')):>10} {fmt(rk.get('index_seconds')):>10} {fmt(rk.get('rss_mb'), '.0f'):>8} "
              f"{fmt(rk.get('qps'), '.2f'):>8} | {ratio(p.get('answer_qps'), nat.get('qps_1')):>11} "
              f"{ratio(e['longread_qps'], nat.get('qps_1')):>8} {ratio(nat.get('index_seconds'), b['seconds']):>10} "
              f"{ratio(rk.get('index_seconds'), b['seconds']):>11} {parity:>8}")
    for r in rows:
        p = r["pipeline"]
        if p is not None:
            print(f"  {r['n']:,}: Pipeline.index {p['index_seconds']:.1f}s (store + part, peak RSS {p['rss_mb']:.0f} MB, "
                  f"disk {p['disk_mb']:.0f} MB); Pipeline.answer top-10 equal to the engine's for "
                  f"{p['same_as_engine']}/{ns.queries} questions{'; errors: ' + str(p['errors']) if p['errors'] else ''}")
        else:
            print(f"  {r['n']:,}: no Pipeline.answer row: above --pipeline-max")
        print(f"  {r['n']:,}: {r['build']['nnz']:,} postings over {r['build']['base_windows']:,} base windows")
    return rows


def bench_dense(ns: argparse.Namespace, work: Path) -> list[dict]:
    rows = []
    for n in ns.dense_sizes:
        w = work / f"dense-{n}"
        w.mkdir(parents=True)
        base = {"n": n, "dim": ns.dim, "seed": ns.seed, "work": str(w), "queries": ns.dense_queries, "vectors": ns.vectors,
                "batch": ns.batch, "build_threads": ns.build_threads}
        print(f"dense {n:,} vectors ...", file=sys.stderr, flush=True)
        data = run_step("dense-data", base)
        for kind in ns.kinds:
            a = {**base, "kind": kind, "dense_params": ns.dense_params}
            rows.append({"n": n, "kind": kind, "data": data, "build": run_step("dense-build", a), "query": run_step("dense-query", a)})
        if not ns.keep:
            shutil.rmtree(w)
    print(f"\nDense ANN, dim {ns.dim}, {ns.dense_queries} queries, top-10, batches of {ns.batch}; build on "
          f"{ns.build_threads} thread(s), search on the stage default (faiss_threads=1); params {ns.dense_params or 'defaults'}")
    print(f"{'vectors':>10} {'index':>6} {'build s':>8} {'build RSS':>9} {'disk MB':>8} {'query RSS':>9} {'q/s':>9} "
          f"{'recall@10':>9} | {'q/s vs flat':>11} {'build vs flat':>13}")
    flat = {r["n"]: r for r in rows if r["kind"] == "flat"}
    for r in rows:
        f = flat.get(r["n"])
        extra = f"  (nlist {r['build']['nlist']})" if "nlist" in r["build"] else ""
        print(f"{r['n']:>10,} {r['kind']:>6} {fmt(r['build']['seconds']):>8} {fmt(r['build']['rss_mb'], '.0f'):>9} "
              f"{fmt(r['build']['disk_mb'], '.0f'):>8} {fmt(r['query']['rss_mb'], '.0f'):>9} {fmt(r['query']['qps']):>9} "
              f"{fmt(r['query']['recall10'], '.3f'):>9} | {ratio(r['query']['qps'], f and f['query']['qps']):>11} "
              f"{ratio(r['build']['seconds'], f and f['build']['seconds']):>13}{extra}")
    return rows


def bench_encode(ns: argparse.Namespace, work: Path) -> dict:
    r = run_step("encode", {"data": str(ns.data), "seed": ns.seed, "n": ns.encode_chunks, "encoder": ns.encoder})
    print(f"\nencode: {ns.encoder} {r['chunks_per_s']:.1f} chunks/s of 100 words (dim {r['dim']}, peak RSS "
          f"{r['rss_mb']:.0f} MB): {1e5 / r['chunks_per_s'] / 3600:.1f} h per 100k chunks, "
          f"{1e6 / r['chunks_per_s'] / 3600:.1f} h per 1M on this machine")
    return r


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_step"]:
        print(json.dumps(STEPS[argv[1]](json.loads(argv[2]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["bm25", "dense", "encode", "all"])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared QA data (default: ../shared/data)")
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[100_000, 1_000_000, 10_000_000], help="BM25 chunk counts")
    ap.add_argument("--dense-sizes", type=parse_size, nargs="+", default=[100_000, 1_000_000], help="dense vector counts")
    ap.add_argument("--queries", type=int, default=2000, help="NQ-open questions for BM25")
    ap.add_argument("--batch", type=int, default=64, help="questions per batch (the stage's resources.batch_size)")
    ap.add_argument("--pipeline-max", type=parse_size, default=1_000_000, help="largest size run through Pipeline.answer")
    ap.add_argument("--native-max", type=parse_size, default=1_000_000, help="largest size for bm25s' own index()")
    ap.add_argument("--rank-max", type=parse_size, default=100_000, help="largest size for rank_bm25")
    ap.add_argument("--rank-queries", type=int, default=20, help="queries for rank_bm25 (about 1 s each at 100k)")
    ap.add_argument("--bm25s-queries", type=int, default=None,
                    help="queries for bm25s' own retrieve on longread's part (default: all; at 10M it runs for an hour)")
    ap.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivfpq"], choices=["flat", "hnsw", "ivfpq"])
    ap.add_argument("--dim", type=int, default=384, help="synthetic vector dim (MiniLM's)")
    ap.add_argument("--dense-queries", type=int, default=1000)
    ap.add_argument("--vectors", type=Path, default=None, help="cached embeddings .npy (size + queries rows) instead of synthetic")
    ap.add_argument("--dense-params", type=json.loads, default={}, help='retriever.dense params as JSON, e.g. \'{"nprobe": 64}\'')
    ap.add_argument("--build-threads", type=int, default=os.cpu_count() or 1, help="faiss threads while building")
    ap.add_argument("--encoder", default="all-minilm-l6-v2")
    ap.add_argument("--encode-chunks", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where indexes are built (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the built indexes")
    ap.add_argument("--out", type=Path, default=None, help="also write the raw results as JSON")
    ns = ap.parse_args(argv)
    from longread.retrievers.dense import DenseRetriever

    from pydantic import ValidationError

    try:
        DenseRetriever.Params(**ns.dense_params)
    except ValidationError as e:
        ap.error("--dense-params: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))
    if ns.workdir is not None:
        ns.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=ns.workdir, prefix="longread-scale-"))
    try:
        results: dict[str, Any] = {"cpus": os.cpu_count()}
        if ns.what in ("bm25", "all"):
            results["bm25"] = bench_bm25(ns, work)
        if ns.what in ("dense", "all"):
            results["dense"] = bench_dense(ns, work)
        if ns.what in ("encode", "all"):
            results["encode"] = bench_encode(ns, work)
        if ns.out:
            ns.out.write_text(json.dumps(results, indent=1))
    finally:
        if ns.keep:
            print(f"indexes kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
