"""KV-level readers side by side: speed, memory and quality with one model.

Readers: ``reader.long_context`` (whole document, head+tail cut to the model window),
``reader.hf`` (RAG: BM25 over 128-token chunks of the question's document, 2,048 context tokens),
``reader.retrolm`` (paged KV retrieval, 2,048-token KV budget) and ``reader.refrag`` (when registered).

Each reader runs in its own subprocess (fresh ``ru_maxrss``; RSS is also sampled every 20 ms so
each measurement gets its own peak). Per context length (default 1k/4k/8k/16k tokens of essay
filler with a planted fact) it reports time to first token, decode tokens/s, peak RSS and the
RSS growth over the loaded model; for retrolm also the second question on the same document
(page KV reused from the on-disk cache: no prefill). Quality: a needle-in-a-haystack grid (facts
planted at depths 0-100% of Paul Graham essays) and F1 on SQuAD articles read as long documents.

    python benchmarks/kv_readers.py                  # default: ~45 min of CPU per reader-heavy run on 2 idle cores
    python benchmarks/kv_readers.py --quick          # ~10 min on 2 idle cores (1k/4k contexts)
    python benchmarks/kv_readers.py --retrolm-memory --lengths 2048 8192   # retrolm peak RSS growth only (~3 min)
        # smollm2-135m, 1 thread, first question: 308 / 1177 MiB at 2k / 8k tokens while the whole
        # page KV was held and then written (format 1); 140 / 128 MiB (156 at 16k) with pages
        # written as prefilled and only the selected ones read back (format 2).
    python benchmarks/kv_readers.py --parallel ...   # readers at once: same machine load for all
    python benchmarks/kv_readers.py --model qwen2.5-0.5b-instruct --json out.json

Needs ``--data`` (default ``../shared/data`` beside the repo) with ``paul_graham/essays`` and
``squad/squad-dev-1.1.rebuilt.json``. Numbers are measured on CPU with ``--threads`` torch
threads (default 1: on a shared 2-core machine more threads only add contention).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDLES = [
    ("The secret ingredient in Grandma Okafor's soup is smoked paprika.", "What is the secret ingredient in Grandma Okafor's soup?", "smoked paprika"),
    ("The password to the old lighthouse is BLUE HERON 42.", "What is the password to the old lighthouse?", "BLUE HERON 42"),
    ("Captain Velasquez named her ship the Midnight Tortoise.", "What did Captain Velasquez name her ship?", "the Midnight Tortoise"),
    ("The annual kite festival in Port Emery is held in Oktober Square.", "Where is the annual kite festival in Port Emery held?", "Oktober Square"),
    ("Professor Lindqvist keeps his spare keys inside a hollow copy of Moby Dick.", "Where does Professor Lindqvist keep his spare keys?", "inside a hollow copy of Moby Dick"),
]
READERS = ["reader.long_context", "reader.hf", "reader.retrolm", "reader.refrag"]


# --------------------------------------------------------------------- workload
def _filler(data: Path) -> str:
    essays = sorted((data / "paul_graham" / "essays").glob("*.txt"))
    if not essays:
        raise FileNotFoundError(f"no essays under {data / 'paul_graham' / 'essays'}; pass --data")
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace").strip() for p in essays)


def _haystack(tok, filler: str, n_tokens: int, needle: str, depth: float, offset: int) -> str:
    """About ``n_tokens`` tokens of filler (starting ``offset`` chars in) with ``needle`` at ``depth``."""
    ids = tok(filler[offset:] + filler[:offset], add_special_tokens=False, verbose=False)["input_ids"]
    body = ids[: max(0, n_tokens - len(tok(needle, add_special_tokens=False)["input_ids"]) - 2)]
    cut = int(len(body) * depth)
    head, tail = tok.decode(body[:cut]), tok.decode(body[cut:])
    # Put the needle between sentences so it reads as part of the text.
    if head and not head.rstrip().endswith((".", "!", "?")):
        j = head.rfind(". ")
        if j > 0 and depth < 1.0:
            head, tail = head[: j + 1], head[j + 1 :] + tail
    return (head.rstrip() + " " + needle + " " + tail.lstrip()).strip()


def build_workload(args: argparse.Namespace) -> dict:
    """Documents and questions for every part of the benchmark (same for every reader)."""
    from longread.data import load_squad
    from longread.models.hub import ModelHub

    tok = ModelHub().tokenizer(args.model)
    filler = _filler(args.data)
    docs, speed, needle = [], [], []
    for i, n in enumerate(args.lengths):
        text, q, a = NEEDLES[i % len(NEEDLES)]
        docs.append({"id": f"speed-{n}", "text": _haystack(tok, filler, n, text, 0.5, 7919 * (i + 1))})
        second = NEEDLES[(i + 1) % len(NEEDLES)]
        speed.append(
            {
                "length": n,
                "first": {"id": f"speed-{n}-q1", "question": q, "answers": [a], "doc_ids": [f"speed-{n}"]},
                # Asked second on the same document: a question the text does not answer, so only speed counts.
                "second": {"id": f"speed-{n}-q2", "question": second[1], "answers": [second[2]], "doc_ids": [f"speed-{n}"]},
            }
        )
    for n in args.needle_lengths:
        for j, depth in enumerate(args.depths):
            text, q, a = NEEDLES[j % len(NEEDLES)]
            did = f"needle-{n}-{int(depth * 100)}"
            docs.append({"id": did, "text": _haystack(tok, filler, n, text, depth, 104729 * (j + 1) + n)})
            needle.append({"length": n, "depth": depth, "q": {"id": did + "-q", "question": q, "answers": [a], "doc_ids": [did]}})
    squad_docs, squad_qs = load_squad(
        args.data / "squad" / "squad-dev-1.1.rebuilt.json", as_long_documents=True, questions_per_article=args.squad_questions
    )
    # The shortest articles (still 2-3k words, ~3-4k tokens) keep the long-context reader affordable.
    chosen = sorted(squad_docs, key=lambda d: len(d.text))[: args.squad_articles]
    keep = {d.id for d in chosen}
    docs += [{"id": d.id, "text": d.text, "title": d.title} for d in chosen]
    squad = [q.model_dump() for q in squad_qs if q.doc_ids and q.doc_ids[0] in keep]
    docs.append({"id": "warmup", "text": "Warm-up document. " + filler[:400]})
    lengths = {d["id"]: len(tok(d["text"], add_special_tokens=False, verbose=False)["input_ids"]) for d in docs}
    return {"docs": docs, "speed": speed, "needle": needle, "squad": squad, "doc_tokens": lengths}


def reader_config(key: str, model: str, budget: int, refrag_projector: str = "default", retrolm_scorer: str = "quest") -> dict:
    """Pipeline config of one reader, all with the same model and comparable budgets."""
    if key == "reader.hf":
        stages = [
            {"key": "retriever.bm25", "params": {"top_k": 16}},
            {"key": "reader.hf", "params": {"model": model, "max_context_tokens": budget, "max_passages": 16}},
        ]
    elif key == "reader.long_context":
        stages = [{"key": key, "params": {"model": model, "max_context_tokens": 32768}}]
    elif key == "reader.retrolm":
        stages = [{"key": key, "params": {"model": model, "budget_tokens": budget, "scorer": retrolm_scorer}}]
    elif key == "reader.refrag":
        stages = [{"key": key, "params": {"model": model, "projector": refrag_projector}}]
    else:
        stages = [{"key": key, "params": {"model": model}}]
    for s in stages:
        s["resources"] = {"batch_size": 1}
    chunker = {"kind": "tokens", "size": 128, "overlap": 16}
    return {"name": key.replace(".", "-"), "chunker": chunker, "stages": stages}


# ------------------------------------------------------------------------ worker
class RssSampler:
    """Peak resident memory since the last ``reset``, sampled from /proc every 20 ms."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mb())
            time.sleep(0.02)

    def reset(self) -> float:
        self.peak = self.rss_mb()
        return self.peak

    def stop(self) -> None:
        self._stop.set()


