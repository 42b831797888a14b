"""Citation quality of the ``cite`` answer style on a generated cited-answer set.

The set (written once to ``OUT/set``, deterministic for a ``--seed``): ``--pdfs`` PDFs of 5 pages
(fpdf2) and ``--pages-docs`` Markdown and HTML files, their filler sentences taken from the demo
SQuAD articles shipped with longread (CC BY-SA 4.0), with two planted facts per file about made-up
names ("The access code of the Quorvane vault is 4817.") on known pages (PDF) or under known
headings (Markdown/HTML). One question per fact; its ``gold_ids`` is the file's document id.
``OUT/set/facts.jsonl`` lists where each fact was planted, ``OUT/set/questions.jsonl`` the questions
(so ``longread run --corpus OUT/set/docs --questions OUT/set/questions.jsonl`` works on it too).

Each model answers through ``longread index`` + ``longread run`` (the API equivalents): chunks of
128 tokens, ``retriever.bm25`` (top 3), ``reader.hf`` with ``prompt: cite``. Run dirs:
``OUT/run-MODEL`` (predictions.jsonl carries the citations). Reported per model (counts and
shares, no timings):

- ``em``/``f1`` (evaluator, on the answer without its markers) and ``contains`` (the gold value
  occurs in it);
- ``citation_precision``/``citation_recall`` (evaluator: a cited passage contains the gold value;
  the fact's document is cited);
- ``marked``: answers with at least one ``[n]`` marker; ``cited``: marked citations in all;
  ``right_place``: answers citing a passage of the fact's file that holds the fact (and, for PDFs,
  names the fact's page); ``same_heading``: Markdown/HTML answers whose such citation also names the
  fact's section (a chunk is named after the section it starts in).

Needs fpdf2 (the ``test`` extra) to write the PDFs, and the two model packs.

    python benchmarks/citations.py                                 # qwen2.5-0.5b-instruct and smollm2, all questions
    python benchmarks/citations.py --models smollm2-135m-instruct --limit 3 --out /tmp/cite-bench
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["qwen2.5-0.5b-instruct", "smollm2-135m-instruct"]

# (fact, question, kind of value); {e} is a made-up name, {v} the value.
FACTS = [
    ("The access code of the {e} vault is {v}.", "What is the access code of the {e} vault?", "code"),
    ("The {e} expedition was led by {v}.", "Who led the {e} expedition?", "person"),
    ("The {e} observatory was opened in {v}.", "In what year was the {e} observatory opened?", "year"),
    ("The {e} festival is held every spring in the town of {v}.", "In which town is the {e} festival held every spring?", "town"),
]
_FIRST = ["Ilse", "Tomas", "Anouk", "Bram", "Selma", "Oskar", "Wren", "Idris", "Maren", "Teodor", "Linnea", "Caspar"]
_LAST = ["Vandermeer", "Okonkwo", "Haldane", "Petrakis", "Lindqvist", "Moravec", "Achterberg", "Castellano", "Nyberg", "Duvall"]
_TOWNS = ["Brennholt", "Caldera Rossa", "Fenwick Hollow", "Marrowdale", "Ostervik", "Pellham Cross", "Quillan", "Saltmere",
          "Tarnow Vale", "Uxbridge Fen", "Velmont", "Wickerby"]
_SYL = ["quor", "vane", "zel", "thar", "mir", "dox", "kal", "bren", "ost", "vey", "lum", "sarn", "tek", "oru", "fal", "pim"]
HEADINGS = ["Background", "Operations", "Records", "Outlook"]


def _names(rng: random.Random, n: int) -> list[str]:
    # No two names share a syllable set: "Tekpimkal" and "Pimkaltek" look alike to a small model.
    out: list[str] = []
    seen: set[frozenset[str]] = set()
    while len(out) < n:
        syl = rng.sample(_SYL, 3)
        if frozenset(syl) not in seen:
            seen.add(frozenset(syl))
            out.append("".join(syl).capitalize())
    return out


def _value(rng: random.Random, kind: str, used: set[str]) -> str:
    while True:
        v = {"code": lambda: str(rng.randint(1000, 9999)),
             "person": lambda: f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
             "year": lambda: str(rng.randint(1851, 1989)),
             "town": lambda: rng.choice(_TOWNS)}[kind]()
        if v not in used:
            used.add(v)
            return v


def _filler_sentences() -> list[str]:
    from longread.data import demo_paths, load_corpus

    corpus, _ = demo_paths()
    text = " ".join(d.text for d in load_corpus(corpus))
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 40 <= len(s.strip()) <= 300]
    return [s for s in sents if s.isascii()]  # the PDF font is Latin-1 when DejaVu is absent


def make_set(out: Path, n_pdfs: int, n_pages_docs: int, seed: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """Write the documents (under ``out/docs``), ``questions.jsonl`` and ``facts.jsonl`` into ``out``;
    return (facts, questions).

    A set already there with the same parameters is reused as it is (a PDF written again differs
    in its creation date, which would make the index and ``--resume`` refuse the changed files).
    """
    from longread.testing import write_pdf
    from longread.types import Question

    params = {"pdfs": n_pdfs, "pages_docs": n_pages_docs, "seed": seed, "facts": FACTS, "version": 2}
    stamp = out / "params.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == json.loads(json.dumps(params)):
        facts = [json.loads(line) for line in (out / "facts.jsonl").read_text(encoding="utf-8").splitlines()]
        qs = [Question.model_validate_json(line) for line in (out / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
        return facts, qs
    if out.exists():
        import shutil

        shutil.rmtree(out)
    rng = random.Random(seed)
    filler = _filler_sentences()
    n_files = n_pdfs + 2 * n_pages_docs
    names = _names(rng, 2 * n_files)
    used: set[str] = set()
    facts: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)

    def para(n: int) -> list[str]:
        return [rng.choice(filler) for _ in range(n)]

    def plant(body: list[str], fact: str) -> None:
        body.insert(rng.randint(1, len(body) - 1), fact)

    files = [("pdf", f"reports/report-{i:02d}.pdf") for i in range(n_pdfs)]
    files += [("md", f"notes/notes-{i:02d}.md") for i in range(n_pages_docs)]
    files += [("html", f"web/page-{i:02d}.html") for i in range(n_pages_docs)]
    for fi, (kind, rel) in enumerate(files):
        path = out / "docs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        where = rng.sample(range(5 if kind == "pdf" else len(HEADINGS)), 2)  # two pages / sections
        sections = [para(8) for _ in range(5 if kind == "pdf" else len(HEADINGS))]
        for k, slot in enumerate(where):
            tpl, qtpl, vkind = rng.choice(FACTS)
            e, v = names[2 * fi + k], _value(rng, vkind, used)
            plant(sections[slot], tpl.format(e=e, v=v))
            facts.append({"id": f"{Path(rel).stem}-{k}", "doc_id": rel, "source": rel, "question": qtpl.format(e=e),
                          "answer": v, "page": slot + 1 if kind == "pdf" else None,
                          "heading": HEADINGS[slot] if kind != "pdf" else None})
        title = f"Field report {fi}"
        if kind == "pdf":
            write_pdf(path, [" ".join(s) for s in sections], title=title)
        elif kind == "md":
            path.write_text(f"# {title}\n\n" + "".join(f"## {h}\n\n{' '.join(s)}\n\n" for h, s in zip(HEADINGS, sections)),
                            encoding="utf-8")
        else:
            body = "".join(f"<h2>{h}</h2>\n<p>{' '.join(s)}</p>\n" for h, s in zip(HEADINGS, sections))
            path.write_text(f"<html><head><title>{title}</title></head><body><h1>{title}</h1>\n{body}</body></html>\n",
                            encoding="utf-8")
    questions = [Question(id=f["id"], question=f["question"], answers=[f["answer"]], gold_ids=[f["doc_id"]]) for f in facts]
    (out / "questions.jsonl").write_text("".join(q.model_dump_json() + "\n" for q in questions), encoding="utf-8")
    (out / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts), encoding="utf-8")
    stamp.write_text(json.dumps(params), encoding="utf-8")  # last: the set is complete
    return facts, questions


def config(model: str) -> dict[str, Any]:
    """The benchmark's config for ``model``, or ``MODEL@BACKEND`` (e.g. ``qwen2.5-0.5b-instruct@llamacpp``)."""
    name, _, backend = model.partition("@")
    return {
        "name": f"cite-{model}",
        "chunker": {"kind": "tokens", "size": 128, "overlap": 16},
        "stages": [
            {"key": "retriever.bm25", "params": {"top_k": 3}},
            {"key": "reader.hf", "params": {"llm": {"backend": backend or "hf", "model": name}, "prompt": "cite", "max_passages": 3, "max_new_tokens": 96},
             "resources": {"batch_size": 4}},
        ],
    }


