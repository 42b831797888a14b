"""Compare run dirs side by side: quality and cost, and whether F1 differences are more than noise.

Built in layers so richer reports (plots, HTML, agreement, length buckets) can reuse them:
:func:`load_run` → :class:`RunSummary` (metrics + per-question rows), :func:`paired_bootstrap`
(a pure function over paired scores), :func:`compare_table` / :func:`bootstrap_table` (markdown),
and :func:`compare` / :func:`write_compare` on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io import atomic_write_text
from .report import fmt, load_rows, md_cell, run_name

__all__ = [
    "RunSummary",
    "BootstrapResult",
    "load_run",
    "paired_bootstrap",
    "paired_scores",
    "compare_table",
    "bootstrap_table",
    "compare",
    "write_compare",
]


@dataclass
class RunSummary:
    """One run dir as the comparison sees it."""

    run_dir: Path
    name: str
    metrics: dict[str, Any]
    rows: dict[str, dict[str, Any]] | None  # question id -> per-question row; None if unavailable


@dataclass(frozen=True)
class BootstrapResult:
    """Mean of ``b - a`` over paired questions with a percentile confidence interval."""

    diff: float
    low: float
    high: float
    n: int
    p_value: float  # two-sided: how often a resample's mean difference falls on the other side of 0
    confidence: float

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return self.low > 0 or self.high < 0


def load_run(run_dir: str | Path) -> RunSummary:
    """Read ``metrics.json`` (required) and the per-question rows (optional) of a run dir.

    Raises ``FileNotFoundError`` when the dir or its ``metrics.json`` is missing, ``ValueError``
    when ``metrics.json`` is not a JSON object.
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.json; run `longread eval {run_dir}` first")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    rows = load_rows(run_dir, metrics.get("metric_style"))
    return RunSummary(
        run_dir=run_dir,
        name=run_name(run_dir),
        metrics=metrics,
        rows=None if rows is None else {r["id"]: r for r in rows},
    )


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap of ``mean(b - a)``: resample question indices with replacement.

    ``a[i]`` and ``b[i]`` must score the same question. Deterministic for a given ``seed``.
    Raises ``ValueError`` for unequal lengths, no pairs, ``n_resamples < 1`` or a confidence outside (0, 1).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-D and paired, got lengths {len(a)} and {len(b)}")
    if x.size == 0:
        raise ValueError("paired_bootstrap needs at least one pair")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = y - x
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    # Blocks bound memory: n_resamples x n indices at once would be 160 MB for 10k questions.
    block = max(1, 2_000_000 // d.size)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    observed = float(d.mean())
    p = 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0)))
    return BootstrapResult(observed, float(low), float(high), int(d.size), min(1.0, p), confidence)


def paired_scores(base: RunSummary, other: RunSummary, metric: str = "f1") -> tuple[list[str], list[float], list[float]]:
    """Question ids both runs scored on ``metric`` (in ``base``'s order) and the two score lists."""
    if base.rows is None or other.rows is None:
        return [], [], []
    ids, xs, ys = [], [], []
    for qid, row in base.rows.items():
        o = other.rows.get(qid)
        if o is None or row.get(metric) is None or o.get(metric) is None:
            continue
        ids.append(qid)
        xs.append(float(row[metric]))
        ys.append(float(o[metric]))
    return ids, xs, ys


_ROWS: tuple[tuple[str, int], ...] = (
    ("em", 3),
    ("f1", 3),
    ("answer_recall", 3),
    ("recall@*", 3),
    ("ndcg@10", 3),
    ("reader_tokens_mean", 1),
    ("seconds_per_question", 3),
    ("n_errors", 0),
    ("n", 0),
)


def _names(runs: Sequence[RunSummary]) -> list[str]:
    names = [r.name for r in runs]
    # Two runs of one config: tell them apart by directory.
    return [f"{n} ({r.run_dir.name})" if names.count(n) > 1 else n for n, r in zip(names, runs)]