def _one(pipe, index_dir: Path, q: dict, sampler: RssSampler, key: str) -> dict:
    from longread.eval.costs import question_costs
    from longread.eval.metrics import max_over_answers
    from longread.types import Question

    base = sampler.reset()
    t0 = time.perf_counter()
    st = pipe.answer([Question(**q)], index_dir=index_dir)[0]
    wall = time.perf_counter() - t0
    tr = st.trace
    if tr.get("error"):
        return {"id": q["id"], "error": str(tr["error"])[:300]}
    em, f1 = max_over_answers(st.answer or "", q["answers"])
    # Typed usage, or the trace keys of a reader not moved to it yet.
    cost = question_costs(st.usage, tr)
    ttft = cost.ttft_s
    reader_s = cost.stage_seconds.get(key, wall)
    new = int(cost.new_tokens or 0)
    decode_s = tr.get("decode_s", max(1e-9, reader_s - (ttft or 0.0)))
    return {
        "id": q["id"],
        "answer": st.answer,
        "em": em,
        "f1": f1,
        "hit": any(a.lower() in (st.answer or "").lower() for a in q["answers"]),
        "ttft_s": ttft,
        "seconds": wall,
        "new_tokens": new,
        "decode_tok_s": (new - 1) / decode_s if new > 1 and decode_s > 0 else None,
        "reader_tokens": cost.reader_tokens,
        "peak_rss_mb": sampler.peak,
        "rss_growth_mb": sampler.peak - base,
        "prefill_reused": tr.get("prefill_reused"),
        "pages_selected": tr.get("pages_selected"),
        "pages_total": tr.get("pages_total"),
        "reader_truncated": tr.get("reader_truncated"),
    }


