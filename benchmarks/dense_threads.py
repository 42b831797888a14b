"""faiss search latency by thread setting: why ``retriever.dense`` defaults to ``faiss_threads=1``.

Random unit vectors (``--n`` x ``--dim``) in ``IndexFlatIP`` (and HNSW with ``--hnsw``);
measures single-query latency (one query per search call, as a pipeline answering one
question does) and batched throughput, for faiss' default OpenMP threads, one thread,
and the default threads with ``OMP_WAIT_POLICY=PASSIVE``. Each setting runs in its own
process because OpenMP reads its environment once, at start-up.

    python benchmarks/dense_threads.py [--n 20000] [--dim 384] [--hnsw]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import faiss
    import numpy as np

    if args.threads > 0:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    if args.kind == "hnsw":
        index = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 100
        index.add(x)
        index.hnsw.efSearch = 128
    else:
        index = faiss.IndexFlatIP(args.dim)
        index.add(x)
    for i in range(5):  # warm-up
        index.search(q[i : i + 1], 10)
    lat = []
    for i in range(args.queries):
        t0 = time.perf_counter()
        index.search(q[i : i + 1], 10)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in range(0, args.queries, 32):
        index.search(q[s : s + 32], 10)
    batch_qps = args.queries / (time.perf_counter() - t0)
    lat_ms = sorted(v * 1e3 for v in lat)
    print(json.dumps({
        "threads": faiss.omp_get_max_threads(), "median_ms": lat_ms[len(lat_ms) // 2],
        "p90_ms": lat_ms[int(len(lat_ms) * 0.9)], "batch32_qps": batch_qps,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--hnsw", action="store_true", help="also measure IndexHNSWFlat")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="flat", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    settings = [("faiss default threads", 0, {}), ("1 thread (faiss_threads=1)", 1, {}),
                ("default threads, OMP_WAIT_POLICY=PASSIVE", 0, {"OMP_WAIT_POLICY": "PASSIVE"})]
    print(f"{args.n} x {args.dim} float32 vectors, {args.queries} queries, top-10, {os.cpu_count()} CPUs")
    print(f"{'index':6s} {'setting':42s} {'threads':>7s} {'median ms':>10s} {'p90 ms':>8s} {'batch32 q/s':>12s}")
    for kind in ["flat"] + (["hnsw"] if args.hnsw else []):
        base = None
        for name, threads, env in settings:
            cmd = [sys.executable, __file__, "--worker", "--kind", kind, "--threads", str(threads),
                   "--n", str(args.n), "--dim", str(args.dim), "--queries", str(args.queries)]
            out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or r["median_ms"]
            print(f"{kind:6s} {name:42s} {r['threads']:7d} {r['median_ms']:10.3f} {r['p90_ms']:8.3f} {r['batch32_qps']:12.0f}"
                  f"   ({base / r['median_ms']:.2f}x vs default)")


if __name__ == "__main__":
    main()
