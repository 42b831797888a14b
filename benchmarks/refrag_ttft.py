"""REFRAG time to first token vs full prefill at k = 8/16/32, side by side in one process.

One essay-filler document of ``--tokens`` tokens (default 4,096) with a planted fact; the same model
(default smollm2-135m-instruct, fp32) reads it with ``reader.long_context`` (full prefill) and with
``reader.refrag`` at each k. For REFRAG the first question on the document is *cold* (the chunk
encoder runs) and the second is *warm* (chunk embeddings come from the per-document cache), so
both ratios are printed. Every measurement is repeated ``--repeats`` times on fresh questions and
the median kept; a warm-up question runs first for each reader.

``--expand`` sets the share of chunks expanded back to tokens (the reader's default 0.25, and 0:
every chunk compressed, the setting of the paper's TTFT numbers). k=16 uses the shipped projector (``projector: default``); other k use ``projector: random`` —
timing does not depend on the projector's weights.

    python benchmarks/refrag_ttft.py                 # ~5 min on 2 idle cores
    python benchmarks/refrag_ttft.py --tokens 8192 --ks 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kv_readers as kv  # noqa: E402  (the sibling benchmark: filler, haystack, one-question timing)

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--expand", type=float, nargs="+", default=[0.25, 0.0], help="expand_fraction values (0.25 = the reader's default)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.tokens < 64:
        ap.error("--repeats must be >= 1 and --tokens >= 64")
    import torch

    torch.set_num_threads(a.threads)
    from longread.models.hub import ModelHub
    from longread.pipelines.pipeline import Pipeline
    from longread.types import Document

    hub = ModelHub(dtype="float32")
    tok = hub.tokenizer(a.model)
    filler = kv._filler(a.data)
    fact, question, answer = kv.NEEDLES[0]
    docs = [
        Document(id="doc", text=kv._haystack(tok, filler, a.tokens, fact, 0.5, 7919)),
        Document(id="warmup", text="Warm-up document. " + filler[:400]),
    ]
    others = [q for _, q, _ in kv.NEEDLES[1:]]

    def q(i: int) -> dict:
        return {"id": f"q{i}", "question": others[i % len(others)] if i else question, "answers": [answer], "doc_ids": ["doc"]}

    sampler = kv.RssSampler()
    rows = []
    with tempfile.TemporaryDirectory(prefix="refrag-ttft-") as tmp:
        configs = [("long_context", kv.reader_config("reader.long_context", a.model, 2048), "reader.long_context")]
        for frac in a.expand:
            for k in a.ks:
                cfg = kv.reader_config("reader.refrag", a.model, 2048, "default" if k == 16 else "random")
                cfg["stages"][0]["params"].update(k=k, expand_fraction=frac)
                configs.append((f"refrag k={k} p={frac:g}", cfg, "reader.refrag"))
        for name, cfg, key in configs:
            pipe = Pipeline.from_config(cfg)
            index_dir = Path(tmp) / name.replace(" ", "_").replace("=", "").replace(".", "")
            pipe.index(docs, index_dir, show_progress=False)
            ctx = pipe.context(index_dir)
            ctx.models = hub
            kv._one(pipe, index_dir, {"id": "w", "question": "What is this?", "answers": ["x"], "doc_ids": ["warmup"]}, sampler, key)
            cold, warm = [], []
            for r in range(a.repeats):
                # A fresh cache dir per repeat makes the first question cold again.
                ctx.cache_dir = Path(tmp) / f"cache-{name}-{r}".replace(" ", "_")
                cold.append(kv._one(pipe, index_dir, q(2 * r), sampler, key))
                warm.append(kv._one(pipe, index_dir, q(2 * r + 1), sampler, key))
            row = {
                "name": name,
                "cold": statistics.median(x["ttft_s"] for x in cold),
                "warm": statistics.median(x["ttft_s"] for x in warm),
                "reader_tokens": cold[0]["reader_tokens"],
                "hit": cold[0]["hit"],
            }
            rows.append(row)
            print(f"  {name}: cold {row['cold']:.2f}s warm {row['warm']:.2f}s, {row['reader_tokens']} reader tokens", flush=True)
    sampler.stop()
    full = rows[0]["warm"]
    print(f"\nREFRAG TTFT vs full prefill, {a.model}, {a.tokens}-token document, {a.threads} thread(s), median of {a.repeats}")
    print("| reader | reader tokens | TTFT cold s | TTFT warm s | speed-up cold | speed-up warm | answer ok (1st) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['reader_tokens']} | {r['cold']:.2f} | {r['warm']:.2f} | {full / r['cold']:.1f}x | "
            f"{full / r['warm']:.1f}x | {r['hit']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