def worker(
    key: str, work_path: Path, out_path: Path, model: str, budget: int, threads: int, dtype: str, refrag_projector: str,
    retrolm_scorer: str = "quest",
) -> None:
    """Run every measurement for one reader; write the results as JSON."""
    import torch

    torch.set_num_threads(threads)
    from longread.models.hub import ModelHub
    from longread.pipelines.pipeline import Pipeline
    from longread.types import Document

    work = json.loads(work_path.read_text())
    sampler = RssSampler()
    result: dict = {"reader": key, "speed": [], "needle": [], "squad": []}
    with tempfile.TemporaryDirectory(prefix="kv-readers-") as tmp:
        pipe = Pipeline.from_config(reader_config(key, model, budget, refrag_projector, retrolm_scorer))
        index_dir = Path(tmp) / "index"
        t0 = time.perf_counter()
        pipe.index([Document(**d) for d in work["docs"]], index_dir, show_progress=False)
        result["index_s"] = time.perf_counter() - t0
        # A fresh page-KV / embedding cache: the first question on a document really prefills it.
        ctx = pipe.context(index_dir)
        ctx.cache_dir = Path(tmp) / "cache"
        ctx.models = ModelHub(dtype=dtype)
        warm = {"id": "warmup-q", "question": "What is this?", "answers": ["warm"], "doc_ids": ["warmup"]}
        t0 = time.perf_counter()
        result["warmup"] = _one(pipe, index_dir, warm, sampler, key)
        result["load_s"] = time.perf_counter() - t0
        result["rss_loaded_mb"] = sampler.rss_mb()
        for item in work["speed"]:
            row = {"length": item["length"], "first": _one(pipe, index_dir, item["first"], sampler, key)}
            if key == "reader.retrolm":
                row["second"] = _one(pipe, index_dir, item["second"], sampler, key)
            result["speed"].append(row)
            print(f"[{key}] speed {item['length']}: {json.dumps(row)[:300]}", file=sys.stderr, flush=True)
        for item in work["needle"]:
            result["needle"].append({"length": item["length"], "depth": item["depth"], **_one(pipe, index_dir, item["q"], sampler, key)})
        for q in work["squad"]:
            result["squad"].append(_one(pipe, index_dir, q, sampler, key))
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sampler.stop()
    out_path.write_text(json.dumps(result, indent=1))


