"""Answer quality on long documents: RAG configs against the long-context reader, per set and reader.

Sets (built from ``--data``, default ``../shared/data``; at least ``--questions`` per set, seeded):

- ``squad-article``: SQuAD v1.1 dev articles as single long documents (~5.3k words), questions
  sampled evenly over the 48 articles, each scoped to its article;
- ``squad-concat``: three articles concatenated per document (grouped so each reaches
  ``--concat-min-words``, 15k by default: 16 documents), questions sampled evenly over the
  three parts and scoped to the concatenation;
- ``hotpotqa``: the HotpotQA dev sample (all 100 questions: the sample has no more), each scoped
  to its gold + distractor paragraphs;
- ``needle``: one magic number in essay filler (``longread synth --kind needle``), per length
  and depth;
- ``multi-needle``: four magic numbers per document (``--kind multi``), one question per number,
  so the other three are distractors (RULER's multi-key needle).

Metric styles: SQuAD sets ``long`` (SQuAD EM/F1 plus ROUGE-L and gold-contained), HotpotQA
``hotpotqa``, needles ``numeric``. Retrieval recall is not reported: every question is scoped to
one document (or its own ten paragraphs), so the funnel's chunk-level answer presence stands in.

Each (set, config, reader) is a run dir ``OUT/SET/CONFIG--READER`` (resumable with ``--resume``),
with ``funnel.json`` next to its metrics. Per row it prints F1, EM, the style's metric, the answer
rate in what the reader saw, reader tokens, seconds per question, the answer-loss funnel, and
the paired bootstrap ΔF1 (95% CI) against the long-context row with the same reader. Everything
printed is also written to ``OUT/quality.md`` and ``OUT/quality.json``.

    python benchmarks/quality.py --data ../shared/data --build-only          # build and describe the sets
    python benchmarks/quality.py --data ../shared/data --configs rag_hybrid long_context \\
        --readers qwen2.5-0.5b-instruct qwen2.5-coder-1.5b-instruct       # the quality table
    python benchmarks/quality.py ... --readers qwen2.5-coder-1.5b-instruct@llamacpp   # MODEL@BACKEND
    python benchmarks/quality.py --sets squad-concat --screen --budgets 512 1000 \\
        --configs benchmarks/long_doc/*.yaml                                   # retrieval levers, no reader

``--screen`` runs only the retrieval half of each config (reader and reorder dropped, ``--screen-top-k``
passages) and reports the answer rate within each reader token budget: minutes for a lever that would
take an hour with a reader. With a long-context row in the run, each RAG row also gets Self-Route rows
(``--route-support``): the ``ungrounded`` signal of ``reader.route`` composed from the two rows.
Questions run grouped by document, so a backend that keeps the previous prompt's KV (llamacpp)
prefills each long document once, not once per question.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from longread.config import load_config
from longread.data import load_hotpotqa, load_squad, write_jsonl
from longread.eval.compare import load_run, paired_bootstrap, paired_scores
from longread.eval.funnel import answer_funnel, format_funnel
from longread.eval.report import load_rows
from longread.io import atomic_write_json, atomic_write_text
from longread.pipelines.pipeline import Pipeline, resolve_config_path
from longread.pipelines.runner import run
from longread.synth import load_filler, make_needle_suite
from longread.types import Document, Question

ROOT = Path(__file__).resolve().parent.parent
SETS = ("squad-article", "squad-concat", "hotpotqa", "needle", "multi-needle")
STYLE_COLUMN = {"long": "rouge_l", "numeric": "numeric", "hotpotqa": None, "squad": None}


@dataclass
class QASet:
    """One benchmark set: documents, questions scoped to them, and how answers are scored."""

    name: str
    docs: list[Document]
    questions: list[Question]
    metric_style: str
    note: str = ""


# --------------------------------------------------------------------------- building the sets


def sample_stratified(groups: Sequence[Sequence[Question]], n: int, rng: random.Random) -> list[Question]:
    """``n`` questions taken round-robin over ``groups`` (each shuffled by ``rng``), so every group
    gives about the same number; all of them when there are fewer than ``n``."""
    pools = [list(g) for g in groups]
    for p in pools:
        rng.shuffle(p)
    out: list[Question] = []
    while len(out) < n and any(pools):
        for p in pools:
            if p and len(out) < n:
                out.append(p.pop())
    return out


def _squad_by_article(data: Path) -> tuple[list[Document], dict[str, list[Question]]]:
    docs, qs = load_squad(data / "squad" / "squad-dev-1.1.rebuilt.json")
    by_doc: dict[str, list[Question]] = {d.id: [] for d in docs}
    for q in qs:
        by_doc[q.doc_ids[0]].append(q)  # type: ignore[index]
    return docs, by_doc


def squad_article_set(data: Path, n: int, seed: int) -> QASet:
    """SQuAD articles as single documents; ``n`` questions spread evenly over the articles."""
    docs, by_doc = _squad_by_article(data)
    picked = sample_stratified([by_doc[d.id] for d in docs], n, random.Random(seed))
    qs = [q.model_copy(update={"gold_ids": None}) for q in picked]
    return QASet("squad-article", docs, qs, "long")


def group_covering(docs: Sequence[Document], size: int, min_words: int) -> list[list[Document]]:
    """As many groups of ``size`` documents reaching ``min_words`` together as a greedy cover finds:
    the longest document left, then for each remaining slot the shortest document that still lets
    the group reach ``min_words`` (so long articles are not spent on groups that already suffice)."""
    words = {d.id: len(d.text.split()) for d in docs}
    left = sorted(docs, key=lambda d: (words[d.id], d.id))
    groups = []
    while len(left) >= size:
        group = [left.pop()]
        need = min_words - words[group[0].id]
        for slots in range(size - 1, 0, -1):
            def reachable(d: Document) -> bool:
                others = [words[o.id] for o in left if o is not d][-(slots - 1):] if slots > 1 else []
                return words[d.id] + sum(others) >= need
            pick = next((d for d in left if reachable(d)), left[-1])
            left.remove(pick)
            group.append(pick)
            need -= words[pick.id]
        groups.append(group)
    return groups


def squad_concat_set(data: Path, n: int, seed: int, *, per_doc: int = 3, min_words: int = 15_000) -> QASet:
    """Documents of ``per_doc`` SQuAD articles each (at least ``min_words``); questions scoped to
    the concatenation, spread evenly over its articles."""
    docs, by_doc = _squad_by_article(data)
    out_docs: list[Document] = []
    groups_qs: list[list[Question]] = []
    for i, group in enumerate(group_covering(docs, per_doc, min_words)):
        text = "\n\n".join(f"{d.title}\n\n{d.text}" for d in group)
        if len(text.split()) < min_words:
            continue
        did = f"concat-{i:02d}"
        out_docs.append(Document(id=did, text=text, meta={"articles": [d.id for d in group]}))
        for d in group:
            groups_qs.append([q.model_copy(update={"doc_ids": [did], "gold_ids": None}) for q in by_doc[d.id]])
    if not out_docs:
        raise ValueError(f"no {per_doc}-article concatenation reaches {min_words} words; lower --concat-min-words")
    picked = sample_stratified(groups_qs, n, random.Random(seed))
    words = sorted(len(d.text.split()) for d in out_docs)
    return QASet("squad-concat", out_docs, picked, "long", note=f"{len(out_docs)} documents of {words[0]}..{words[-1]} words")


def hotpotqa_set(data: Path, n: int, seed: int) -> QASet:
    """The HotpotQA dev sample, ``n`` questions (seeded) or all it has."""
    docs, qs = load_hotpotqa(data / "hotpotqa" / "hotpotqa_explorer_dev_sample100.json")
    picked = random.Random(seed).sample(qs, min(n, len(qs)))
    note = f"the sample has only {len(qs)} questions" if len(qs) < n else ""
    return QASet("hotpotqa", docs, picked, "hotpotqa", note=note)


def _depths(count: int, top: float = 100.0) -> list[float]:
    return [round(top * i / max(1, count - 1)) for i in range(count)] if count > 1 else [0.0]


def needle_set(data: Path, n: int, seed: int, lengths: Sequence[int]) -> QASet:
    """One needle per document at evenly spaced depths, ``ceil(n / len(lengths))`` per length."""
    filler = load_filler(data / "paul_graham" / "essays")
    per = -(-n // len(lengths))
    docs, qs = make_needle_suite(filler, lengths=lengths, depths=_depths(per), kind="needle", seed=seed)
    return QASet("needle", docs, [q.model_copy(update={"gold_ids": None}) for q in qs], "numeric")


def multi_needle_set(data: Path, n: int, seed: int, lengths: Sequence[int], needles: int = 4) -> QASet:
    """``needles`` numbers per document; one question per number (the others distract)."""
    filler = load_filler(data / "paul_graham" / "essays")
    per = -(-n // (len(lengths) * needles))
    docs, multi = make_needle_suite(filler, lengths=lengths, depths=_depths(per, 96.0), kind="multi",
                                    n_needles=needles, seed=seed)
    qs = []
    for q in multi:
        # synth's multi question lists the cities in the order of its answers
        cities = q.question.removeprefix("What are the special magic numbers for ").removesuffix("?").split(", ")
        if len(cities) != len(q.answers):
            raise ValueError(f"{q.id}: cannot split {q.question!r} into {len(q.answers)} questions")
        for city, number in zip(cities, q.answers):
            qs.append(Question(id=f"{q.id}-{city}", question=f"What is the special magic number for {city}?",
                               answers=[number], doc_ids=q.doc_ids))
    return QASet("multi-needle", docs, qs, "numeric")


def build_sets(names: Sequence[str], data: Path, n: int, seed: int, *, needle_lengths: Sequence[int],
               concat_min_words: int) -> list[QASet]:
    """The named sets, in ``SETS`` order. Raises ``FileNotFoundError`` for missing data files."""
    builders = {
        "squad-article": lambda: squad_article_set(data, n, seed),
        "squad-concat": lambda: squad_concat_set(data, n, seed, min_words=concat_min_words),
        "hotpotqa": lambda: hotpotqa_set(data, n, seed),
        "needle": lambda: needle_set(data, n, seed, needle_lengths),
        "multi-needle": lambda: multi_needle_set(data, n, seed, needle_lengths),
    }
    return [builders[s]() for s in SETS if s in names]


def describe(s: QASet) -> str:
    """One line: documents, words per document, questions, metric style, note."""
    words = [len(d.text.split()) for d in s.docs]
    scoped = {d for q in s.questions for d in (q.doc_ids or [])}
    used = [len(d.text.split()) for d in s.docs if d.id in scoped] or words
    line = (f"{s.name}: {len(s.questions)} questions over {len(scoped)} of {len(s.docs)} documents "
            f"(mean {sum(used) / len(used):.0f} words, max {max(used)}), metric_style {s.metric_style}")
    return line + (f"; {s.note}" if s.note else "")


# --------------------------------------------------------------------------- configs and readers


def parse_reader(spec: str) -> tuple[str, str | None]:
    """``MODEL`` or ``MODEL@BACKEND`` → ``(model, backend or None)``."""
    model, _, backend = spec.partition("@")
    if not model:
        raise ValueError(f"reader must be MODEL or MODEL@BACKEND, got {spec!r}")
    return model, backend or None


def reader_of(cfg: dict[str, Any]) -> str:
    """A label for the config's reader: its model (``@backend`` when not hf), or the stage key."""
    for st in cfg["stages"]:
        if st["key"].startswith("reader."):
            p = st.get("params") or {}
            llm = p.get("llm") if isinstance(p.get("llm"), dict) else {}
            model = llm.get("model") or p.get("model")
            backend = llm.get("backend")
            if model:
                return f"{model}@{backend}" if backend and backend != "hf" else str(model)
            return st["key"]
    raise ValueError(f"config {cfg['name']!r} has no reader stage")


