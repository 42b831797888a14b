"""Answering actors' memory at two corpus sizes: the corpus store is shared, not copied per actor.

For each size a BM25 index of the synthetic real-text corpus of ``index_scale.py`` is built, then
``--questions`` NQ-open questions are answered on Ray by ``retriever.bm25`` -> ``reader.echo``, each
stage an actor pool, in a fresh process per size. Every state records the memory of the worker
that ran each stage (``trace["worker_memory_mb"]``: RSS, private ``anon`` and mapped-file
``file`` MiB); the table shows the largest per stage. ``reader.echo`` opens the store
(``make_context``) and reads only its passages, so its RSS is the store's cost to an actor; the
BM25 actor also opens its own index: the score matrix memory-mapped (its touched pages count as
``file``), the vocabulary and idf in memory (these grow with the corpus's distinct terms).

    python benchmarks/actor_memory.py                        # 50k and 500k chunks, 40 questions
    python benchmarks/actor_memory.py --chunks 2000 20000 --questions 8   # correctness check only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_scale import DEFAULT_DATA, ROOT, source_words, write_corpus  # noqa: E402

CONFIG = {
    "name": "actor-memory",
    "chunker": {"kind": "tokens", "size": 128, "overlap": 0},
    "stages": [
        {"key": "retriever.bm25", "params": {"top_k": 10}, "resources": {"num_cpus": 1, "batch_size": 4}},
        {"key": "reader.echo", "params": {"words": 5}, "resources": {"num_cpus": 1, "batch_size": 4}},
    ],
}


def questions(data: Path, n: int) -> list[dict]:
    path = data / "nq_open" / "NQ-open.dev.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if len(out) >= n:
                break
            q = json.loads(line)
            out.append({"id": f"nq{i}", "question": q["question"], "answers": q["answer"]})
    return out


def child(corpus: str, qfile: str, idx: str) -> None:
    """Index (local) and answer on Ray in this fresh process; print one JSON line."""
    sys.path.insert(0, str(ROOT))
    from longread.data import load_questions
    from longread.loaders import load_documents
    from longread.pipelines.pipeline import Pipeline

    pipe = Pipeline.from_config(CONFIG, kv_cache=False)
    t0 = time.perf_counter()
    pipe.index(load_documents(corpus), idx, show_progress=False)
    index_s = time.perf_counter() - t0
    qs = load_questions(qfile)
    t0 = time.perf_counter()
    states = pipe.answer(qs, index_dir=idx, executor="ray")
    answer_s = time.perf_counter() - t0
    worst: dict[str, dict[str, float]] = {}
    for s in states:
        if "error" in s.trace:
            raise SystemExit(f"question {s.question.id}: {s.trace['error']}")
        for stage, mem in s.trace.get("worker_memory_mb", {}).items():
            w = worst.setdefault(stage, {})
            for k, v in mem.items():
                w[k] = max(w.get(k, 0.0), v)
    man = json.loads((Path(idx) / "manifest.json").read_text())
    store_mb = sum(p.stat().st_size for p in (Path(idx) / "corpus").rglob("*") if p.is_file()) / 2**20
    part_mb = sum(p.stat().st_size for p in Path(idx).rglob("*") if p.is_file() and "corpus" not in p.parts) / 2**20
    print(json.dumps({"n_chunks": man["n_chunks"], "store_mb": round(store_mb, 1), "bm25_mb": round(part_mb, 1),
                      "index_s": round(index_s, 1), "answer_s": round(answer_s, 1), "workers": worst}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, nargs=2, default=[50_000, 500_000], help="the two corpus sizes (approximate chunks)")
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    words = source_words(args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="actor-memory-") as tmp:
        qfile = Path(tmp) / "q.jsonl"
        qfile.write_text("".join(json.dumps(q) + "\n" for q in questions(args.data, args.questions)))
        for n in args.chunks:
            corpus = Path(tmp) / f"corpus-{n}.jsonl"
            write_corpus(corpus, n, words)
            res = subprocess.run([sys.executable, __file__, "--child", str(corpus), str(qfile), str(Path(tmp) / f"idx-{n}")],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SystemExit(f"size {n} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print("\n| chunks | store MB | BM25 part MB | stage | actor RSS MB | anon MB | file MB | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for stage, m in sorted(r["workers"].items()):
            print(f"| {r['n_chunks']:,} | {r['store_mb']:.0f} | {r['bm25_mb']:.0f} | {stage} | {m.get('rss', 0):.0f} | "
                  f"{m.get('anon', 0):.0f} | {m.get('file', 0):.0f} | {m.get('peak', 0):.0f} |")
    a, b = rows
    if "reader.echo" in a["workers"] and "reader.echo" in b["workers"]:
        ga, gb = a["workers"]["reader.echo"]["rss"], b["workers"]["reader.echo"]["rss"]
        print(f"\nreader.echo actor: {ga:.0f} MB at {a['n_chunks']:,} chunks, {gb:.0f} MB at {b['n_chunks']:,} "
              f"({b['store_mb'] / max(a['store_mb'], 1e-9):.1f}x the store)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