def place_counts(run_dir: Path, facts: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Counts over the run's predictions: ``marked`` (answers with a marker), ``cited`` (marked
    citations), ``right_place`` (answers citing a passage of the fact's file that holds the fact,
    on the fact's page for PDFs) and ``same_heading`` (Markdown/HTML answers whose such citation
    names the fact's section; a chunk that starts in the section before is named after that one)."""
    from longread.eval.evaluator import read_predictions

    marked = cited = right = heading = 0
    for p in read_predictions(run_dir / "predictions.jsonl"):
        f = facts[p.id]
        cs = [c for c in p.citations if c.cited]
        marked += bool(cs)
        cited += len(cs)
        holding = [c for c in cs if c.source == f["source"] and f["answer"] in c.text]
        right += any(f["page"] in c.pages if f["page"] else True for c in holding)
        heading += any(c.heading == f["heading"] for c in holding) if f["heading"] else 0
    return {"marked": marked, "cited": cited, "right_place": right, "same_heading": heading}


def contains_share(run_dir: Path, facts: dict[str, dict[str, Any]]) -> float:
    from longread.eval.evaluator import read_predictions
    from longread.eval.metrics import answer_in_texts
    from longread.llm.prompts import strip_citations

    preds = list(read_predictions(run_dir / "predictions.jsonl"))
    hits = sum(answer_in_texts([facts[p.id]["answer"]], [strip_citations(p.answer or "")]) for p in preds)
    return hits / max(1, len(preds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-citations"))
    ap.add_argument("--models", nargs="+", default=MODELS, help="pack names, or MODEL@BACKEND (hf, llamacpp)")
    ap.add_argument("--pdfs", type=int, default=10, help="5-page PDFs (two facts each)")
    ap.add_argument("--pages-docs", type=int, default=3, help="Markdown files and HTML files, this many of each (two facts each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)

    from longread.loaders import load_documents
    from longread.pipelines.pipeline import Pipeline
    from longread.pipelines.runner import run

    out = Path(args.out)
    set_dir = out / "set"
    facts_list, questions = make_set(set_dir, args.pdfs, args.pages_docs, args.seed)
    facts = {f["id"]: f for f in facts_list}
    docs = load_documents(set_dir / "docs").collect()
    print(f"set: {len(docs)} files ({args.pdfs} PDFs, {args.pages_docs} Markdown, {args.pages_docs} HTML), "
          f"{len(questions)} questions in {set_dir / 'docs'}")
    rows = []
    for model in args.models:
        pipe = Pipeline.from_config(config(model))
        rd = out / f"run-{model}"
        res = run(pipe, docs, questions, rd, index_dir=out / "index", limit=args.limit, resume=args.resume,
                  inputs={"corpus": str((set_dir / "docs").resolve())})
        m = res.metrics
        row = {"model": model, "n": m["n"], "em": m.get("em"), "f1": m.get("f1"), "contains": contains_share(rd, facts),
               "citation_precision": m.get("citation_precision"), "citation_recall": m.get("citation_recall"),
               **place_counts(rd, facts)}
        rows.append(row)
        print(json.dumps(row))
    cols = ["model", "n", "em", "f1", "contains", "citation_precision", "citation_recall", "marked", "cited", "right_place",
            "same_heading"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
