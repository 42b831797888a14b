"""Compression before the reader: CoLoR vs extractive vs none, side by side in one run.

Uses the ablation benchmark's sets and plumbing (``benchmarks/ablation.py``: SQuAD articles as long
documents and the HotpotQA sample, hybrid retrieval once per set, one shared model hub, the same
``reader.hf``), and adds what is specific to compression. Each row compresses the ``--reader-k``
passages the reader will read and then reads them.

Columns: ``ratio`` — compressed/original tokens of those passages (mean over questions, in the
compressor's own token count: the LLM's tokenizer for color, words+punctuation for extractive);
``fallb`` — color passages whose output was unusable and kept the original; ``ans@k`` — an answer
string is still in the passages; F1/EM of the reader; ``rd tok`` — prompt tokens to the reader;
``calls``/``llm tok`` — compressor LLM use per question; ``comp s/q`` and ``read s/q`` — seconds per
question of the compressor and of the reader.

    nice -n 10 python benchmarks/compression.py            # 10 + 10 questions
    python benchmarks/compression.py --quick               # 4 + 4 questions
    python benchmarks/compression.py --rows none color --color-ratio 0.3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ablation as ab  # noqa: E402  (the sibling benchmark: sets, retrieval, reader, metrics)

from longread.data import load_hotpotqa, load_squad  # noqa: E402
from longread.eval.metrics import answer_in_texts  # noqa: E402
from longread.stage import RunContext  # noqa: E402
from longread.types import QAState  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROWS = ["none", "color", "color-ratio", "extractive", "extractive-all"]


def row_stages(row: str, a: argparse.Namespace) -> list[tuple[str, dict]]:
    """The compressor stage(s) of one row."""
    color = {"model": a.model, "max_new_tokens": a.color_tokens, "batch_size": 5, "min_chars": 200}
    if a.adapter:
        color["adapter"] = a.adapter
    return {
        "none": [],
        "color": [("compressor.color", color)],
        "color-ratio": [("compressor.color", {**color, "ratio": a.color_ratio})],
        "extractive": [("compressor.extractive", {"budget_tokens": a.extractive_tokens, "scope": "passage"})],
        "extractive-all": [("compressor.extractive", {"budget_tokens": a.extractive_tokens * a.reader_k // 2,
                                                      "scope": "all"})],
    }[row]


def compression_of(states: list[QAState], keys: list[str]) -> tuple[float, float]:
    """Mean compression ratio and mean fallbacks per question recorded by the given stages."""
    ratios, fallbacks = [], []
    for s in states:
        for k in keys:
            rec = s.trace.get("compression", {}).get(k)
            if rec:
                ratios.append(rec["ratio"])
                fallbacks.append(rec.get("fallbacks", 0))
    if not ratios:
        return 1.0, 0.0
    return sum(ratios) / len(ratios), sum(fallbacks) / len(fallbacks)


def bench(set_name: str, retrieved: list[QAState], ctx: RunContext, a: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every row on copies of the retrieved states; one result dict per row."""
    qs = [s.question for s in retrieved]
    rows = []
    for row in a.rows:
        specs = row_stages(row, a)
        states = []
        for s in retrieved:
            s2 = s.model_copy(deep=True)
            s2.passages = s2.passages[: a.reader_k]
            states.append(s2)
        stages = ab.make(ctx, specs)
        t0 = time.perf_counter()
        states = ab.run_stages(stages, states, a.batch)
        t_comp = (time.perf_counter() - t0) / len(states)
        keys = [k for k, _ in specs]
        ratio, fallb = compression_of(states, keys)
        ans = sum(answer_in_texts(s.question.answers, [p.text for p in s.passages]) for s in states) / len(states)
        calls, toks = ab.llm_use(states, keys)
        t0 = time.perf_counter()
        states = ab.read(ctx, a, states, a.reader_k, 2048)
        t_read = (time.perf_counter() - t0) / len(states)
        m = ab.metrics_of(states, qs)
        res = {"row": row, "ratio": ratio, "fallbacks": fallb, "ans": ans, "f1": m["f1"], "em": m["em"],
               "reader_tokens": m.get("reader_tokens_mean"), "calls": calls, "llm_tokens": toks,
               "comp_s": t_comp, "read_s": t_read}
        rows.append(res)
        print(f"  [{set_name}] {row:<15} ratio {ratio:.2f}  ans {ans:.2f}  F1 {m['f1']:.3f}  "
              f"comp {t_comp:.1f}s/q  read {t_read:.1f}s/q", flush=True)
    return rows


