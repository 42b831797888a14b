"""Generation backends side by side, one run: ``hf`` vs ``llamacpp`` (same GGUF) vs ``openai`` → a
llama.cpp server that this script starts.

Workload: the demo's 40 questions (``longread/data/demo``), each with its BM25 top-5 passages
(256-token chunks of the demo corpus, numbered ``[1]``..``[5]``), turned into the same chat
messages for every backend by ``longread.llm.prompts`` (``PromptSpec.message``). Two answer styles:
``short`` (32 new tokens) and ``free`` (a few sentences; at least 100 new tokens allowed, 256 by
default). Greedy decoding everywhere.

Per backend and style it reports prefill tokens/s (prompt tokens / time to first token), decode
tokens/s (tokens after the first / time after the first), seconds per question (wall time / n),
EM/F1 against the gold answers (``longread.eval.metrics``; for ``free`` F1 is over a long answer, so
it only compares backends), and for ``openai`` its overhead twice: over the server's own llama.cpp
time (the ``total time`` it logs per request when verbose: what HTTP, streaming and the client add)
and over the same engine run in-process (``llamacpp`` row: same GGUF, same threads, same prompts;
this one also counts the server's own Python layer). Each backend runs in its own process, one after another, with
one warm-up request first; the server runs only during the ``openai`` phase.

    python benchmarks/backends.py                                  # qwen2.5-0.5b-instruct, all 40 questions
    python benchmarks/backends.py --limit 2                        # a correctness check, seconds
    python benchmarks/backends.py --model smollm2-135m-instruct --backends llamacpp openai
    python benchmarks/backends.py --threads 2 --hf-batch-size 4 --json runs/backends.json
    python benchmarks/backends.py --llamacpp-build /tmp/llama-blas   # + a row for another llama.cpp build

Goals (issue 10): llamacpp decodes >= 4x faster than hf at F1 within 0.02; its prefill >= 0.9x
hf's; the openai path adds <= 10% over the engine's own time. Timings mean something only on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BACKENDS = ("hf", "llamacpp", "openai")
STYLES = ("short", "free")


# --------------------------------------------------------------------------- workload
def build_workload(limit: int | None, top_k: int, styles: list[str], free_tokens: int) -> list[dict]:
    """Questions with their BM25 passages as chat messages, per style (identical for all backends)."""
    from longread.config import ChunkerSpec
    from longread.data import demo_paths, load_corpus, load_questions
    from longread.llm.prompts import resolve_prompt
    from longread.pipelines.chunking import chunk_documents
    from longread.retrievers.bm25 import BM25Tokenizer, OkapiIndex, search

    corpus_path, questions_path = demo_paths()
    chunks = chunk_documents(load_corpus(corpus_path), ChunkerSpec(kind="tokens", size=256, overlap=32))
    tok = BM25Tokenizer()
    index = OkapiIndex.build(tok.many([c.text for c in chunks]), k1=1.5, b=0.75)
    questions = load_questions(questions_path)[:limit]
    out = []
    for q in questions:
        ids, _ = search(index, tok(q.question), top_k)
        context = "\n\n".join(f"[{n}] {chunks[int(i)].text.strip()}" for n, i in enumerate(ids, start=1))
        for style in styles:
            spec = resolve_prompt(style)
            out.append({
                "id": q.id, "style": style, "answers": list(q.answers), "cleaner": spec.cleaner,
                "max_new_tokens": free_tokens if style != "short" else spec.default_max_new_tokens,
                "messages": [{"role": "user", "content": spec.message(context, q.question)}],
            })
    return out


# --------------------------------------------------------------------------- one backend (child process)
def open_backend(name: str, args: argparse.Namespace):
    """The backend under test; for ``openai`` also the llama.cpp server it talks to."""
    from longread.llm import LLMSpec
    from longread.llm.base import backend_class

    server = None
    if name == "hf":
        import torch

        torch.set_num_threads(args.threads)
        spec = LLMSpec(backend="hf", model=args.model, dtype=args.hf_dtype, batch_size=args.hf_batch_size)
    elif name == "llamacpp":
        spec = LLMSpec(backend="llamacpp", model=args.model, n_threads=args.threads, n_ctx=args.n_ctx)
    else:
        from longread.models.packs import gguf_path
        from longread.testing import LlamaServer

        # verbose: the server logs llama.cpp's own time per request, the base of the overhead.
        server = LlamaServer(gguf_path(args.model), n_ctx=args.n_ctx, n_threads=args.threads, verbose=True).start()
        spec = LLMSpec(backend="openai", model=args.model, base_url=server.base_url,
                       concurrency=args.concurrency, timeout_s=600)
    return backend_class(name)(spec, None), server


def run_backend(name: str, args: argparse.Namespace, items: list[dict]) -> dict:
    """Generate every item with backend ``name``; per-style timings and scores."""
    from longread.eval.metrics import max_over_answers
    from longread.llm import GenRequest
    from longread.llm.prompts import clean

    t0 = time.perf_counter()
    backend, server = open_backend(name, args)
    load_s = time.perf_counter() - t0
    try:
        backend.generate([GenRequest(messages=items[0]["messages"], max_new_tokens=4)])  # warm-up
        rows = {}
        for style in dict.fromkeys(it["style"] for it in items):
            batch = [it for it in items if it["style"] == style]
            reqs = [GenRequest(messages=it["messages"], max_new_tokens=it["max_new_tokens"]) for it in batch]
            mark = server.log_size() if server is not None else 0
            t = time.perf_counter()
            gens = backend.generate(reqs)
            wall = time.perf_counter() - t
            engine_s, engine_n = server.engine_seconds(mark) if server is not None else (None, 0)
            errors = [g.error for g in gens if g.error]
            scores = [max_over_answers(clean(g.text, it["cleaner"]), it["answers"]) for g, it in zip(gens, batch)]
            ok = [g for g in gens if not g.error]
            # hf batches share one TTFT per batch: count each batch's prefill once.
            prefill_s = sum({(g.ttft_s, g.seconds): g.ttft_s for g in ok}.values())
            decode_s = sum({(g.ttft_s, g.seconds): g.seconds - g.ttft_s for g in ok}.values())
            rows[style] = {
                "n": len(gens), "errors": len(errors), "first_error": errors[0] if errors else None,
                "s_per_question": wall / len(gens),
                "prompt_tokens": sum(g.prompt_tokens for g in ok), "new_tokens": sum(g.new_tokens for g in ok),
                "prefill_tok_s": sum(g.prompt_tokens for g in ok) / prefill_s if prefill_s else None,
                "decode_tok_s": sum(max(g.new_tokens - 1, 0) for g in ok) / decode_s if decode_s else None,
                "em": sum(s[0] for s in scores) / len(scores), "f1": sum(s[1] for s in scores) / len(scores),
                "mean_new_tokens": sum(g.new_tokens for g in ok) / max(len(ok), 1),
                "answers": [g.text for g in gens[:3]],
                # llama.cpp's own seconds in the server (openai only), when it logged one per request
                "engine_s": engine_s if engine_n == len(gens) else None,
                "wall_s": wall,
            }
        return {"backend": name, "load_s": load_s, "spec": backend.spec.model_dump(exclude_defaults=True),
                "styles": rows}
    finally:
        backend.close()
        if server is not None:
            server.stop()


# --------------------------------------------------------------------------- report
def table(results: list[dict]) -> str:
    """A markdown table, one row per backend and style."""
    head = ("| backend | style | prefill tok/s | decode tok/s | s/question | EM | F1 | new tok/q | errors |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    base = {r["backend"]: r for r in results}
    for r in results:
        for style, s in r["styles"].items():
            def f(x, fmt="{:.1f}"):
                return fmt.format(x) if x is not None else "-"

            lines.append(f"| {r['backend']} | {style} | {f(s['prefill_tok_s'])} | {f(s['decode_tok_s'])} | "
                         f"{f(s['s_per_question'], '{:.2f}')} | {f(s['em'], '{:.3f}')} | {f(s['f1'], '{:.3f}')} | "
                         f"{f(s['mean_new_tokens'])} | {s['errors']} |")
    notes = []
    if "openai" in base:
        for style, s in base["openai"]["styles"].items():
            if s.get("engine_s"):
                notes.append(f"openai overhead over the server's own llama.cpp time ({style}): "
                             f"{100 * (s['wall_s'] / s['engine_s'] - 1):+.1f}% "
                             f"({s['wall_s']:.1f} s wall, {s['engine_s']:.1f} s in llama.cpp)")
    if "openai" in base and "llamacpp" in base:
        for style, s in base["openai"]["styles"].items():
            own = base["llamacpp"]["styles"].get(style)
            if own:
                notes.append(f"openai overhead over in-process llama.cpp ({style}): "
                             f"{100 * (s['s_per_question'] / own['s_per_question'] - 1):+.1f}%")
    for name in [b for b in base if b.startswith("llamacpp")] if "hf" in base else []:
        for style, s in base[name]["styles"].items():
            h = base["hf"]["styles"].get(style)
            if h and h["decode_tok_s"] and s["decode_tok_s"] and h["prefill_tok_s"] and s["prefill_tok_s"]:
                notes.append(f"{name} vs hf ({style}): decode {s['decode_tok_s'] / h['decode_tok_s']:.2f}x, "
                             f"prefill {s['prefill_tok_s'] / h['prefill_tok_s']:.2f}x, F1 {s['f1'] - h['f1']:+.3f}")
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    from longread.llm.llamacpp import default_threads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b-instruct", help="a GGUF causal-LM pack (same weights everywhere)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--styles", nargs="+", default=list(STYLES), choices=["short", "span", "free", "cite"])
    ap.add_argument("--limit", type=int, default=None, help="first N questions (default: all 40)")
    ap.add_argument("--top-k", type=int, default=5, help="BM25 passages per question")
    ap.add_argument("--free-tokens", type=int, default=256, help="max_new_tokens of the long-answer styles (>= 100)")
    ap.add_argument("--threads", type=int, default=default_threads(), help="CPU threads for every backend")
    ap.add_argument("--n-ctx", type=int, default=8192, help="llama.cpp context window (in-process and server)")
    ap.add_argument("--hf-dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--hf-batch-size", type=int, default=1, help="prompts per hf forward batch (1: per-request timings)")
    ap.add_argument("--concurrency", type=int, default=1, help="openai requests in flight")
    ap.add_argument("--llamacpp-build", type=Path, default=None, metavar="DIR",
                    help="also run backend llamacpp with the llama-cpp-python installed in DIR (pip --target), "
                         "e.g. the OpenBLAS build of scripts/llama_cpp_wheel.sh, as the row llamacpp@DIR-name")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", nargs=3, metavar=("BACKEND", "WORKLOAD", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.free_tokens < 100:
        ap.error(f"--free-tokens must be >= 100 (a long answer), got {args.free_tokens}")

    if args.child:
        name, workload, out = args.child
        result = run_backend(name, args, json.loads(Path(workload).read_text()))
        Path(out).write_text(json.dumps(result))
        return 0

    items = build_workload(args.limit, args.top_k, args.styles, args.free_tokens)
    print(f"{len(items) // len(args.styles)} questions x {len(args.styles)} styles, model {args.model}, "
          f"{args.threads} threads", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        workload = Path(tmp) / "workload.json"
        workload.write_text(json.dumps(items))
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
        runs = [(name, name, None) for name in args.backends]
        if args.llamacpp_build is not None:
            runs.append((f"llamacpp@{args.llamacpp_build.name}", "llamacpp", args.llamacpp_build.resolve()))
        for label, name, build in runs:
            out = Path(tmp) / f"{label.replace('/', '_')}.json"
            print(f"running {label} ...", file=sys.stderr)
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            if build is not None:  # that build's llama_cpp shadows the installed one
                env["PYTHONPATH"] = os.pathsep.join([str(build), *filter(None, [os.environ.get("PYTHONPATH")])])
            cmd = [sys.executable, __file__, *passthrough, "--child", name, str(workload), str(out)]
            proc = subprocess.run(cmd, env=env)
            if proc.returncode != 0:
                print(f"error: backend {label} failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            results.append({**json.loads(out.read_text()), "backend": label})
    report = table(results)
    print(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items() if k != "child"},
                                         "results": results, "table": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