def with_reader(cfg: dict[str, Any], spec: str) -> dict[str, Any]:
    """A copy of ``cfg`` whose reader stages use ``spec`` (``MODEL[@BACKEND]``), named after it."""
    model, backend = parse_reader(spec)
    cfg = json.loads(json.dumps(cfg))
    for st in cfg["stages"]:
        if not st["key"].startswith("reader."):
            continue
        p = st.setdefault("params", {})
        if isinstance(p.get("llm"), dict):
            p["llm"] = {**p["llm"], "model": model, **({"backend": backend} if backend else {})}
            p.pop("model", None)
        elif backend:
            p.pop("model", None)
            p["llm"] = {"backend": backend, "model": model}
        else:
            p["model"] = model
    cfg["name"] = f"{cfg['name']}--{spec.replace('@', '-')}"
    return cfg


def is_long_context(cfg: dict[str, Any]) -> bool:
    """A config that reads without retrieval (no ``retriever.*`` stage)."""
    return not any(st["key"].startswith("retriever.") for st in cfg["stages"])


# --------------------------------------------------------------------------- running and reporting


@dataclass
class Row:
    """One (set, config, reader) run and what the table shows of it."""

    set: str
    config: str
    reader: str
    long_context: bool
    run_dir: Path
    metrics: dict[str, Any]
    funnel: dict[str, Any]


