"""Long-document retrieval (question → which document), LoCo-style, side by side in one run.

Corpora: SQuAD v1.1 dev articles (one document per article, ~5k words) and synthetic longer
documents (``--concat`` articles joined). Methods: BM25 over whole documents; MiniLM and
NomicBERT over ~200-word chunks with document score = max chunk score (and sum of top-3);
NomicBERT whole-document (fewest windows of ``--nomic-window`` tokens, max over windows).
Metrics: nDCG@10 and recall@1 (one gold document per question). Then encode time and peak
RSS growth per input length for M2-BERT (random weights in the official 80M/32k shape: its
numbers are timing/memory only) and NomicBERT, with the time ratio against n·log n.

    nice -n 10 python benchmarks/long_retrieval.py --quick
    python benchmarks/long_retrieval.py --scaling-only      # encode time / memory per length only
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_squad(path: Path, n_articles: int, n_questions: int, seed: int):
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    rng = random.Random(seed)
    arts = rng.sample(data, min(n_articles, len(data)))
    docs, qs = [], []
    for i, a in enumerate(arts):
        docs.append("\n\n".join(p["context"] for p in a["paragraphs"]))
        for p in a["paragraphs"]:
            for qa in p["qas"]:
                qs.append((qa["question"], i))
    rng.shuffle(qs)
    return docs, qs[:n_questions]


def word_chunks(text: str, size: int = 200):
    w = text.split()
    return [" ".join(w[i : i + size]) for i in range(0, len(w), size)] or [text]


def metrics(doc_scores: np.ndarray, gold: list[int]) -> tuple[float, float]:
    nd, r1 = [], []
    for s, g in zip(doc_scores, gold):
        order = np.lexsort((np.arange(len(s)), -s))
        rank = int(np.nonzero(order == g)[0][0])
        r1.append(rank == 0)
        nd.append(1.0 / math.log2(rank + 2) if rank < 10 else 0.0)
    return float(np.mean(nd)), float(np.mean(r1))


def eval_dense(encoder, docs, queries, *, chunked: bool, window: int | None = None):
    from longread.encoders.longdoc import aggregate_docs, encode_windows

    t0 = time.perf_counter()
    if chunked:
        pieces, owner = [], []
        for i, d in enumerate(docs):
            for c in word_chunks(d):
                pieces.append(c)
                owner.append(i)
        vecs = encoder.encode(pieces, kind="document", batch_size=16)
        owner = np.array(owner)
    else:
        saved = encoder.max_tokens
        if window is not None:
            encoder.max_tokens = window  # fewest windows of this many tokens (the model's limit by default)
        try:
            vecs, owner, _ = encode_windows(encoder, docs, kind="document", batch_size=1)
        finally:
            encoder.max_tokens = saved
    t_index = time.perf_counter() - t0
    qv = encoder.encode([q for q, _ in queries], kind="query", batch_size=32)
    sims = qv @ vecs.T
    out = {}
    for how in ("max", "sum_top_m"):
        ds = np.stack([aggregate_docs(s, owner, len(docs), how, 3) for s in sims])
        out[how] = metrics(ds, [g for _, g in queries])
    return out, len(owner), t_index


def eval_bm25(docs, queries):
    from rank_bm25 import BM25Okapi

    bm = BM25Okapi([d.lower().split() for d in docs])
    ds = np.stack([bm.get_scores(q.lower().split()) for q, _ in queries])
    return metrics(ds, [g for _, g in queries])


def _scale_child(kind: str, n: int, out) -> None:
    """In a fresh process: build the encoder, warm up on 512 tokens, then time one n-token input.

    Each length gets its own process; the peak-RSS mark is reset after loading + warm-up and the
    growth of the peak over that level is reported.
    """
    import torch

    torch.manual_seed(0)
    if kind == "m2":
        from longread.encoders.m2bert import M2BertConfig, M2BertForRetrieval

        m2 = M2BertForRetrieval(M2BertConfig.retrieval(32768)).eval()

        def forward(L):
            ids = torch.randint(1000, 30000, (1, L))
            m2(ids, torch.ones_like(ids), mask_padding=False)
    else:
        from longread.encoders import load_encoder
        from longread.models.packs import prepare

        nomic = load_encoder(prepare("nomic-embed-text-v1.5", progress=False))

        def forward(L):
            ids = torch.randint(1000, 30000, (1, L))
            nomic.model(ids, torch.ones_like(ids))

    with torch.inference_mode():
        forward(512)
        before = _reset_peak_rss_mb()
        t0 = time.perf_counter()
        forward(n)
        dt = time.perf_counter() - t0
    out.put((dt, max(0.0, _status_mb("VmHWM") - before)))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss_mb() -> float:
    """Reset the peak-RSS mark to the current RSS (Linux ``clear_refs`` 5); return the RSS in MB.

    Without it the peak left by loading the weights (fp16 -> fp32 conversion) hides the
    activations of short inputs.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def scaling(name: str, kind: str, lengths: list[int]):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rows = []
    for n in lengths:
        q = ctx.Queue()
        proc = ctx.Process(target=_scale_child, args=(kind, n, q))
        proc.start()
        dt, mem = q.get()
        proc.join()
        rows.append((n, dt, mem))
        print(f"  [{kind}] n={n}: {dt:.2f}s, peak RSS +{mem:.0f} MB", flush=True)
    n0, t0_, _ = rows[0]
    print(f"\n{name}: encode one input of n tokens (fresh process per length, after a 512-token warm-up)")
    print(f"{'n':>7} {'seconds':>9} {'t/t0':>7} {'nlogn/n0logn0':>14} {'n/n0':>6} {'(n/n0)^2':>9} {'peak RSS +MB':>13}")
    for n, dt, mem in rows:
        r = n / n0
        print(f"{n:>7} {dt:>9.3f} {dt / t0_:>7.2f} {n * math.log2(n) / (n0 * math.log2(n0)):>14.2f} {r:>6.1f} {r * r:>9.0f} {mem:>13.0f}")
    sys.stdout.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--articles", type=int, default=12)
    ap.add_argument("--questions", type=int, default=150)
    ap.add_argument("--concat", type=int, default=3, help="articles per synthetic long document")
    ap.add_argument("--nomic-window", type=int, default=8192, help="tokens per whole-document window")
    ap.add_argument("--m2-lengths", default="512,2048,8192,32768")
    ap.add_argument("--nomic-lengths", default="512,2048,8192")
    ap.add_argument("--quick", action="store_true", help="6 articles, 60 questions, shorter scaling runs")
    ap.add_argument("--scaling-only", action="store_true", help="only the encode time / memory per input length")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.quick:
        a.articles, a.questions, a.nomic_window = 6, 60, 2048
        a.m2_lengths, a.nomic_lengths = "512,2048,8192", "512,2048"
    from longread.encoders import load_encoder
    from longread.models.packs import prepare

    if a.scaling_only:
        scaling("M2-BERT-80M-32k (random weights, official shape)", "m2", [int(x) for x in a.m2_lengths.split(",")])
        scaling("NomicBERT (real weights)", "nomic", [int(x) for x in a.nomic_lengths.split(",")])
        return 0
    squad = Path(a.data) / "squad" / "squad-dev-1.1.rebuilt.json"
    if not squad.is_file():
        print(f"SQuAD not found at {squad}; pass --data", file=sys.stderr)
        return 2
    docs, qs = load_squad(squad, a.articles, a.questions, a.seed)
    groups = [list(range(i, min(i + a.concat, len(docs)))) for i in range(0, len(docs), a.concat)]
    long_docs = ["\n\n".join(docs[j] for j in g) for g in groups]
    to_group = {j: gi for gi, g in enumerate(groups) for j in g}
    long_qs = [(q, to_group[g]) for q, g in qs]

    minilm = load_encoder(prepare("all-minilm-l6-v2", progress=False))
    nomic = load_encoder(prepare("nomic-embed-text-v1.5", progress=False))
    tok = nomic.tokenizer
    for name, ds in (("squad articles", docs), (f"synthetic x{a.concat}", long_docs)):
        lens = [len(tok(d, add_special_tokens=False)["input_ids"]) for d in ds]
        print(f"{name}: {len(ds)} docs, mean {np.mean(lens):.0f} tokens (max {max(lens)})")
    print(f"{len(qs)} questions (seed {a.seed}); doc score = max chunk/window score [sum of top-3 in brackets]\n")
    print(f"{'corpus':<16} {'method':<26} {'nDCG@10':>8} {'R@1':>6} {'[nDCG sum3]':>12} {'vectors':>8} {'index s':>8}")
    for cname, ds, q in (("squad", docs, qs), (f"synthetic x{a.concat}", long_docs, long_qs)):
        nd, r1 = eval_bm25(ds, q)
        print(f"{cname:<16} {'BM25 (whole doc)':<26} {nd:>8.3f} {r1:>6.3f} {'':>12} {len(ds):>8} {'':>8}")
        for label, enc, chunked in (("MiniLM chunked 200w", minilm, True), ("Nomic chunked 200w", nomic, True),
                                    (f"Nomic whole ({a.nomic_window} tok win)", nomic, False)):
            res, nvec, ti = eval_dense(enc, ds, q, chunked=chunked, window=None if chunked else a.nomic_window)
            (nd, r1), (nd3, _) = res["max"], res["sum_top_m"]
            print(f"{cname:<16} {label:<26} {nd:>8.3f} {r1:>6.3f} {nd3:>12.3f} {nvec:>8} {ti:>8.1f}")
        sys.stdout.flush()

    scaling("M2-BERT-80M-32k (random weights, official shape)", "m2", [int(x) for x in a.m2_lengths.split(",")])
    scaling("NomicBERT (real weights)", "nomic", [int(x) for x in a.nomic_lengths.split(",")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
