"""A self-contained ``compare.html`` for several run dirs: the comparison tables plus plots
(matplotlib, embedded as PNG) of F1 against reader tokens and against seconds per question,
F1 by document length, per-question agreement between runs, and each run's route shares.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ..io import atomic_write_text
from .compare import RunSummary, compare, load_run

__all__ = ["write_compare_html", "length_buckets", "agreement_matrix", "route_shares"]

BUCKETS = [(0, 1000, "<1k"), (1000, 2000, "1k-2k"), (2000, 5000, "2k-5k"), (5000, 10000, "5k-10k"), (10000, float("inf"), ">10k")]


def _predictions(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "predictions.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
    return out


def _doc_words(run_dir: Path) -> dict[str, int]:
    """Words per document of the run's index (empty if the index is gone)."""
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        return {}
    from ..pipelines.store import open_store

    idx = json.loads(meta_path.read_text(encoding="utf-8")).get("index_dir")
    if not idx:
        return {}
    try:
        store = open_store(Path(idx))
    except (OSError, ValueError):
        return {}
    return {d.id: len(d.text.split()) for d in store.documents.values()}


def length_buckets(run: RunSummary, question_words: dict[str, int]) -> dict[str, float | None]:
    """Mean F1 per document-length bucket (words of the question's scoped documents)."""
    sums: dict[str, list[float]] = {label: [] for *_, label in BUCKETS}
    for qid, row in (run.rows or {}).items():
        words = question_words.get(qid)
        if words is None or row.get("f1") is None:
            continue
        for lo, hi, label in BUCKETS:
            if lo <= words < hi:
                sums[label].append(float(row["f1"]))
    return {k: (sum(v) / len(v) if v else None) for k, v in sums.items()}


def agreement_matrix(runs: Sequence[RunSummary], threshold: float = 0.5) -> list[list[float | None]]:
    """Share of shared questions on which runs i and j agree (both F1 ≥ threshold, or both below)."""
    n = len(runs)
    out: list[list[float | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            a, b = runs[i].rows or {}, runs[j].rows or {}
            shared = [q for q in a if q in b and a[q].get("f1") is not None and b[q].get("f1") is not None]
            if shared:
                same = sum((a[q]["f1"] >= threshold) == (b[q]["f1"] >= threshold) for q in shared)
                out[i][j] = same / len(shared)
    return out


def route_shares(preds: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Share of questions per ``trace.route`` value, or None if the run had no router."""
    routes = [p.get("trace", {}).get("route") for p in preds]
    routes = [r for r in routes if r is not None]
    if not routes:
        return None
    return {r: routes.count(r) / len(routes) for r in sorted(set(routes))}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _scatter(runs: Sequence[RunSummary], xkey: str, xlabel: str) -> str | None:
    import matplotlib.pyplot as plt

    pts = [(r.name, r.metrics.get(xkey), r.metrics.get("f1")) for r in runs]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, x, y in pts:
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("F1")
    ax.grid(alpha=0.3)
    return _png(fig)


def _bucket_plot(runs: Sequence[RunSummary], per_run: list[dict[str, float | None]]) -> str | None:
    import matplotlib.pyplot as plt

    labels = [label for *_, label in BUCKETS if any(b.get(label) is not None for b in per_run)]
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / max(1, len(runs))
    for i, (run, b) in enumerate(zip(runs, per_run)):
        xs = [k + i * width for k in range(len(labels))]
        ax.bar(xs, [b.get(label) or 0.0 for label in labels], width=width, label=run.name)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(labels))], labels)
    ax.set_xlabel("document length (words)")
    ax.set_ylabel("F1")
    ax.legend(fontsize=8)
    return _png(fig)


def _agreement_plot(runs: Sequence[RunSummary], m: list[list[float | None]]) -> str | None:
    import matplotlib.pyplot as plt

    if len(runs) < 2:
        return None
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(runs), 1 + 0.8 * len(runs)))
    vals = [[v if v is not None else float("nan") for v in row] for row in m]
    im = ax.imshow(vals, vmin=0, vmax=1, cmap="viridis")
    names = [r.name for r in runs]
    ax.set_xticks(range(len(runs)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(runs)), names, fontsize=8)
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            if v is not None:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("per-question agreement (F1 ≥ 0.5)", fontsize=9)
    return _png(fig)


def _md_to_html(md: str) -> str:
    """Markdown tables to HTML tables; other lines as paragraphs (escaped)."""
    out, table = [], []

    def flush() -> None:
        if not table:
            return
        rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-", ":", " "}]
        cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
        out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>")
        out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
        out.append("</table>")
        table.clear()

    for line in md.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html.escape(line.lstrip('# '))}</p>" if not line.startswith("#") else f"<h2>{html.escape(line.lstrip('# '))}</h2>")
    flush()
    return "\n".join(out)


def write_compare_html(run_dirs: Sequence[str | Path], out_dir: str | Path, *, n_resamples: int = 2000, seed: int = 0) -> Path:
    """Write ``compare.md`` and a self-contained ``compare.html`` into ``out_dir``; return the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    dirs = [Path(d) for d in run_dirs]
    runs = [load_run(d) for d in dirs]
    md = compare(dirs, n_resamples=n_resamples, seed=seed)
    per_bucket = []
    routes = []
    for d, r in zip(dirs, runs):
        words = _doc_words(d)
        preds = _predictions(d)
        qwords = {}
        for p in preds:
            ids = (p.get("trace") or {}).get("scope_doc_ids")
            if ids is None:
                ids = sorted(set((p.get("trace") or {}).get("passage_doc_ids") or []))
            if ids and all(i in words for i in ids):
                qwords[p["id"]] = sum(words[i] for i in ids)
        per_bucket.append(length_buckets(r, qwords))
        routes.append(route_shares(preds))
    extra = []
    if any(routes):
        extra.append("## Routes\n\n| run | " + " | ".join(["route shares"]) + " |\n|---|---|")
        for r, s in zip(runs, routes):
            if s:
                extra.append(f"| {r.name} | " + ", ".join(f"{k} {v:.0%}" for k, v in s.items()) + " |")
    md_all = md + ("\n\n" + "\n".join(extra) if extra else "")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.md", md_all + "\n")
    figs = [
        ("F1 vs tokens fed to the reader", _scatter(runs, "reader_tokens_mean", "reader tokens per question (mean)")),
        ("F1 vs seconds per question", _scatter(runs, "seconds_per_question", "seconds per question")),
        ("F1 by document length", _bucket_plot(runs, per_bucket)),
        ("Per-question agreement", _agreement_plot(runs, agreement_matrix(runs))),
    ]
    body = [_md_to_html(md_all)]
    for title, png in figs:
        if png:
            body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>longread compare</title><style>"
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f4f4f4}</style></head><body>"
        "<h1>longread: run comparison</h1>" + "\n".join(body) + "</body></html>\n"
    )
    atomic_write_text(out / "compare.html", page)
    return out / "compare.html"
