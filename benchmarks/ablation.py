"""Ablation of the stages between retrieval and reading, side by side in one run.

Rows: retrieval only / + fullrank / + sliding / + first / + pointwise / + color / + extractive /
+ reorder — each followed by the same reader — over two sets from ``--data`` (default
``../shared/data``):

- ``squad-long``: SQuAD v1.1 dev articles as long documents (~5k words), questions scoped to
  their article, chunked into ``--chunk-tokens`` token chunks;
- ``hotpotqa``: the HotpotQA dev sample, each question scoped to its ~10 paragraphs.

Retrieval (``retriever.bm25``, or ``--retriever hybrid``: BM25 + all-MiniLM-L6-v2, RRF) runs once
per set through the Pipeline API; every row then runs its stages and the reader on copies of the same candidates,
with one shared model hub, so rows differ only by their stage.

Columns: F1 and EM of the reader; ranking quality of the row's passage list over the retrieved
candidates — ``R@5`` (recall at 5) and ``nDCG@10``, where a candidate is relevant when it is a
gold paragraph (HotpotQA) or contains an answer string (SQuAD, whose gold ids are whole
articles); ``ans@k``: the answer string is in the ``--reader-k`` passages the reader gets (after
compression, for compressors); ``rd tok``: prompt tokens to the reader; ``calls``/``llm tok``: LLM
calls and tokens of the row's own stage per question; ``s/q``: seconds per question of the row's
stage plus the reader; ``incompl``: share of questions whose listwise answer missed a passage.
Ranking columns show ``-`` for rows that do not rank (compressors, reorder).

Then the reorder measurement (Jin et al.): F1 as the number of passages given to the reader
grows (``--reorder-ns``), retrieval order vs hard-negative order, same reader, on squad-long.

    nice -n 10 python benchmarks/ablation.py                  # defaults: 12 + 12 questions
    python benchmarks/ablation.py --quick                     # 3 + 3 questions, smoke run
    python benchmarks/ablation.py --rows retrieval fullrank --hotpot-questions 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from longread import registry
from longread.data import load_hotpotqa, load_squad
from longread.eval.costs import question_costs
from longread.eval.evaluator import evaluate
from longread.eval.metrics import answer_in_texts, ndcg_at_k, recall_at_k
from longread.pipelines.pipeline import Pipeline
from longread.stage import RunContext
from longread.types import Prediction, QAState, Question

ROOT = Path(__file__).resolve().parent.parent
ROWS = ["retrieval", "fullrank", "sliding", "first", "pointwise", "color", "extractive", "reorder"]
ALL_ROWS = ROWS + ["fullrank-tuned"]
RANKING_ROWS = {"retrieval", "fullrank", "fullrank-tuned", "sliding", "first", "pointwise"}


def row_stages(row: str, a: argparse.Namespace, n_cand: int) -> list[tuple[str, dict]]:
    """The (key, params) stages of one ablation row, before the reader."""
    win = a.window or max(2, n_cand // 2)
    stride = a.stride or max(1, -(-win // 2))
    common = {"model": a.model, "top_n": n_cand, "word_budget": a.word_budget, "batch_size": a.rank_batch}
    return {
        "retrieval": [],
        "fullrank": [("reranker.fullrank", common)],
        "fullrank-tuned": [("reranker.fullrank", {**common, "model": a.tuned_model or a.model})],
        "sliding": [("reranker.sliding", {**common, "window": win, "stride": stride})],
        "first": [("reranker.first", {**common, "top_n": min(n_cand, 52)})],
        "pointwise": [("reranker.pointwise", {**common, "batch_size": 8})],
        "color": [("compressor.color", {"model": a.model, "max_new_tokens": a.color_tokens, "batch_size": 3})],
        "extractive": [("compressor.extractive", {"budget_tokens": a.extractive_tokens})],
        "reorder": [("reorder.hard_negative", {"top_k": a.reader_k})],
    }[row]


def relevant_ids(state: QAState, set_name: str) -> set[str]:
    """Candidate chunk ids judged relevant: gold paragraphs (hotpotqa) or answer-containing chunks."""
    if set_name == "hotpotqa":
        gold = set(state.question.gold_ids or [])
        return {p.chunk.id for p in state.passages if p.chunk.doc_id in gold}
    return {p.chunk.id for p in state.passages if answer_in_texts(state.question.answers, [p.text])}


def run_stages(stages: list, states: list[QAState], batch: int) -> list[QAState]:
    """Run stages in order over ``states`` in batches; returns the new states."""
    for st in stages:
        out: list[QAState] = []
        for i in range(0, len(states), batch):
            out.extend(st(states[i : i + batch]))
        states = out
    return states


def make(ctx: RunContext, specs: list[tuple[str, dict]]) -> list:
    """Instantiate and set up stages from (key, params)."""
    stages = []
    for key, params in specs:
        cls = registry.get(key)
        st = cls(cls.Params.model_validate(params))
        st.setup(ctx)
        stages.append(st)
    return stages


def llm_use(states: list[QAState], keys: list[str]) -> tuple[float, float]:
    """Mean LLM calls and tokens per question of the given stage keys (from their usage records)."""
    costs = [question_costs(s.usage, s.trace) for s in states]
    calls = sum(sum(c.llm_calls.get(k, 0) for k in keys) for c in costs) / max(1, len(states))
    toks = sum(sum(c.llm_tokens.get(k, 0) for k in keys) for c in costs) / max(1, len(states))
    return calls, toks


def reader_seconds(states: list[QAState]) -> float:
    """Seconds ``reader.hf`` spent on ``states``, summed."""
    return sum(u.seconds for s in states for u in s.usage if u.stage == "reader.hf")


class Reader:
    """The shared reader, with a cache: a state whose question and first ``k`` passages (ids and
    texts, in order) were already read gets the same answer without another LLM call — greedy
    decoding is deterministic — and keeps the reader time it cost the first time."""

    def __init__(self, ctx: RunContext, a: argparse.Namespace) -> None:
        self.ctx, self.a = ctx, a
        self.stages: dict[tuple[int, int], Any] = {}
        self.cache: dict[tuple, QAState] = {}

    def __call__(self, states: list[QAState], k: int, max_ctx: int) -> list[QAState]:
        if (k, max_ctx) not in self.stages:
            params = {"model": self.a.model, "max_new_tokens": self.a.answer_tokens, "max_passages": k, "max_context_tokens": max_ctx, "batch_size": 4}
            self.stages[(k, max_ctx)] = make(self.ctx, [("reader.hf", params)])
        keys = [(k, max_ctx, s.question.id, tuple((p.chunk.id, p.text) for p in s.passages[:k])) for s in states]
        todo = [i for i, key in enumerate(keys) if key not in self.cache]
        done = run_stages(self.stages[(k, max_ctx)], [states[i] for i in todo], 4)
        for i, st in zip(todo, done):
            self.cache[keys[i]] = st
        out = []
        for s, key in zip(states, keys):
            hit = self.cache[key]
            s = s.model_copy(deep=True)
            s.answer = hit.answer
            for f in ("raw_answer", "reader_truncated"):
                if f in hit.trace:
                    s.trace[f] = hit.trace[f]
            s.usage = [u for u in s.usage if u.stage != "reader.hf"] + [
                u.model_copy() for u in hit.usage if u.stage == "reader.hf"
            ]
            out.append(s)
        return out


def metrics_of(states: list[QAState], questions: list[Question]) -> dict[str, Any]:
    preds = []
    for s in states:
        Pipeline._finish_trace(s)
        preds.append(Prediction.from_state(s))
    return evaluate(preds, questions)


def ablation(set_name: str, retrieved: list[QAState], ctx: RunContext, read: Reader, a: argparse.Namespace) -> list[dict]:
    """Run every row on copies of ``retrieved``; return one result dict per row."""
    qs = [s.question for s in retrieved]
    n_cand = min(a.candidates, max(len(s.passages) for s in retrieved))
    base = []
    for s in retrieved:
        s2 = s.model_copy(deep=True)
        s2.passages = s2.passages[: a.candidates]
        base.append(s2)
    rel = {s.question.id: relevant_ids(s, set_name) for s in base}
    rows = []
    for row in a.rows:
        if a.deadline is not None and time.monotonic() > a.deadline:
            print(f"  [{set_name}] time budget spent: skipping {row}", flush=True)
            continue
        specs = row_stages(row, a, n_cand)
        states = [s.model_copy(deep=True) for s in base]
        if row in ("color", "extractive"):
            for s in states:  # compress only what the reader will read
                s.passages = s.passages[: a.reader_k]
        stages = make(ctx, specs)
        t0 = time.perf_counter()
        states = run_stages(stages, states, a.batch)
        t_stage = time.perf_counter() - t0
        r5, nd, incompl, ans = [], [], 0, 0
        for s in states:
            gold = rel[s.question.id]
            ids = [p.chunk.id for p in s.passages]
            if gold:
                r5.append(recall_at_k(ids, gold, 5))
                nd.append(ndcg_at_k(ids, gold, 10))
            incompl += bool(s.trace.get("rerank_incomplete"))
            ans += answer_in_texts(s.question.answers, [p.text for p in s.passages[: a.reader_k]])
        calls, toks = llm_use(states, [k for k, _ in specs])
        states = read(states, a.reader_k, 2048)
        t_read = reader_seconds(states)
        m = metrics_of(states, qs)
        n = len(states)
        res = {
            "row": row if row == "retrieval" else f"+ {row}",
            "f1": m["f1"],
            "em": m["em"],
            "r5": sum(r5) / len(r5) if (r5 and row in RANKING_ROWS) else None,
            "ndcg": sum(nd) / len(nd) if (nd and row in RANKING_ROWS) else None,
            "ans": ans / n,
            "reader_tokens": m.get("reader_tokens_mean"),
            "calls": calls,
            "llm_tokens": toks,
            "sq": (t_stage + t_read) / n,
            "stage_s": t_stage / n,
            "incomplete": incompl / n if row in ("fullrank", "fullrank-tuned", "sliding") else None,
        }
        rows.append(res)
        print(f"  [{set_name}] {res['row']:<13} F1 {res['f1']:.3f} R@5 {fmt(res['r5'])} nDCG@10 {fmt(res['ndcg'])} "
              f"ans {res['ans']:.2f} calls {calls:.1f} llm tok {toks:.0f} incompl {fmt(res['incomplete'], '.2f')} "
              f"stage {t_stage / n:.1f}s/q reader {t_read / n:.1f}s/q", flush=True)
    return rows


def fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def table(set_name: str, rows: list[dict], n: int, reader_k: int) -> str:
    head = f"| {set_name} (n={n}) | F1 | EM | R@5 | nDCG@10 | ans@{reader_k} | rd tok | calls | llm tok | s/q | incompl |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['row']} | {fmt(r['f1'])} | {fmt(r['em'])} | {fmt(r['r5'])} | {fmt(r['ndcg'])} | {fmt(r['ans'], '.2f')} | "
            f"{fmt(r['reader_tokens'], '.0f')} | {fmt(r['calls'], '.1f')} | {fmt(r['llm_tokens'], '.0f')} | "
            f"{fmt(r['sq'], '.2f')} | {fmt(r['incomplete'], '.2f')} |"
        )
    return "\n".join(lines)


def reorder_curve(retrieved: list[QAState], read: Reader, a: argparse.Namespace) -> str:
    """F1 vs number of passages, retrieval order vs hard-negative order (same reader)."""
    from longread.retrievers.reorder import reorder

    qs = [s.question for s in retrieved]
    lines = ["| passages | F1 retrieval order | F1 hard-negative order | reader tokens | s/q |", "|---|---|---|---|---|"]
    for n in a.reorder_ns:
        if a.deadline is not None and time.monotonic() > a.deadline:
            lines.append(f"| {n} | (time budget spent) | | | |")
            continue
        f1 = {}
        for mode in ("identity", "hard_negative"):
            states = []
            for s in retrieved:
                s2 = s.model_copy(deep=True)
                s2.passages = reorder(s2.passages[:n], mode)
                states.append(s2)
            # Room for all n passages so none is cut (the second-best sits last in hard_negative).
            states = read(states, n, max(2048, n * (a.reorder_chunk_tokens + 24)))
            dt = reader_seconds(states) / len(states)
            m = metrics_of(states, qs)
            f1[mode] = m["f1"]
            print(f"  [reorder] n={n} {mode}: F1 {m['f1']:.3f} ({dt:.1f}s/q)", flush=True)
        have = sum(len(s.passages) for s in retrieved) / len(retrieved)
        lines.append(
            f"| {n} (mean {min(n, have):.1f} available) | {f1['identity']:.3f} | {f1['hard_negative']:.3f} | "
            f"{fmt(m.get('reader_tokens_mean'), '.0f')} | {dt:.1f} |"
        )
    return "\n".join(lines)


def retrieve(
    set_name: str, docs: list, qs: list[Question], a: argparse.Namespace, top_k: int, chunk_tokens: int | None = None
) -> tuple[list[QAState], RunContext]:
    """Index ``docs`` and retrieve ``top_k`` candidates per question through the Pipeline API."""
    chunk_tokens = chunk_tokens or a.chunk_tokens
    cfg = {
        "name": f"ablation-{set_name}",
        "chunker": {"kind": "tokens", "size": chunk_tokens, "overlap": min(16, chunk_tokens // 4)},
        "stages": [
            {"key": "retriever.bm25", "params": {"top_k": top_k}}
            if a.retriever == "bm25"
            else {
                "key": "retriever.hybrid",
                "params": {"top_k": top_k, "candidates": max(50, top_k), "dense": {"encoder": "all-minilm-l6-v2"}},
            }
        ],
    }
    pipe = Pipeline.from_config(cfg)
    index_dir = Path(a.out) / f"index-{set_name}-{a.retriever}-{chunk_tokens}-{len(docs)}"
    t0 = time.perf_counter()
    pipe.index(docs, index_dir)
    states = pipe.answer(qs, index_dir=index_dir)
    errs = [s.trace["error"] for s in states if s.trace.get("error")]
    if errs:
        raise RuntimeError(f"retrieval failed for {len(errs)} questions, first: {errs[0]}")
    print(f"  [{set_name}] indexed + retrieved in {time.perf_counter() - t0:.0f}s", flush=True)
    for s in states:  # start each row from retrieval output only (its usage: retrieval time)
        s.trace = {}
    return states, pipe.context(index_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-ablation"), help="index dirs land here")
    ap.add_argument("--model", default="qwen2.5-0.5b-instruct", help="reranker, compressor and reader model")
    ap.add_argument("--rows", nargs="*", default=ROWS, choices=ALL_ROWS)
    ap.add_argument("--tuned-model", default=None, help="model dir for the 'fullrank-tuned' row (e.g. from longread train fullrank)")
    ap.add_argument("--squad-articles", type=int, default=10)
    ap.add_argument("--squad-questions", type=int, default=12)
    ap.add_argument("--hotpot-questions", type=int, default=12)
    ap.add_argument("--candidates", type=int, default=10, help="retrieved candidates the rerankers rank")
    ap.add_argument("--chunk-tokens", type=int, default=96)
    ap.add_argument("--retriever", choices=["bm25", "hybrid"], default="bm25", help="hybrid = BM25 + all-MiniLM-L6-v2 (RRF)")
    ap.add_argument("--word-budget", type=int, default=40, help="words per passage in listwise/pointwise prompts")
    ap.add_argument("--window", type=int, default=None, help="sliding window (default: half the candidates)")
    ap.add_argument("--stride", type=int, default=None, help="sliding stride (default: half the window)")
    ap.add_argument("--rank-batch", type=int, default=2)
    ap.add_argument("--reader-k", type=int, default=3, help="passages the reader reads")
    ap.add_argument("--answer-tokens", type=int, default=16, help="reader max_new_tokens")
    ap.add_argument("--color-tokens", type=int, default=64)
    ap.add_argument("--extractive-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="questions per stage batch")
    ap.add_argument("--reorder-ns", type=int, nargs="*", default=[5, 10, 20, 40])
    ap.add_argument("--reorder-questions", type=int, default=8)
    ap.add_argument("--reorder-chunk-tokens", type=int, default=48, help="chunk size for the reorder measurement")
    ap.add_argument("--quick", action="store_true", help="3 + 3 questions, reorder n in 5 10 on 3 questions (smoke run)")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new row after this many minutes")
    a = ap.parse_args(argv)
    a.deadline = None if a.max_minutes is None else time.monotonic() + 60 * a.max_minutes
    if a.quick:
        a.squad_questions, a.hotpot_questions, a.squad_articles = 3, 3, 3
        a.reorder_ns, a.reorder_questions = [5, 10], 3
    data = Path(a.data)
    if not data.is_dir():
        print(f"data dir {data} not found (pass --data)", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    sets = {}
    if a.squad_questions > 0:
        per = max(1, -(-max(a.squad_questions, a.reorder_questions) // a.squad_articles))
        docs, qs = load_squad(data / "squad" / "squad-dev-1.1.rebuilt.json", max_articles=a.squad_articles, questions_per_article=per)
        sets["squad-long"] = (docs, qs)
    if a.hotpot_questions > 0:
        docs, qs = load_hotpotqa(data / "hotpotqa" / "hotpotqa_explorer_dev_sample100.json")
        qs = qs[: a.hotpot_questions]
        scope = {d for q in qs for d in (q.doc_ids or [])}
        sets["hotpotqa"] = ([d for d in docs if d.id in scope], qs)  # index only what the questions can see
    print(f"ablation: model {a.model}, {a.candidates} candidates, reader reads {a.reader_k}", flush=True)
    tables = []
    curve = None
    for set_name, (docs, qs) in sets.items():
        retrieved, ctx = retrieve(set_name, docs, qs, a, a.candidates)
        n_q = a.squad_questions if set_name == "squad-long" else a.hotpot_questions
        main_states = retrieved[:n_q]
        if set_name == "squad-long":
            # Spread over the articles rather than the first ones only.
            step = max(1, len(retrieved) // n_q)
            main_states = retrieved[::step][:n_q]
        if a.rows and main_states:
            rows = ablation(set_name, main_states, ctx, Reader(ctx, a), a)
            tables.append(table(set_name, rows, len(main_states), a.reader_k))
        if a.rows and main_states:
            print(tables[-1], flush=True)
        if set_name == "squad-long" and a.reorder_ns and a.reorder_questions > 0:
            step = max(1, len(qs) // a.reorder_questions)
            rq = qs[::step][: a.reorder_questions]
            # Own (smaller) chunks so that 40 passages still fit a short reader prompt.
            r_retrieved, r_ctx = retrieve(set_name, docs, rq, a, max(a.reorder_ns), chunk_tokens=a.reorder_chunk_tokens)
            curve = reorder_curve(r_retrieved, Reader(r_ctx, a), a)
    print()
    if curve:
        print(f"Reorder: F1 vs passages given to the reader (squad-long, {a.reorder_questions} questions, {a.reorder_chunk_tokens}-token chunks)")
        print(curve)
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