# ------------------------------------------------------- retrolm memory while reading
def retrolm_memory_worker(model: str, n_tokens: int, budget: int, threads: int, data: Path) -> dict:
    """Peak RSS growth of ``reader.retrolm`` reading one ``n_tokens`` document (fresh process).

    The baseline is the RSS after the model is loaded and a short warm-up document was read, so
    the growth is what reading (paging, prefill, writing the page-KV cache, scoring, decoding)
    costs on top. ``model="tiny"`` uses a tiny random model built in a temp dir.
    """
    import torch

    torch.set_num_threads(threads)
    from longread.models.hub import ModelHub
    from longread.pipelines.store import CorpusStore
    from longread.readers.retrolm import RetroLMReader
    from longread.stage import RunContext
    from longread.types import Document, QAState, Question

    with tempfile.TemporaryDirectory(prefix="retrolm-mem-") as tmp:
        if model == "tiny":
            from longread.testing import tiny_causal_lm_dir

            name, hub = str(tiny_causal_lm_dir(Path(tmp) / "tiny")), ModelHub(cache_dir=Path(tmp) / "hub", dtype="float32")
        else:
            name, hub = model, ModelHub(dtype="float32")
        tok = hub.tokenizer(name)
        try:
            filler = _filler(data)
        except FileNotFoundError:
            filler = " ".join(f"Report {i}: the committee reviewed the budget and the schedule." for i in range(4000))
        text, q, _ = NEEDLES[0]
        docs = [
            Document(id="warm", text=_haystack(tok, filler, 300, text, 0.5, 11)),
            Document(id="long", text=_haystack(tok, filler, n_tokens, text, 0.5, 7919)),
        ]
        if model == "tiny":
            budget = min(budget, 1024)  # the tiny model has 2,048 positions
        r = RetroLMReader({"model": name, "budget_tokens": budget, "max_new_tokens": 8})
        r.setup(RunContext(models=hub, store=CorpusStore(docs, []), cache_dir=Path(tmp) / "cache"))
        sampler = RssSampler()
        r([QAState(question=Question(id="w", question=q, doc_ids=["warm"]))])
        n_doc = len(tok(docs[1].text, add_special_tokens=False)["input_ids"])
        n_layers, _, n_kv, d = r.kv.layout
        # What holding the whole document's page KV (keys and values, float32) would take.
        out = {"model": model, "budget": budget, "doc_tokens": n_doc, "doc_kv_mb": n_doc * n_layers * n_kv * d * 2 * 4 / 2**20}
        for label in ("first", "second"):  # second: page KV from the disk cache
            base = sampler.reset()
            t0 = time.perf_counter()
            st = r([QAState(question=Question(id=label, question=q, doc_ids=["long"]))])[0]
            time.sleep(0.05)  # one more sample after the call
            out[label] = {
                "rss_growth_mb": sampler.peak - base,
                "seconds": time.perf_counter() - t0,
                "pages": f"{st.trace['pages_selected']}/{st.trace['pages_total']}",
                "reused": st.trace["prefill_reused"],
            }
        sampler.stop()
    return out


