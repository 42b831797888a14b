"""Indexing at scale: time and peak memory of ``Pipeline.index`` locally and on Ray with N workers.

A synthetic corpus of real text: 100-word windows over the prose in ``--data`` (SQuAD contexts,
Paul Graham's essays, PubMedQA abstracts), recombined by a seeded RNG to reach size; each
document is 10 windows, chunked into ~128-token chunks. Every case (size x executor) runs in a
fresh process; the corpus JSONL of a size is written once and shared by its cases.

    python benchmarks/index_scale.py                                  # 100k and 1M chunks, local + Ray 1, 2
    python benchmarks/index_scale.py --chunks 100000 --workers 1 2 4 8 16 --parts bm25 dense   # a big machine
    python benchmarks/index_scale.py --chunks 2000 --workers 1        # correctness check only

Reported per case: total seconds, read+chunk seconds, seconds per part, driver peak RSS (VmHWM),
Ray workers' peak RSS, index size on disk, and the speed-up over local (and per worker). The
corpus is read by the driver in every case (one stream); chunking, BM25 tokenising and encoding
are what Ray spreads. ``--parts dense`` adds ``retriever.dense`` (``--encoder``, default MiniLM
from the model pack) as an actor pool of N actors with one CPU each.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
WINDOW = 100
WINDOWS_PER_DOC = 10


def _peak_mb() -> float:
    """Peak RSS of this process image (VmHWM: ``ru_maxrss`` would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def source_words(data: Path) -> list[str]:
    """Every word of the prose under ``data``, in file order; exits naming what is missing."""
    texts: list[str] = []
    squad = data / "squad" / "squad-dev-1.1.rebuilt.json"
    if squad.is_file():
        for art in json.loads(squad.read_text(encoding="utf-8"))["data"]:
            texts.extend(p["context"] for p in art["paragraphs"])
    texts.extend(p.read_text(encoding="utf-8", errors="replace") for p in sorted((data / "paul_graham" / "essays").glob("*.txt")))
    for p in sorted((data / "pubmedqa").rglob("*.json")):
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(obj, dict):
            for v in obj.values():
                if isinstance(v, dict) and isinstance(v.get("CONTEXTS"), list):
                    texts.extend(str(c) for c in v["CONTEXTS"])
    words = " ".join(texts).split()
    if len(words) < 10 * WINDOW:
        raise SystemExit(f"error: too little text under {data} (need SQuAD, paul_graham or pubmedqa); pass --data")
    return words


def write_corpus(path: Path, n_chunks: int, words: list[str], seed: int = 0) -> int:
    """Write ``~n_chunks`` chunks' worth of documents (10 windows of 100 words each); return the document count."""
    rng = random.Random(seed)
    starts = range(0, len(words) - WINDOW, WINDOW)
    n_docs = max(1, -(-n_chunks // WINDOWS_PER_DOC))
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_docs):
            # Windows from random places, each cut at a random word: real text, new combinations.
            parts = []
            for _ in range(WINDOWS_PER_DOC):
                s = rng.choice(starts) + rng.randrange(WINDOW)
                parts.append(" ".join(words[s : s + WINDOW]))
            f.write(json.dumps({"id": f"doc{i:08d}", "text": "\n\n".join(parts)}, ensure_ascii=False) + "\n")
    return n_docs


def config(parts: list[str], workers: int, encoder: str) -> dict:
    stages = []
    if "bm25" in parts:
        stages.append({"key": "retriever.bm25", "params": {"top_k": 10}})
    if "dense" in parts:
        stages.append({"key": "retriever.dense", "params": {"encoder": encoder, "top_k": 10, "batch_size": 64},
                       "resources": {"num_cpus": 1, "concurrency": workers}})
    stages.append({"key": "reader.echo", "params": {}})
    return {"name": "index-scale", "chunker": {"kind": "tokens", "size": 128, "overlap": 0}, "stages": stages}


def child(args: argparse.Namespace) -> None:
    """One case in this fresh process: index ``--corpus`` and print one JSON line."""
    sys.path.insert(0, str(ROOT))
    from longread.loaders import load_documents
    from longread.pipelines.pipeline import Pipeline

    workers = args.case_workers
    init_s = 0.0
    if args.case_executor == "ray":
        from longread.pipelines.executors import init_ray

        t0 = time.perf_counter()
        init_ray(None, num_cpus=workers)  # a local cluster of N CPUs: N chunking/tokenising tasks at a time
        init_s = time.perf_counter() - t0
    pipe = Pipeline.from_config(config(args.parts, workers, args.encoder), kv_cache=False)
    out = Path(args.case_out)
    t0 = time.perf_counter()
    pipe.index(load_documents(args.corpus), out, show_progress=False, executor=args.case_executor, shard_size=args.shard_size)
    seconds = time.perf_counter() - t0
    man = json.loads((out / "manifest.json").read_text())
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps({
        "seconds": round(seconds, 2), "ray_init_s": round(init_s, 2), "chunk_s": man.get("chunk_seconds"),
        "parts_s": {k.split("-")[0]: v["seconds"] for k, v in man["parts"].items()},
        "n_documents": man["n_documents"], "n_chunks": man["n_chunks"], "shards": man["store"]["shards"],
        "driver_peak_mb": round(_peak_mb(), 1),
        "worker_peak_mb": max([man.get("chunk_worker_peak_rss_mb") or 0.0]
                              + [v.get("worker_peak_rss_mb") or 0.0 for v in man["parts"].values()]) or None,
        "disk_mb": round(disk / 2**20, 1),
    }))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, nargs="+", default=[100_000, 1_000_000], help="corpus sizes in chunks (approximate)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (CPUs of the local cluster)")
    ap.add_argument("--no-local", action="store_true", help="skip the local-executor case")
    ap.add_argument("--parts", nargs="+", default=["bm25"], choices=["bm25", "dense"])
    ap.add_argument("--encoder", default="all-minilm-l6-v2")
    ap.add_argument("--shard-size", default="8MB")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="public text to draw windows from")
    ap.add_argument("--work", type=Path, default=None, help="where corpora and indexes go (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    for hidden in ("--corpus", "--case-out", "--case-executor"):
        ap.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--case-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case_out:
        child(args)
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="index-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    words = source_words(args.data)
    rows = []
    try:
        for n in args.chunks:
            corpus = work / f"corpus-{n}.jsonl"
            if not corpus.is_file():
                t0 = time.perf_counter()
                n_docs = write_corpus(corpus, n, words)
                print(f"corpus {n:,} chunks: {n_docs:,} documents, {corpus.stat().st_size / 2**20:.0f} MB in "
                      f"{time.perf_counter() - t0:.0f}s", file=sys.stderr)
            cases = ([] if args.no_local else [("local", 1)]) + [("ray", w) for w in args.workers]
            base = None
            for executor, w in cases:
                out = work / f"idx-{n}-{executor}-{w}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = [sys.executable, __file__, "--corpus", str(corpus), "--case-out", str(out), "--case-executor", executor,
                       "--case-workers", str(w), "--shard-size", args.shard_size, "--encoder", args.encoder, "--parts", *args.parts]
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    raise SystemExit(f"case {n} {executor} x{w} failed:\n{res.stderr[-3000:]}")
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r.update(size=n, executor=executor, workers=w)
                if executor == "local":
                    base = r["seconds"]
                if base:
                    r["speedup"] = round(base / r["seconds"], 2)
                    r["speedup_per_worker"] = round(r["speedup"] / w, 2)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n| chunks | executor | workers | total s | read+chunk s | parts s | driver peak MB | worker peak MB | disk MB | speed-up | per worker |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["parts_s"].items())
        print(f"| {r['n_chunks']:,} | {r['executor']} | {r['workers']} | {r['seconds']:.1f} | {r['chunk_s']:.1f} | {parts} | "
              f"{r['driver_peak_mb']:.0f} | {r['worker_peak_mb'] or '-'} | {r['disk_mb']:.0f} | {r.get('speedup', '-')} | "
              f"{r.get('speedup_per_worker', '-')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