def run_row(s: QASet, cfg: dict[str, Any], base_name: str, out: Path, *, limit: int | None, resume: bool) -> Row:
    """Run one config on one set into ``OUT/SET/NAME`` and compute its funnel."""
    pipe = Pipeline.from_config(cfg)
    run_dir = out / s.name / cfg["name"]
    qs = s.questions[:limit] if limit else s.questions
    # One document's questions in a row: a backend that keeps the previous prompt's KV (llamacpp)
    # then prefills a long document once per document, not once per question. Scores are per id.
    qs = sorted(qs, key=lambda q: tuple(q.doc_ids or ()))
    # Index only what the questions can read (all of it in a full run; a few documents in a check).
    scope = None if any(q.doc_ids is None for q in qs) else {d for q in qs for d in q.doc_ids or []}
    docs = [d for d in s.docs if scope is None or d.id in scope]
    res = run(pipe, docs, qs, run_dir, index_dir=out / s.name / f"index-{base_name}", resume=resume,
              show_progress=True, inputs={"set": s.name}, metric_style=s.metric_style)
    funnel = answer_funnel(run_dir)
    atomic_write_json(run_dir / "funnel.json", funnel.to_json())
    return Row(s.name, base_name, reader_of(cfg), is_long_context(cfg), run_dir, res.metrics, funnel.rates)


