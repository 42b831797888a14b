"""Ray scaling: questions per minute with 1, 2, … workers for an embedding-bound and a reader-bound
config, against the in-process executor, measured side by side in one run.

    python benchmarks/scaling.py                  # workers 1 2, 40 demo questions
    python benchmarks/scaling.py --workers 1 2 4 8 --questions 200   # on a bigger machine

- embedding-bound: `retriever.dense` (all-MiniLM-L6-v2 encodes each question) + `reader.echo`
- reader-bound: `retriever.bm25` + `reader.hf` (smollm2-135m-instruct, 16 new tokens)

Each worker is one actor with `num_cpus=1` (torch uses one thread per granted CPU). The first pass
of each config warms the index and model cache and is not timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from longread.data import demo_paths, load_corpus, load_questions
from longread.pipelines.pipeline import Pipeline

CONFIGS = {
    "embedding-bound": [
        {"key": "retriever.dense", "params": {"encoder": "all-minilm-l6-v2", "top_k": 5}},
        {"key": "reader.echo", "params": {}},
    ],
    "reader-bound": [
        {"key": "retriever.bm25", "params": {"top_k": 3}},
        {"key": "reader.hf", "params": {"model": "smollm2-135m-instruct", "max_new_tokens": 16}},
    ],
}


def config(name: str, workers: int, batch: int) -> dict:
    stages = []
    for st in CONFIGS[name]:
        st = dict(st)
        st["resources"] = {"num_cpus": 1, "batch_size": batch, "concurrency": workers}
        stages.append(st)
    return {"name": f"scale-{name}", "chunker": {"kind": "tokens", "size": 256, "overlap": 32}, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = ap.parse_args(argv)
    corpus_path, q_path = demo_paths()
    docs = load_corpus(corpus_path)
    qs = load_questions(q_path)
    while len(qs) < args.questions:  # repeat the demo questions under new ids
        qs += [q.model_copy(update={"id": f"{q.id}-r{len(qs)}"}) for q in qs[: args.questions - len(qs)]]
    qs = qs[: args.questions]
    print(f"{os.cpu_count()} CPUs, {len(qs)} questions, batch {args.batch}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            idx = Path(tmp) / name
            base = Pipeline.from_config(config(name, 1, args.batch))
            base.index(docs, idx, show_progress=False)
            base.answer(qs[:2], index_dir=idx)  # warm caches (pack conversion, index load)
            t0 = time.perf_counter()
            base.answer(qs, index_dir=idx)
            local_qpm = len(qs) / (time.perf_counter() - t0) * 60
            rows.append((name, "local", 1, local_qpm, None, None))
            print(f"{name:16s} local      {local_qpm:8.1f} q/min", flush=True)
            first = None
            for w in args.workers:
                pipe = Pipeline.from_config(config(name, w, args.batch))
                t0 = time.perf_counter()
                pipe.answer(qs, index_dir=idx, executor="ray")
                qpm = len(qs) / (time.perf_counter() - t0) * 60
                first = first or qpm
                speedup = qpm / first
                rows.append((name, "ray", w, qpm, speedup, speedup / (w / args.workers[0])))
                print(f"{name:16s} ray x{w:<3d}   {qpm:8.1f} q/min  speed-up {speedup:.2f}  efficiency {rows[-1][5]:.2f}", flush=True)
    print("\n| config | executor | workers | questions/min | speed-up vs fewest workers | efficiency |")
    print("|---|---|---|---|---|---|")
    for name, ex, w, qpm, sp, eff in rows:
        print(f"| {name} | {ex} | {w} | {qpm:.1f} | {'' if sp is None else f'{sp:.2f}'} | {'' if eff is None else f'{eff:.2f}'} |")
    print("\nRay throughput includes starting the actors (each loads its model); on 2 cores a second worker competes with")
    print("the driver and Ray's own processes, so efficiency below 1 is expected here.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
