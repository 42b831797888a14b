"""BM25 engines side by side: longread's bm25s backend vs the rank_bm25 reference (BM25Okapi).

Synthetic corpus: ``--docs`` documents of about ``--doc-len`` tokens drawn from a Zipf
distribution over ``--vocab`` terms; queries of 2-5 terms drawn the same way. Both engines
index the same token lists (tokenisation is shared and timed once, separately) and answer
the same queries with score + top-10. Also shown for context: bm25s' own ``index()``
(Lucene idf, not Okapi, so its scores differ). Prints index time, queries/s and ratios, and
checks that the two Okapi engines return the same top-10.

    python benchmarks/bm25.py            # 100k docs (a few minutes on 2 cores)
    python benchmarks/bm25.py --quick    # 10k docs
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from longread.retrievers.bm25 import BM25Tokenizer, OkapiIndex, RankBM25Index
from longread.retrievers.common import top_k


def zipf_ids(rng: np.random.Generator, n: int, vocab: int, a: float) -> np.ndarray:
    """``n`` term ids with P(rank r) ~ r^-a over ``vocab`` terms."""
    p = 1.0 / np.arange(1, vocab + 1) ** a
    return rng.choice(vocab, size=n, p=p / p.sum())


def make_corpus(n_docs: int, vocab: int, doc_len: int, a: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lens = np.maximum(1, rng.poisson(doc_len, size=n_docs))
    ids = zipf_ids(rng, int(lens.sum()), vocab, a)
    words = np.array([f"w{i}" for i in range(vocab)])
    out, pos = [], 0
    for n in lens.tolist():
        out.append(" ".join(words[ids[pos : pos + n]].tolist()))
        pos += n
    return out


def make_queries(n: int, vocab: int, a: float, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed + 1)
    # Skip the ~50 most frequent terms, as real queries rarely consist of the commonest words.
    return [[f"w{min(vocab - 1, 50 + int(i))}" for i in zipf_ids(rng, int(rng.integers(2, 6)), vocab, a)] for _ in range(n)]


def time_queries(fn, queries) -> tuple[float, list]:
    t0 = time.perf_counter()
    res = [fn(q) for q in queries]
    return len(queries) / (time.perf_counter() - t0), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--doc-len", type=int, default=100)
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the vocabulary")
    ap.add_argument("--queries", type=int, default=500, help="queries for the bm25s engines")
    ap.add_argument("--ref-queries", type=int, default=20, help="queries for rank_bm25 (slow: ~1 s each at 100k docs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10k docs, fewer queries")
    ap.add_argument("--no-native", action="store_true", help="skip bm25s' own index()/retrieve() column")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.queries, args.ref_queries = 10_000, 200, 20

    t0 = time.perf_counter()
    texts = make_corpus(args.docs, args.vocab, args.doc_len, args.zipf, args.seed)
    gen_s = time.perf_counter() - t0
    tok = BM25Tokenizer(stemmer=None, stopwords=None)
    t0 = time.perf_counter()
    corpus = tok.many(texts)
    tok_s = time.perf_counter() - t0
    queries = make_queries(args.queries, args.vocab, args.zipf, args.seed)
    n_tok = sum(map(len, corpus))
    print(f"corpus: {args.docs} docs, {n_tok} tokens, vocab {args.vocab} (Zipf a={args.zipf}); "
          f"generated in {gen_s:.1f}s, tokenised (shared by all engines) in {tok_s:.1f}s")

    import bm25s  # noqa: F401  (imports outside the timings)
    import rank_bm25  # noqa: F401

    t0 = time.perf_counter()
    fast = OkapiIndex.build(corpus, k1=1.5, b=0.75)
    fast_idx = time.perf_counter() - t0
    fast_qps, fast_res = time_queries(lambda q: top_k(fast.scores(q), 10), queries)

    t0 = time.perf_counter()
    ref = RankBM25Index.build(corpus, k1=1.5, b=0.75)
    ref_idx = time.perf_counter() - t0
    rq = queries[: args.ref_queries]
    ref_qps, ref_res = time_queries(lambda q: top_k(ref.scores(q), 10), rq)

    same = sum(a[0].tolist() == b[0].tolist() for a, b in zip(fast_res, ref_res))
    maxdiff = max(float(np.abs(a[1] - b[1]).max(initial=0)) for a, b in zip(fast_res, ref_res))

    rows = [("longread bm25s backend (Okapi)", fast_idx, fast_qps, len(queries)),
            ("rank_bm25 BM25Okapi (reference)", ref_idx, ref_qps, len(rq))]
    if not args.no_native:
        t0 = time.perf_counter()
        native = bm25s.BM25(method="lucene")
        native.index(corpus, show_progress=False)
        nat_idx = time.perf_counter() - t0
        nat_qps, _ = time_queries(lambda q: native.retrieve([q], k=10, show_progress=False), queries)
        rows.append(("bm25s native index()/retrieve() (Lucene)", nat_idx, nat_qps, len(queries)))

    print(f"\n{'engine':44s} {'index s':>9s} {'queries/s':>11s} {'#q':>5s}")
    for name, idx, qps, nq in rows:
        print(f"{name:44s} {idx:9.2f} {qps:11.1f} {nq:5d}")
    print(f"\nbm25s backend vs rank_bm25: index time ratio (rank_bm25 / bm25s) {ref_idx / fast_idx:.2f}, "
          f"queries/s ratio (bm25s / rank_bm25) {fast_qps / ref_qps:.0f}")
    print(f"parity on the {len(rq)} shared queries: identical top-10 for {same}/{len(rq)}, max score diff {maxdiff:.2e}")


if __name__ == "__main__":
    main()