# --------------------------------------------------------------------------- screening retrieval levers


def screen_config(cfg: dict[str, Any], top_k: int) -> dict[str, Any]:
    """``cfg`` without its reader and reorder stages, every retriever asked for ``top_k`` passages:
    what a retrieval lever hands the reader, in rank order, before any reader budget."""
    cfg = json.loads(json.dumps(cfg))
    stages = []
    for st in cfg["stages"]:
        if st["key"].startswith(("reader.", "reorder.")):
            continue
        if st["key"].startswith("retriever."):
            p = st.setdefault("params", {})
            p["top_k"] = max(top_k, int(p.get("top_k", 0)))
            p["candidates"] = max(int(p.get("candidates", 50)), p["top_k"]) if st["key"] == "retriever.hybrid" else p.get("candidates")
            if p["candidates"] is None:
                p.pop("candidates")
        stages.append(st)
    cfg["stages"] = stages
    return cfg


def pack_passages(texts: Sequence[str], count: Any, budget: int) -> tuple[list[str], int]:
    """The passage texts ``reader.hf`` shows within ``budget`` tokens (labels ``[n]`` included, the
    overflowing one cut, 8+ tokens of room kept) and the tokens spent; ``count(text)`` counts tokens."""
    shown, spent = [], 0
    for n, text in enumerate(texts, start=1):
        need = count(f"[{n}] {text.strip()}\n\n")
        if spent + need <= budget:
            shown.append(text)
            spent += need
            continue
        room = budget - spent - count(f"[{n}] \n\n")
        if room >= 8:
            shown.append(text.strip()[: max(1, len(text) * room // need)])  # ~room tokens of it
            spent = budget
        break
    return shown, spent


def screen_row(s: QASet, name: str, cfg: dict[str, Any], out: Path, *, budgets: Sequence[int], top_k: int,
               count: Any, limit: int | None) -> dict[str, Any]:
    """Answer recall of one retrieval lever within each reader budget: no reader runs."""
    from longread.eval.metrics import answer_in_texts

    pipe = Pipeline.from_config(screen_config(cfg, top_k))
    qs = s.questions[:limit] if limit else s.questions
    scope = None if any(q.doc_ids is None for q in qs) else {d for q in qs for d in q.doc_ids or []}
    docs = [d for d in s.docs if scope is None or d.id in scope]
    # Parts are named by their params, so configs with one chunker share an index (and its encodings).
    ch = cfg.get("chunker") or {}
    index_dir = out / s.name / f"screen-index-{ch.get('kind', 'tokens')}-{ch.get('size')}-{ch.get('overlap')}"
    t0 = time.perf_counter()
    pipe.index(docs, index_dir, show_progress=False)
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    states = pipe.answer(qs, index_dir=index_dir)
    t_query = time.perf_counter() - t0
    hits = {b: 0 for b in budgets}
    in_top, in_first, spent = 0, 0, {b: 0 for b in budgets}
    for st in states:
        if st.trace.get("error"):
            raise RuntimeError(f"{name}: question {st.question.id}: {st.trace['error']}")
        texts = [p.text for p in st.passages]
        in_top += answer_in_texts(st.question.answers, texts)
        # small readers answer mostly from passage [1] (see benchmarks/long_doc/README.md)
        in_first += answer_in_texts(st.question.answers, texts[:1])
        for b in budgets:
            shown, used = pack_passages(texts, count, b)
            hits[b] += answer_in_texts(st.question.answers, shown)
            spent[b] += used
    n = len(states)
    return {"set": s.name, "config": name, "n": n, "top_k": top_k, "in_top_k": in_top / n, "in_first": in_first / n,
            "recall_at_budget": {b: hits[b] / n for b in budgets}, "tokens_at_budget": {b: spent[b] / n for b in budgets},
            "index_s": round(t_index, 1), "query_ms": round(1000 * t_query / n, 1)}


def screen_table(rows: Sequence[dict[str, Any]], budgets: Sequence[int]) -> str:
    """Markdown table of screening rows: answer recall within each reader budget."""
    head = ["lever (config)", "n", "ans. in passage 1", *[f"ans. in {b} tok" for b in budgets], "ans. in top-k", "index s", "query ms"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join([r["config"], str(r["n"]), f"{r['in_first']:.3f}", *[f"{r['recall_at_budget'][b]:.3f}" for b in budgets],
                                      f"{r['in_top_k']:.3f} (k={r['top_k']})", str(r["index_s"]), str(r["query_ms"])]) + " |")
    return "\n".join(out)


def run_screen(sets: Sequence[QASet], configs: Sequence[tuple[str, dict[str, Any]]], out: Path, args: argparse.Namespace) -> None:
    """``--screen``: the retrieval half of every config, scored by answer recall per reader budget."""
    from transformers import AutoTokenizer

    from longread.models import packs

    pack = packs.PACKS.get(args.screen_tokenizer)
    status = packs.pack_status(pack, None) if pack is not None else None
    if status is not None and status.prepared:
        tok = AutoTokenizer.from_pretrained(status.path)
    elif Path(args.screen_tokenizer).is_dir():
        tok = AutoTokenizer.from_pretrained(args.screen_tokenizer)
    else:
        raise ValueError(f"--screen-tokenizer {args.screen_tokenizer!r} is neither a prepared pack nor a model dir")
    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])
    report = [f"# Retrieval screen\n\nCommand: `python benchmarks/quality.py {' '.join(sys.argv[1:])}`\n"]
    rows = []
    for s in sets:
        set_rows = []
        for name, cfg in configs:
            if is_long_context(cfg):
                continue
            r = screen_row(s, name, cfg, out, budgets=args.budgets, top_k=args.screen_top_k, count=count, limit=args.limit)
            print(f"  {s.name} / {name}: " + ", ".join(f"{b} tok {v:.3f}" for b, v in r["recall_at_budget"].items()), flush=True)
            set_rows.append(r)
        section = f"## {describe(s)}\n\n{screen_table(set_rows, args.budgets)}\n"
        print("\n" + section, flush=True)
        report.append(section)
        rows += set_rows
    report.append("Answer recall: share of questions whose gold answer (SQuAD-normalised, whole tokens) occurs in the "
                  "passages the reader would show within the budget (rank order, `[n]` labels counted with the reader's "
                  "tokenizer, the overflowing passage cut); no reader ran.\n")
    atomic_write_text(out / "screen.md", "\n".join(report))
    atomic_write_json(out / "screen.json", rows)
    print(f"wrote {out / 'screen.md'} and {out / 'screen.json'}")


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def delta_vs_baseline(row: Row, rows: Sequence[Row], n_resamples: int = 2000, *, config: str | None = None) -> str:
    """``ΔF1 [low, high]`` against the long-context row with the same reader on the same set, or
    against the row of ``config`` (an ablation's reference lever) when given."""
    is_base = (lambda r: r.config == config) if config else (lambda r: r.long_context)
    if is_base(row):
        return "(baseline)"
    base = next((r for r in rows if is_base(r) and r.set == row.set and r.reader == row.reader), None)
    if base is None:
        return f"– (no {config or 'long-context'} row with this reader)"
    _, xs, ys = paired_scores(load_run(base.run_dir), load_run(row.run_dir), "f1")
    if not xs:
        return "– (no shared scored questions)"
    b = paired_bootstrap(xs, ys, n_resamples=n_resamples, seed=0)
    return f"{b.diff:+.3f} [{b.low:+.3f}, {b.high:+.3f}]{' *' if b.significant else ''}"


def _per_question(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in load_rows(run_dir) or []}


def self_route(rag: Row, base: Row, min_support: float) -> dict[str, Any]:
    """Self-Route with the ``ungrounded`` signal (``reader.route`` ``when: ungrounded``) composed
    from a RAG row and the long-context row with the same reader: a question keeps its RAG answer
    when at least ``min_support`` of its words are in the passages it read (the predictions'
    citations hold the text read), else takes the long-context answer and pays both readers'
    tokens. Greedy decoding makes each answer the one the route reader would get from the same
    prompt. Also reports how well the signal separates right from wrong RAG answers."""
    from longread.readers.route import answer_support

    preds = {}
    for line in (rag.run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            preds[d["id"]] = d
    r_rows, b_rows = _per_question(rag.run_dir), _per_question(base.run_dir)
    ids = [q for q in r_rows if q in b_rows and r_rows[q].get("f1") is not None and b_rows[q].get("f1") is not None]
    routed, f1, tokens, kept_f1, sent_f1, sent_base_f1 = 0, [], [], [], [], []
    for q in ids:
        pred = preds[q]
        read = " ".join(c.get("text") or "" for c in pred.get("citations") or [])
        fall = answer_support(pred.get("answer"), read) < min_support
        rf, bf = float(r_rows[q]["f1"]), float(b_rows[q]["f1"])
        t = float(r_rows[q].get("reader_tokens") or 0)
        if fall:
            routed += 1
            sent_f1.append(rf)
            sent_base_f1.append(bf)
            f1.append(bf)
            t += float(b_rows[q].get("reader_tokens") or 0)
        else:
            kept_f1.append(rf)
            f1.append(rf)
        tokens.append(t)
    base_f1 = [float(b_rows[q]["f1"]) for q in ids]
    rag_f1 = [float(r_rows[q]["f1"]) for q in ids]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    vs_base = paired_bootstrap(base_f1, f1, n_resamples=2000, seed=0)
    vs_rag = paired_bootstrap(rag_f1, f1, n_resamples=2000, seed=0)
    return {"set": rag.set, "config": rag.config, "reader": rag.reader, "min_support": min_support, "n": len(ids),
            "fallback_rate": routed / len(ids), "f1": mean(f1), "reader_tokens_mean": mean(tokens),
            "rag_f1_kept": mean(kept_f1), "rag_f1_sent": mean(sent_f1), "long_f1_sent": mean(sent_base_f1),
            "delta_vs_long": [vs_base.diff, vs_base.low, vs_base.high], "delta_vs_rag": [vs_rag.diff, vs_rag.low, vs_rag.high]}


def route_table(rows: Sequence[Row], min_supports: Sequence[float]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table of :func:`self_route` for every RAG row that has a long-context baseline."""
    out = ["| RAG config | reader | min_support | n | fallback rate | RAG F1 kept / sent | long-ctx F1 on sent | routed F1 | "
           "reader tokens | ΔF1 vs long ctx | ΔF1 vs RAG |", "|" + "---|" * 11]
    data = []
    for r in rows:
        base = next((b for b in rows if b.long_context and b.set == r.set and b.reader == r.reader), None)
        if r.long_context or base is None:
            continue
        for m in min_supports:
            d = self_route(r, base, m)
            data.append(d)
            ci = lambda x: f"{x[0]:+.3f} [{x[1]:+.3f}, {x[2]:+.3f}]"  # noqa: E731
            out.append(f"| {r.config} | {r.reader} | {m:g} | {d['n']} | {d['fallback_rate']:.3f} | {_f(d['rag_f1_kept'])} / "
                       f"{_f(d['rag_f1_sent'])} | {_f(d['long_f1_sent'])} | {_f(d['f1'])} | {_f(d['reader_tokens_mean'], 0)} | "
                       f"{ci(d['delta_vs_long'])} | {ci(d['delta_vs_rag'])} |")
    return "\n".join(out), data


def table(rows: Sequence[Row], style: str, ablation_base: str | None = None) -> str:
    """Markdown table of one set's rows (with a ΔF1 column against ``ablation_base``'s row if given)."""
    extra = STYLE_COLUMN.get(style)
    head = ["config", "reader", "n", "F1", "EM", *( [extra] if extra else []), "ans. in reader view",
            "reader tokens", "s/question", "ΔF1 vs long ctx [95% CI]",
            *([f"ΔF1 vs {ablation_base}"] if ablation_base else []), "funnel (rate, -first lost)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r.metrics
        cells = [r.config, r.reader, str(m.get("n")), _f(m.get("f1")), _f(m.get("em")),
                 *([_f(m.get(extra))] if extra else []), _f(r.funnel["stages"]["context"]["rate"]),
                 _f(m.get("reader_tokens_mean"), 0), _f(m.get("seconds_per_question"), 2),
                 delta_vs_baseline(r, rows),
                 *([delta_vs_baseline(r, rows, config=ablation_base)] if ablation_base else []), format_funnel(r.funnel)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="public QA data (see its README)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-quality"))
    ap.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    ap.add_argument("--questions", type=int, default=150, help="questions per set (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", nargs="+", default=["rag_hybrid", "long_context"], help="config names or YAML paths")
    ap.add_argument("--readers", nargs="+", default=None, help="MODEL or MODEL@BACKEND for every reader (default: each config's own)")
    ap.add_argument("--needle-lengths", type=int, nargs="+", default=[4000, 8000, 16000], help="needle document lengths (tokens)")
    ap.add_argument("--concat-min-words", type=int, default=15_000)
    ap.add_argument("--limit", type=int, default=None, help="answer only the first N questions of each set (checks)")
    ap.add_argument("--build-only", action="store_true", help="build and write the sets, do not run configs")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--ablation-base", default=None, help="config name whose row every row is also compared with (paired ΔF1)")
    ap.add_argument("--route-support", type=float, nargs="*", default=[1.0, 0.5],
                    help="Self-Route rows composed from each RAG row and its long-context row, per min_support")
    ap.add_argument("--screen", action="store_true",
                    help="run only the retrieval half of each config: answer recall within each --budgets reader budget")
    ap.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 2048], help="reader token budgets (--screen)")
    ap.add_argument("--screen-top-k", type=int, default=20, help="passages retrieved per question (--screen)")
    ap.add_argument("--screen-tokenizer", default="qwen2.5-0.5b-instruct", help="pack or model dir whose tokenizer counts budgets (--screen)")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(f"error: data dir {data} not found (pass --data)", file=sys.stderr)
        return 2
    if args.questions <= 0 or (args.limit is not None and args.limit <= 0):
        print("error: --questions and --limit must be > 0", file=sys.stderr)
        return 2
    try:
        sets = build_sets(args.sets, data, args.questions, args.seed, needle_lengths=args.needle_lengths,
                          concat_min_words=args.concat_min_words)
        configs = [load_config(resolve_config_path(c)).model_dump(mode="json") for c in args.configs]
        variants = [(c["name"], with_reader(c, r) if args.readers else c) for c in configs for r in (args.readers or [None])]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in sets:
        write_jsonl(out / "sets" / s.name / "corpus.jsonl", s.docs)
        write_jsonl(out / "sets" / s.name / "questions.jsonl", s.questions)
        print(describe(s))
    print(f"sets written to {out / 'sets'} (corpus.jsonl, questions.jsonl per set)")
    if args.build_only:
        return 0
    if args.screen:
        try:
            run_screen(sets, [(n, c) for n, c in variants], out, args)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0

    report = [f"# Quality on long documents\n\nCommand: `python benchmarks/quality.py {' '.join(argv or sys.argv[1:])}`\n"]
    rows: list[Row] = []
    routes: list[dict[str, Any]] = []
    for s in sets:
        set_rows = []
        for base_name, cfg in variants:
            t0 = time.perf_counter()
            row = run_row(s, cfg, base_name, out, limit=args.limit, resume=args.resume)
            print(f"  {s.name} / {cfg['name']}: F1 {_f(row.metrics.get('f1'))} in {time.perf_counter() - t0:.0f}s", flush=True)
            set_rows.append(row)
        rows += set_rows
        section = f"## {describe(s)}\n\n{table(set_rows, s.metric_style, args.ablation_base)}\n"
        if args.route_support:
            text, data = route_table(set_rows, args.route_support)
            if data:
                section += ("\nSelf-Route on the `ungrounded` signal (RAG answer kept when ≥ min_support of its words are in "
                            f"the passages read, else the long-context answer; composed from the rows above):\n\n{text}\n")
                routes += data
        print("\n" + section, flush=True)
        report.append(section)
    report.append("ΔF1: paired bootstrap (2000 resamples, seed 0) against the long-context row with the same reader; "
                  "* = the 95% CI excludes 0. Funnel: share of questions whose gold answer is in the scope's chunks > "
                  "the reader's passages > what the reader saw > the raw generation > the answer > scored correct; "
                  "(-k) = questions first lost there (see longread/eval/funnel.py).\n")
    atomic_write_text(out / "quality.md", "\n".join(report))
    atomic_write_json(out / "quality.json", [
        {"set": r.set, "config": r.config, "reader": r.reader, "run_dir": str(r.run_dir), "metrics": r.metrics,
         "funnel": r.funnel, "delta_f1_vs_long_context": delta_vs_baseline(r, rows)} for r in rows
    ] + [{"self_route": d} for d in routes])
    print(f"wrote {out / 'quality.md'} and {out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