def compare_table(runs: Sequence[RunSummary]) -> str:
    """Markdown table: one column per run, one row per metric (``–`` where a run lacks it)."""
    if not runs:
        raise ValueError("compare needs at least one run")
    out = ["| metric | " + " | ".join(md_cell(n, 60) for n in _names(runs)) + " |"]
    out.append("|---|" + "---:|" * len(runs))
    for key, digits in _ROWS:
        if key == "recall@*":
            ks = sorted({int(k.split("@")[1]) for r in runs for k in r.metrics if k.startswith("recall@")})
            keys = [f"recall@{k}" for k in ks]
        else:
            keys = [key]
        for k in keys:
            out.append(f"| {k} | " + " | ".join(fmt(r.metrics.get(k), digits) for r in runs) + " |")
    return "\n".join(out)


def bootstrap_table(
    runs: Sequence[RunSummary], *, metric: str = "f1", n_resamples: int = 2000, seed: int = 0
) -> str:
    """Markdown table of each run's ``metric`` difference vs the first run, with a paired 95% CI."""
    if len(runs) < 2:
        return ""
    base = runs[0]
    names = _names(runs)
    out = [
        f"{metric.upper()} difference vs **{md_cell(names[0], 60)}** over the questions both runs scored "
        f"(paired bootstrap, {n_resamples} resamples, seed {seed}, 95% CI):",
        "",
        f"| run | Δ{metric} | 95% CI | p | shared questions | differs from 0 |",
        "|---|---:|---|---:|---:|---|",
    ]
    for name, run in zip(names[1:], runs[1:]):
        ids, xs, ys = paired_scores(base, run, metric)
        if not ids:
            if base.rows is None or run.rows is None:
                why = "per-question rows missing"
            elif all(r.get(metric) is None for r in base.rows.values()):
                why = f"no {metric} in the first run"
            elif all(r.get(metric) is None for r in run.rows.values()):
                why = f"no {metric} in this run"
            else:
                why = "no shared questions"
            out.append(f"| {md_cell(name, 60)} | – | – | – | 0 | ({why}) |")
            continue
        res = paired_bootstrap(xs, ys, n_resamples=n_resamples, seed=seed)
        out.append(
            f"| {md_cell(name, 60)} | {res.diff:+.3f} | [{res.low:+.3f}, {res.high:+.3f}] | {_p(res.p_value, n_resamples)} | "
            f"{res.n} | {'yes' if res.significant else 'no'} |"
        )
    return "\n".join(out)


def _p(p: float, n_resamples: int) -> str:
    # A bootstrap p of 0 only means "below the resolution of n_resamples".
    return f"<{1 / n_resamples:.0e}" if p == 0 else f"{p:.3f}"


def compare(
    run_dirs: Sequence[str | Path], *, bootstrap: bool = True, n_resamples: int = 2000, seed: int = 0
) -> str:
    """Markdown comparing run dirs: the side-by-side table, then (with ``bootstrap``) the paired
    F1 differences vs the first run. Raises ``ValueError`` for no run dirs and
    ``FileNotFoundError`` for a dir without ``metrics.json``.
    """
    if not run_dirs:
        raise ValueError("compare needs at least one run dir")
    runs = [load_run(d) for d in run_dirs]
    parts = ["# Comparison", "", compare_table(runs), ""]
    if bootstrap and len(runs) > 1:
        parts += [bootstrap_table(runs, n_resamples=n_resamples, seed=seed), ""]
    parts += ["Run dirs: " + ", ".join(f"`{r.run_dir}`" for r in runs), ""]
    return "\n".join(parts)


def write_compare(run_dirs: Sequence[str | Path], out_dir: str | Path, **kwargs: Any) -> Path:
    """Write :func:`compare`'s markdown to ``OUT_DIR/compare.md`` atomically; return the path."""
    path = Path(out_dir) / "compare.md"
    atomic_write_text(path, compare(run_dirs, **kwargs))
    return path