def table(set_name: str, rows: list[dict[str, Any]], n: int, k: int) -> str:
    f = ab.fmt
    lines = [f"| {set_name} (n={n}) | ratio | fallb | ans@{k} | F1 | EM | rd tok | calls | llm tok | comp s/q | read s/q |",
             "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['row']} | {f(r['ratio'], '.2f')} | {f(r['fallbacks'], '.1f')} | {f(r['ans'], '.2f')} | {f(r['f1'])} | "
            f"{f(r['em'])} | {f(r['reader_tokens'], '.0f')} | {f(r['calls'], '.1f')} | {f(r['llm_tokens'], '.0f')} | "
            f"{f(r['comp_s'], '.2f')} | {f(r['read_s'], '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-compression"), help="index dirs land here")
    ap.add_argument("--model", default="qwen2.5-0.5b-instruct", help="compressor and reader model")
    ap.add_argument("--adapter", default=None, help="CoLoR LoRA adapter dir for the color rows (trained on --model)")
    ap.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    ap.add_argument("--squad-articles", type=int, default=5)
    ap.add_argument("--squad-questions", type=int, default=10)
    ap.add_argument("--hotpot-questions", type=int, default=10)
    ap.add_argument("--chunk-tokens", type=int, default=128)
    ap.add_argument("--reader-k", type=int, default=5, help="passages retrieved, compressed and read")
    ap.add_argument("--color-tokens", type=int, default=64, help="compressor.color max_new_tokens")
    ap.add_argument("--color-ratio", type=float, default=0.3, help="compressor.color ratio for the color-ratio row")
    ap.add_argument("--extractive-tokens", type=int, default=48, help="per-passage budget (the 'all' row gets k/2 times it)")
    ap.add_argument("--batch", type=int, default=4, help="questions per stage batch")
    ap.add_argument("--quick", action="store_true", help="4 + 4 questions")
    a = ap.parse_args(argv)
    if a.quick:
        a.squad_questions, a.hotpot_questions, a.squad_articles = 4, 4, 2
    data = Path(a.data)
    if not data.is_dir():
        print(f"data dir {data} not found (pass --data)", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    sets = {}
    if a.squad_questions > 0:
        per = max(1, -(-a.squad_questions // a.squad_articles))
        docs, qs = load_squad(data / "squad" / "squad-dev-1.1.rebuilt.json", max_articles=a.squad_articles,
                              questions_per_article=per)
        sets["squad-long"] = (docs, qs[: a.squad_questions])
    if a.hotpot_questions > 0:
        docs, qs = load_hotpotqa(data / "hotpotqa" / "hotpotqa_explorer_dev_sample100.json")
        sets["hotpotqa"] = (docs, qs[: a.hotpot_questions])
    print(f"compression: model {a.model}, reader reads {a.reader_k} passages of {a.chunk_tokens} tokens; "
          f"adapter: {a.adapter or 'none (no CoLoR adapter exists for this model)'}", flush=True)
    tables = []
    for set_name, (docs, qs) in sets.items():
        retrieved, ctx = ab.retrieve(set_name, docs, qs, a, a.reader_k)
        rows = bench(set_name, retrieved, ctx, a)
        tables.append(table(set_name, rows, len(retrieved), a.reader_k))
    print()
    for t in tables:
        print(t)
        print()
    print(f"total {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