def retrolm_memory(args: argparse.Namespace) -> str:
    """One fresh subprocess per (model, length); a table of peak RSS growth while reading."""
    rows = ["| model | budget | doc tokens | doc page KV MiB | 1st question RSS growth MiB | s | 2nd (cached) RSS growth MiB | s | pages kept/total |",
            "|---|---|---|---|---|---|---|---|---|"]
    for model in args.memory_models:
        for n in args.lengths:
            cmd = [sys.executable, __file__, "--memory-worker", model, "--memory-tokens", str(n), "--budget", str(args.budget),
                   "--threads", str(args.threads), "--data", str(args.data)]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append(f"| {model} | {n} | | failed: {proc.stderr.strip().splitlines()[-1:]} ||||| ")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            a, b = r["first"], r["second"]
            rows.append(
                f"| {model} | {r['budget']} | {r['doc_tokens']} | {r['doc_kv_mb']:.0f} | {a['rss_growth_mb']:.0f} | {a['seconds']:.1f} | "
                f"{b['rss_growth_mb']:.0f} | {b['seconds']:.1f} | {a['pages']} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join([f"# reader.retrolm peak RSS growth while reading one document ({args.threads} thread(s))", ""] + rows)


# ------------------------------------------------------------------------ report
def _fmt(v, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def report(results: list[dict], work: dict, args: argparse.Namespace) -> str:
    """The printed tables."""
    out = [f"# KV readers, model {args.model} ({args.dtype}), budget {args.budget} tokens, {args.threads} torch thread(s)", ""]
    out.append("## Speed and memory (one question per context; RSS growth = peak over the loaded model)")
    out.append("| reader | context | doc tokens | reader tokens | TTFT s | decode tok/s | peak RSS MiB | RSS growth MiB | answer ok |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for row in r.get("speed", []):
            f = row["first"]
            tokens = work["doc_tokens"][f"speed-{row['length']}"]
            if "error" in f:
                out.append(f"| {r['reader']} | {row['length']} | {tokens} | error: {f['error'][:80]} |||||| ")
                continue
            out.append(
                f"| {r['reader']} | {row['length']} | {tokens} | {f['reader_tokens']} | {_fmt(f['ttft_s'])} | "
                f"{_fmt(f['decode_tok_s'], '.1f')} | {_fmt(f['peak_rss_mb'], '.0f')} | {_fmt(f['rss_growth_mb'], '.0f')} | {f['hit']} |"
            )
    retro = next((r for r in results if r["reader"] == "reader.retrolm" and r.get("speed")), None)
    if retro:
        out += ["", "## reader.retrolm: first vs second question on the same document (page KV from the disk cache)"]
        out.append("| context | TTFT 1st s | TTFT 2nd s | speed-up | 2nd reused prefill | pages kept / total |")
        out.append("|---|---|---|---|---|---|")
        for row in retro["speed"]:
            a, b = row["first"], row.get("second", {})
            if "error" in a or "error" in b:
                out.append(f"| {row['length']} | error ||||| ")
                continue
            out.append(
                f"| {row['length']} | {_fmt(a['ttft_s'])} | {_fmt(b['ttft_s'], '.3f')} | {a['ttft_s'] / b['ttft_s']:.1f}x | "
                f"{b['prefill_reused']} | {b['pages_selected']}/{b['pages_total']} |"
            )
    out += ["", "## Needle in a haystack (answer contains the planted fact), rows: length, columns: depth"]
    depths = sorted({n["depth"] for n in work["needle"]})
    for r in results:
        out.append(f"### {r['reader']}")
        out.append("| length | " + " | ".join(f"{int(d * 100)}%" for d in depths) + " | F1 |")
        out.append("|---|" + "---|" * (len(depths) + 1))
        for n in sorted({x["length"] for x in r.get("needle", [])}):
            cells = {x["depth"]: x for x in r["needle"] if x["length"] == n}
            marks = ["err" if "error" in cells.get(d, {"error": 1}) else ("yes" if cells[d]["hit"] else "no") for d in depths]
            f1 = _mean([c.get("f1") for c in cells.values()])
            out.append(f"| {n} | " + " | ".join(marks) + f" | {_fmt(f1)} |")
    out += ["", f"## SQuAD articles as long documents ({len(work['squad'])} questions)"]
    out.append("| reader | EM | F1 | mean reader tokens | mean s/question | errors |")
    out.append("|---|---|---|---|---|---|")
    for r in results:
        rows = r.get("squad", [])
        ok = [x for x in rows if "error" not in x]
        out.append(
            f"| {r['reader']} | {_fmt(_mean([x['em'] for x in ok]))} | {_fmt(_mean([x['f1'] for x in ok]))} | "
            f"{_fmt(_mean([x['reader_tokens'] for x in ok]), '.0f')} | {_fmt(_mean([x['seconds'] for x in ok]))} | {len(rows) - len(ok)} |"
        )
    for r in results:
        if r.get("failed"):
            out.append(f"\n{r['reader']} failed: {r['failed']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--budget", type=int, default=2048, help="context/KV budget of the RAG and RetroLM readers")
    ap.add_argument("--readers", nargs="+", default=READERS)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    ap.add_argument("--needle-lengths", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--squad-articles", type=int, default=2)
    ap.add_argument("--squad-questions", type=int, default=4, help="questions per article")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--refrag-projector", default="default", help="reader.refrag projector ('random' for timing only)")
    ap.add_argument("--retrolm-scorer", default="quest", help="reader.retrolm page scorer: quest, mean_key, trained or a path")
    ap.add_argument(
        "--dtype", default="float32", help="model dtype for every reader (bf16 matmuls are ~4x slower than fp32 on CPUs without avx512_bf16)"
    )
    ap.add_argument("--quick", action="store_true", help="1k/4k speed, 4k needles at 25%%/75%%, 1 article x 2 questions")
    ap.add_argument(
        "--parallel", action="store_true", help="run the reader subprocesses at once (on a shared machine their timings then see the same load)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write all raw results here")
    ap.add_argument(
        "--retrolm-memory", action="store_true", help="only print reader.retrolm's peak RSS growth reading one document per --lengths"
    )
    ap.add_argument("--memory-models", nargs="+", default=["tiny", "smollm2-135m-instruct"], help="models of --retrolm-memory")
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory-tokens", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(retrolm_memory_worker(args.memory_worker, args.memory_tokens, args.budget, args.threads, args.data)))
        return 0
    if args.retrolm_memory:
        print(retrolm_memory(args))
        return 0
    if args.worker:
        worker(args.worker, args.work, args.out, args.model, args.budget, args.threads, args.dtype, args.refrag_projector, args.retrolm_scorer)
        return 0
    if args.quick:
        args.lengths, args.needle_lengths, args.depths = [1024, 4096], [4096], [0.25, 0.75]
        args.squad_articles, args.squad_questions = 1, 2
    from longread import registry

    known = set(registry.keys())
    readers = [r for r in args.readers if r in known]
    skipped = [r for r in args.readers if r not in known]
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp:
        work = build_workload(args)
        work_path = Path(tmp) / "work.json"
        work_path.write_text(json.dumps(work))
        procs = []
        for key in readers:
            out = Path(tmp) / f"{key}.json"
            cmd = [sys.executable, __file__, "--worker", key, "--work", str(work_path), "--out", str(out),
                   "--model", args.model, "--budget", str(args.budget), "--threads", str(args.threads), "--dtype", args.dtype,
                   "--refrag-projector", args.refrag_projector, "--retrolm-scorer", args.retrolm_scorer]
            err = open(Path(tmp) / f"{key}.err", "w")
            procs.append((key, out, subprocess.Popen(cmd, cwd=ROOT, stderr=err, text=True), err, time.perf_counter()))
            if not args.parallel:
                procs[-1][2].wait()
        results = []
        for key, out, proc, err, t0 in procs:
            proc.wait()
            err.close()
            if proc.returncode != 0 or not out.is_file():
                tail = (Path(tmp) / f"{key}.err").read_text().strip().splitlines()[-3:]
                results.append({"reader": key, "failed": " | ".join(tail)[:500]})
            else:
                results.append(json.loads(out.read_text()))
            print(f"{key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    text = report(results, work, args)
    if skipped:
        text += f"\n\nnot registered (skipped): {', '.join(skipped)}"
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "doc_tokens": work["doc_tokens"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
