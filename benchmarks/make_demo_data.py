"""Regenerate the demo set in ``longread/data/demo/`` from SQuAD v1.1 dev (CC BY-SA 4.0).

Deterministic: the same input file gives byte-identical output.

    python benchmarks/make_demo_data.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longread.data import load_squad, spread, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
# Four articles of moderate length (about 2.3k-3k words each, ~10.7k in all) on different topics,
# so a 0.5B reader answers the demo in a minute or two on two cores.
ARTICLES = ("Amazon_rainforest", "1973_oil_crisis", "Packet_switching", "Victoria_(Australia)")
QUESTIONS_PER_ARTICLE = 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "longread" / "data" / "demo")
    args = ap.parse_args()
    docs, questions = load_squad(args.data / "squad" / "squad-dev-1.1.rebuilt.json", scope_to_article=False)
    by_id = {d.id: d for d in docs}
    missing = [a for a in ARTICLES if a not in by_id]
    if missing:
        raise SystemExit(f"articles not found in SQuAD dev: {missing}")
    out_docs = [by_id[a] for a in ARTICLES]
    out_qs = []
    for a in ARTICLES:
        out_qs.extend(spread([q for q in questions if q.gold_ids == [a]], QUESTIONS_PER_ARTICLE))
    write_jsonl(args.out / "corpus.jsonl", out_docs)
    write_jsonl(args.out / "questions.jsonl", out_qs)
    words = sum(len(d.text.split()) for d in out_docs)
    print(f"wrote {len(out_docs)} documents ({words} words) and {len(out_qs)} questions to {args.out}")


if __name__ == "__main__":
    main()
