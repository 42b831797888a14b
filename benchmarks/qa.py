"""End-to-end QA: rag_bm25, rag_dense, rag_hybrid and long_context side by side, same reader.

Datasets (from ``--data``, default ``../shared/data``):
- SQuAD v1.1 dev articles as long documents (~5k words each), questions scoped to their article;
- the HotpotQA dev sample (100 questions, each scoped to its ~10 gold + distractor paragraphs).

Prints one table per dataset: EM, F1, answer recall, recall@k, tokens to the reader, seconds per
question. Run dirs land in ``--out`` (default ``runs/bench-qa``), one per (dataset, config), so a run
can be inspected, re-evaluated or resumed (``--resume``).

    python benchmarks/qa.py                          # 200 SQuAD questions + the HotpotQA sample
    python benchmarks/qa.py --squad-questions 40 --hotpot-questions 20 --configs rag_bm25 long_context
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from longread.data import load_hotpotqa, load_squad
from longread.eval.compare import compare
from longread.pipelines.pipeline import Pipeline, resolve_config_path
from longread.pipelines.runner import run

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["rag_bm25", "rag_dense", "rag_hybrid", "long_context"]


def with_model(pipe_cfg, model: str):
    """Swap every reader's model (the benchmark compares retrieval setups with one reader)."""
    for st in pipe_cfg.stages:
        if st.key.startswith("reader.") and "model" in st.params:
            st.params["model"] = model
    return pipe_cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-qa"))
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--model", default="qwen2.5-0.5b-instruct")
    ap.add_argument("--squad-articles", type=int, default=48)
    ap.add_argument("--squad-questions", type=int, default=200, help="spread over the articles")
    ap.add_argument("--hotpot-questions", type=int, default=100)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"data dir {data} not found (pass --data)", file=sys.stderr)
        return 2

    sets = {}
    if args.squad_questions > 0:
        docs, qs = load_squad(data / "squad" / "squad-dev-1.1.rebuilt.json", max_articles=args.squad_articles)
        per = max(1, -(-args.squad_questions // len(docs)))
        docs, qs = load_squad(
            data / "squad" / "squad-dev-1.1.rebuilt.json", max_articles=args.squad_articles, questions_per_article=per
        )
        sets["squad-long"] = (docs, qs[: args.squad_questions])
    if args.hotpot_questions > 0:
        docs, qs = load_hotpotqa(data / "hotpotqa" / "hotpotqa_explorer_dev_sample100.json")
        sets["hotpotqa"] = (docs, qs[: args.hotpot_questions])

    out = Path(args.out)
    for set_name, (docs, qs) in sets.items():
        words = sum(len(d.text.split()) for d in docs) / len(docs)
        print(f"\n## {set_name}: {len(docs)} documents (mean {words:.0f} words), {len(qs)} questions, reader {args.model}")
        dirs = []
        for name in args.configs:
            path = resolve_config_path(name)
            pipe = Pipeline.from_yaml(path)
            pipe = Pipeline.from_config(with_model(pipe.config, args.model))
            run_dir = out / set_name / name
            t0 = time.perf_counter()
            res = run(
                pipe, docs, qs, run_dir, index_dir=out / set_name / f"index-{name}", resume=args.resume, show_progress=True,
                inputs={"dataset": set_name}, metric_style="hotpotqa" if set_name == "hotpotqa" else "squad",
            )
            m = res.metrics
            print(f"  {name}: F1 {m['f1']:.3f} EM {m['em']:.3f} in {time.perf_counter() - t0:.0f}s", flush=True)
            dirs.append(run_dir)
        print()
        print(compare(dirs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
