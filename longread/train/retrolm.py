"""``longread train retrolm``: train the page scorer of ``reader.retrolm`` (``scorer: PATH``).

RetroLM trains its KV-page retriever contrastively on question/page pairs. Here the model stays
frozen and only the small scorer of :mod:`longread.readers.retrolm.trained` trains (learned
layer/head weights of the training-free ``quest``/``mean_key`` page probabilities plus a
low-rank bilinear form between the question's pooled query vectors and the pages' key
summaries; ``--rank 0``, the default, keeps only the weights). It starts equal to the
training-free ``quest`` scorer.

Data (SQuAD v1.1 dev under ``--data``): each article is one long document (its paragraphs
joined by blank lines, cut at a paragraph end to ``--max-tokens`` tokens). The reader prefills it
page by page exactly as at inference (``RetroLMReader.read``) and computes, per question, the
same features as ``score_pages`` (``RetroLMReader.page_features``). Per article up to
``--questions`` questions (at most one per paragraph); the **positive** page holds the first
character of the question's answer span; the **negatives** are the other pages of the article,
except those that overlap the question's own paragraph (partly relevant: left out of the loss).
Loss: InfoNCE over the positive and its negatives, full batch, AdamW; the state with the lowest
loss on ``--val-articles`` validation articles (taken from the training articles) is kept.

Articles are shuffled with ``--seed``; the first ``--heldout`` are held out (never trained or
validated on), the next ``--articles`` train (``--val-articles`` of them validate). The report
gives, on held-out articles, the answer page's recall@k (k = pages that fit the reader's default
budget, 2048 // page_size = 16 for pages of 128), recall@1/4, mean rank and the share of
questions whose answer page ``select_pages`` keeps with the default params, for the
training-free ``quest`` and ``mean_key`` scorers and the trained one. ``--features FILE`` keeps
the extracted features, so a rerun with other training knobs skips the prefill.

Measured (smollm2-135m-instruct, fp32, one CPU thread on a shared 2-core machine)::

    longread train retrolm --data DATA_DIR --out retrolm-scorer.safetensors \\
        --articles 16 --val-articles 3 --heldout 4 --questions 24 --max-tokens 4096

Feature extraction (prefill + one question pass each) took 29-41 s per article (~30 pages,
up to 24 questions); a full-batch step over the 13 fitting articles took 0.015 s with
``--rank 0`` (0.08 s with ``--rank 2``). Held-out: 4 articles, 92 questions, 30.1 pages each on
average; k = 16; "selected" = answer page kept by ``select_pages`` with the default params:

    scorer               recall@1  recall@4  recall@16  mean rank   MRR   selected
    quest (default)        0.043     0.174     0.652      13.26    0.156    0.554
    mean_key               0.033     0.163     0.663      13.26    0.148    0.554
    trained (--rank 0)     0.120     0.304     0.793       9.97    0.254    0.761

(random order: recall@16 ~0.53, mean rank ~15.5.) The best validation loss came at step 60 of
200. The bilinear term overfits at this data size: ``--rank 16`` drove the training loss to
0.001 while the validation loss stayed above its starting value (15 at the end; the start was
kept); ``--rank 2`` reached a training MRR of 0.83 but a validation mean rank of 10.3 vs 9.6 for
``--rank 0``; hence ``--rank 0`` by default (settings were compared on the validation articles only). That scorer
(2.7 KB) ships as ``longread/assets/retrolm_scorer_smollm2-135m-instruct_p128.safetensors``
(``scorer: trained``), with its JSON sidecar.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io import atomic_write_bytes, atomic_write_json

__all__ = [
    "Article",
    "DocExamples",
    "load_squad_articles",
    "build_article",
    "extract_examples",
    "answer_page",
    "document_loss",
    "rank_metrics",
    "train_scorer",
    "add_parser",
    "run",
    "main",
]

FEATURES_FORMAT = "longread-retrolm-features-v1"


@dataclass
class Article:
    """One long document and its questions: ``(question, answer char offset, paragraph char span)``."""

    title: str
    text: str
    questions: list[tuple[str, int, tuple[int, int]]]


@dataclass
class DocExamples:
    """Features of one article's questions (see :func:`longread.readers.retrolm.scoring.page_features`).

    ``quest``/``mean_key`` ``[Q, nl, H, P]``, ``q`` ``[Q, nl, Dq]``, ``s`` ``[nl, P, Ds]``,
    ``positive`` ``[Q]`` (answer page), ``valid`` ``[Q, P]`` (positive + negatives),
    ``lengths``: tokens per page.
    """

    title: str
    quest: Any
    mean_key: Any
    q: Any
    s: Any
    positive: Any
    valid: Any
    lengths: list[int]

    @property
    def n_questions(self) -> int:
        return int(self.positive.shape[0])

    def features(self) -> dict[str, Any]:
        return {"quest": self.quest, "mean_key": self.mean_key, "q": self.q, "s": self.s}

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("title", "quest", "mean_key", "q", "s", "positive", "valid", "lengths")}


# --------------------------------------------------------------------------------------------
# Data


def load_squad_articles(data_dir: str | Path) -> list[dict[str, Any]]:
    """The articles of ``<data_dir>/squad/squad-dev-1.1.rebuilt.json`` (SQuAD v1.1 layout)."""
    path = Path(data_dir) / "squad" / "squad-dev-1.1.rebuilt.json"
    if not path.is_file():
        raise FileNotFoundError(f"no SQuAD v1.1 dev file at {str(path)!r}; --data must hold squad/squad-dev-1.1.rebuilt.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f).get("data")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a SQuAD v1.1 JSON with a non-empty 'data' list")
    return data


def build_article(raw: dict[str, Any], tokenizer: Any, *, max_tokens: int, questions: int, seed: int = 0) -> Article:
    """One article as a document cut at a paragraph end to ``max_tokens`` tokens, with sampled questions.

    At most one question per kept paragraph (its first with an answer), then ``questions`` of
    those drawn with ``seed``. Raises ``ValueError`` when an answer offset does not hold its text.
    """
    if max_tokens <= 0 or questions <= 0:
        raise ValueError(f"max_tokens and questions must be > 0, got {max_tokens} and {questions}")
    paras, starts, at = [], [], 0
    for p in raw["paragraphs"]:
        ctx = p["context"].strip()
        starts.append(at)
        paras.append(ctx)
        at += len(ctx) + 2
    text = "\n\n".join(paras)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    cut = len(text) if len(offsets) <= max_tokens else offsets[max_tokens - 1][1]
    keep = [i for i, (s, c) in enumerate(zip(starts, paras)) if s + len(c) <= cut]
    if not keep:
        raise ValueError(f"article {raw.get('title')!r}: its first paragraph alone exceeds max_tokens={max_tokens}")
    text = text[: starts[keep[-1]] + len(paras[keep[-1]])]
    qs: list[tuple[str, int, tuple[int, int]]] = []
    for i in keep:
        lead = len(raw["paragraphs"][i]["context"]) - len(raw["paragraphs"][i]["context"].lstrip())
        for qa in raw["paragraphs"][i]["qas"]:
            if not qa.get("answers"):
                continue
            ans = qa["answers"][0]
            a = starts[i] + int(ans["answer_start"]) - lead
            if text[a : a + len(ans["text"])] != ans["text"]:
                raise ValueError(f"article {raw.get('title')!r}: answer {ans['text']!r} is not at offset {ans['answer_start']}")
            qs.append((qa["question"], a, (starts[i], starts[i] + len(paras[i]))))
            break
    rng = random.Random(seed)
    if len(qs) > questions:
        qs = sorted(rng.sample(qs, questions), key=lambda x: x[1])
    return Article(title=str(raw.get("title", "")), text=text, questions=qs)


def answer_page(spans: Sequence[Sequence[int]], char: int) -> int:
    """Index of the page whose character span holds ``char`` (the last page starting at or before it)."""
    best = None
    for i, (c0, c1) in enumerate(spans):
        if c0 <= char < c1:
            return i
        if c0 <= char:
            best = i
    if best is None:
        raise ValueError(f"character {char} lies before the first page")
    return best


def extract_examples(reader: Any, article: Article) -> tuple[DocExamples, float]:
    """Prefill ``article`` with ``reader`` and compute every question's features; returns (examples, seconds)."""
    import torch

    t0 = time.perf_counter()
    doc = reader.read(article.text)
    spans = doc.tensor("spans").tolist()
    bounds = doc.tensor("bounds").tolist()
    P = doc.n_pages
    feats, pos, valid = [], [], []
    for question, char, (p0, p1) in article.questions:
        suffix_ids = reader.prompt.suffix_ids(question)
        feats.append({k: v.cpu() for k, v in reader.page_features(doc, suffix_ids).items()})
        i = answer_page(spans, char)
        ok = torch.tensor([not (c0 < p1 and p0 < c1) for c0, c1 in spans])  # pages of its paragraph: neither
        ok[i] = True
        pos.append(i)
        valid.append(ok)
    if not feats:
        raise ValueError(f"article {article.title!r} has no questions")
    ex = DocExamples(
        title=article.title,
        quest=torch.stack([f["quest"] for f in feats]),
        mean_key=torch.stack([f["mean_key"] for f in feats]),
        q=torch.stack([f["q"] for f in feats]),
        s=feats[0]["s"],
        positive=torch.tensor(pos, dtype=torch.long),
        valid=torch.stack(valid),
        lengths=[int(b - a) for a, b in bounds],
    )
    if ex.s.shape[1] != P:
        raise AssertionError(f"features cover {ex.s.shape[1]} pages, the document has {P}")
    return ex, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Loss, metrics, training


def document_loss(scorer: Any, ex: DocExamples) -> Any:
    """Mean InfoNCE loss of ``scorer`` over one article's questions."""
    from ..readers.retrolm.trained import info_nce, score_features

    scores = score_features(scorer, ex.features())
    return info_nce(scores, ex.positive, ex.valid, scale=scorer["log_scale"].exp())


def _rank(scores: Any, pos: int) -> int:
    """1-based rank of page ``pos`` under ``select_pages``' order (score desc, then index)."""
    s = float(scores[pos])
    return 1 + sum(1 for j, v in enumerate(scores.tolist()) if v > s or (v == s and j < pos))


def rank_metrics(
    examples: Sequence[DocExamples], score_fn: Callable[[DocExamples], Any], *, k: int,
    select: Callable[[list[int], Any], list[int]] | None = None,
) -> dict[str, float]:
    """Answer-page ranks over all pages: recall@1/4/k, mean rank, MRR (and the share ``select`` keeps).

    ``score_fn(ex)`` returns scores ``[Q, P]``; ``select(lengths, scores)`` is the reader's page
    selection (``RetroLMReader.select_pages``).
    """
    ranks, kept, pages = [], [], []
    for ex in examples:
        scores = score_fn(ex)
        for qi in range(ex.n_questions):
            pos = int(ex.positive[qi])
            ranks.append(_rank(scores[qi], pos))
            pages.append(len(ex.lengths))
            if select is not None:
                kept.append(pos in select(ex.lengths, scores[qi]))
    if not ranks:
        raise ValueError("no questions to evaluate")
    n = len(ranks)
    out = {
        "questions": n,
        "pages_mean": sum(pages) / n,
        "recall@1": sum(r <= 1 for r in ranks) / n,
        "recall@4": sum(r <= 4 for r in ranks) / n,
        f"recall@{k}": sum(r <= k for r in ranks) / n,
        "mean_rank": sum(ranks) / n,
        "mrr": sum(1.0 / r for r in ranks) / n,
    }
    if select is not None:
        out["selected"] = sum(kept) / n
    return out


def _weighted_loss(scorer: Any, examples: Sequence[DocExamples]) -> Any:
    """InfoNCE over all questions of ``examples`` (articles weighted by their question counts)."""
    n = sum(ex.n_questions for ex in examples)
    return sum(document_loss(scorer, ex) * ex.n_questions for ex in examples) / max(1, n)


def _mean_loss(scorer: Any, examples: Sequence[DocExamples]) -> float:
    import torch

    with torch.no_grad():
        return float(_weighted_loss(scorer, examples))


def train_scorer(
    scorer: Any,
    train: Sequence[DocExamples],
    val: Sequence[DocExamples] = (),
    *,
    steps: int = 300,
    lr: float = 0.01,
    weight_decay: float = 0.01,
    minutes: float | None = None,
    eval_every: int = 10,
    seed: int = 0,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``scorer`` in place (full batch over ``train``, AdamW); keep the best state on ``val``.

    Without ``val`` the last state is kept. Stops early when ``minutes`` run out. Returns
    ``{"curve", "steps", "best_step", "seconds", "seconds_per_step"}``. Raises ``ValueError``
    for no training data or bad knobs.
    """
    import torch

    if not train:
        raise ValueError("no training examples")
    if steps < 1 or lr <= 0 or weight_decay < 0 or eval_every < 1:
        raise ValueError(f"need steps >= 1, lr > 0, weight_decay >= 0, eval_every >= 1; got {steps}, {lr}, {weight_decay}, {eval_every}")
    torch.manual_seed(seed)
    for p in scorer.values():
        p.requires_grad_(True)
    decay = [p for n, p in scorer.items() if n in ("u", "v")]
    rest = [p for n, p in scorer.items() if n not in ("u", "v")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    best = (_mean_loss(scorer, val), 0, {k: v.detach().clone() for k, v in scorer.items()}) if val else None
    curve: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    done = 0
    for step in range(1, steps + 1):
        if minutes is not None and time.perf_counter() - t0 > minutes * 60:
            break
        loss = _weighted_loss(scorer, train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step
        if step % eval_every == 0 or step == steps:
            point = {"step": step, "train_loss": float(loss.detach()), "seconds": round(time.perf_counter() - t0, 2)}
            if val:
                point["val_loss"] = _mean_loss(scorer, val)
                if point["val_loss"] < best[0]:
                    best = (point["val_loss"], step, {k: v.detach().clone() for k, v in scorer.items()})
            curve.append(point)
            if log is not None:
                log(point)
    seconds = time.perf_counter() - t0
    best_step = done
    if best is not None:
        best_step = best[1]
        with torch.no_grad():
            for k, v in best[2].items():
                scorer[k].copy_(v)
    for p in scorer.values():
        p.requires_grad_(False)
    return {"curve": curve, "steps": done, "best_step": best_step, "seconds": seconds, "seconds_per_step": seconds / max(1, done)}


# --------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``retrolm`` sub-command (``longread train retrolm ...``) to ``subparsers``; sets ``func=run``."""
    p = subparsers.add_parser(
        "retrolm",
        help="train reader.retrolm's page scorer (InfoNCE on SQuAD question/page pairs; the model stays frozen)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(p)
    p.set_defaults(func=run)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data dir with squad/squad-dev-1.1.rebuilt.json")
    p.add_argument("--out", required=True, help="output scorer .safetensors (a .json sidecar is written beside it)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="causal LM (hub name or HF dir; default %(default)s)")
    p.add_argument("--page-size", type=int, default=128, help="tokens per page, as in the reader (default %(default)s)")
    p.add_argument("--articles", type=int, default=16, help="training articles, validation included (default %(default)s)")
    p.add_argument("--val-articles", type=int, default=3, help="of --articles, used to pick the best step (default %(default)s)")
    p.add_argument("--heldout", type=int, default=4, help="held-out articles for the report (default %(default)s)")
    p.add_argument("--questions", type=int, default=24, help="questions per article, one per paragraph (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=4096, help="article tokens kept, cut at a paragraph end (default %(default)s)")
    p.add_argument("--layers", default=None, help="comma-separated scoring layers (default: all)")
    p.add_argument(
        "--rank", type=int, default=0,
        help="rank of the bilinear term; 0 = head weights only (default %(default)s: with 16 SQuAD articles any rank overfit)",
    )
    p.add_argument("--steps", type=int, default=200, help="full-batch optimisation steps (default %(default)s)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget for the optimisation steps")
    p.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay of the bilinear term (default %(default)s)")
    p.add_argument("--eval-every", type=int, default=10, help="steps between validation losses (default %(default)s)")
    p.add_argument("--features", default=None, help="file keeping the extracted features: reused when it matches, else written")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--cache-dir", default=None, help="model hub cache dir")


def _check(args: argparse.Namespace) -> None:
    for name in ("articles", "heldout", "questions", "max_tokens", "page_size", "steps", "eval_every"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not 0 <= args.val_articles < args.articles:
        raise ValueError(f"--val-articles must be in [0, --articles), got {args.val_articles} (--articles {args.articles})")
    if args.rank < 0:
        raise ValueError(f"--rank must be >= 0, got {args.rank}")
    if not str(args.out).endswith(".safetensors"):
        raise ValueError(f"--out must end with .safetensors (reader.retrolm's scorer param needs it), got {args.out!r}")


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated integers, got {text!r}") from None
    if not layers:
        raise ValueError("--layers must name at least one layer")
    return layers


def _load_features(path: Path, key: dict[str, Any]) -> dict[str, list[DocExamples]] | None:
    import torch

    if not path.is_file():
        return None
    blob = torch.load(path, weights_only=True)
    if blob.get("format") != FEATURES_FORMAT or blob.get("key") != key:
        print(f"[retrolm] {path} was extracted with other settings; extracting again", flush=True)
        return None
    return {part: [DocExamples(**d) for d in docs] for part, docs in blob["parts"].items()}


def _save_features(path: Path, key: dict[str, Any], parts: dict[str, list[DocExamples]]) -> None:
    import torch

    buf = io.BytesIO()
    torch.save({"format": FEATURES_FORMAT, "key": key, "parts": {p: [d.to_dict() for d in docs] for p, docs in parts.items()}}, buf)
    atomic_write_bytes(path, buf.getvalue())


def run(args: argparse.Namespace) -> int:
    """Extract features, train, report held-out metrics and write the scorer + sidecar. Returns 0."""
    import torch

    from ..models.hub import ModelHub
    from ..readers.retrolm import RetroLMParams, RetroLMReader
    from ..readers.retrolm.scoring import training_free_scores
    from ..readers.retrolm.trained import ScorerSpec, make_scorer, save_scorer, score_features
    from ..stage import RunContext

    _check(args)
    layers_arg = _parse_layers(args.layers)
    t_start = time.perf_counter()
    raw = load_squad_articles(args.data)
    need = args.articles + args.heldout
    if need > len(raw):
        raise ValueError(f"--articles + --heldout = {need}, but {args.data} has {len(raw)} articles")
    order = list(range(len(raw)))
    random.Random(args.seed).shuffle(order)
    heldout_ids, train_ids = order[: args.heldout], order[args.heldout : need]
    val_ids, fit_ids = train_ids[: args.val_articles], train_ids[args.val_articles :]
    if set(heldout_ids) & set(train_ids):
        raise AssertionError("held-out and training articles overlap")

    hub = ModelHub(cache_dir=args.cache_dir, device=args.device, dtype="float32")
    reader = RetroLMReader(
        {"model": args.model, "page_size": args.page_size, "cache": False, "memory_docs": 1, "score_layers": layers_arg,
         "budget_tokens": max(args.page_size, RetroLMParams().budget_tokens)}
    )
    reader.setup(RunContext(models=hub, device=args.device))
    layers = list(reader.scorer.layers)
    n_layers, heads, kv_heads, head_dim = reader.kv.layout
    defaults = RetroLMReader({"model": args.model, "page_size": args.page_size, "budget_tokens": reader.params.budget_tokens})
    k = reader.params.budget_tokens // args.page_size

    key = {
        "model": args.model, "page_size": args.page_size, "layers": layers, "max_tokens": args.max_tokens,
        "questions": args.questions, "seed": args.seed, "articles": [raw[i].get("title") for i in order[:need]],
    }
    feat_path = Path(args.features) if args.features else None
    parts = _load_features(feat_path, key) if feat_path is not None else None
    extract_s: list[float] = []
    if parts is None:
        parts = {"heldout": [], "val": [], "train": []}
        for part, ids in (("heldout", heldout_ids), ("val", val_ids), ("train", fit_ids)):
            for i in ids:
                art = build_article(raw[i], reader.kv.tokenizer, max_tokens=args.max_tokens, questions=args.questions, seed=args.seed)
                ex, secs = extract_examples(reader, art)
                extract_s.append(secs)
                parts[part].append(ex)
                print(f"[retrolm] {part} {art.title!r}: {len(ex.lengths)} pages, {ex.n_questions} questions, {secs:.0f}s", flush=True)
        if feat_path is not None:
            _save_features(feat_path, key, parts)
    else:
        print(f"[retrolm] features from {feat_path}", flush=True)

    spec = ScorerSpec(
        model=args.model, page_size=args.page_size, layers=layers, n_layers=n_layers, heads=heads,
        kv_heads=kv_heads, head_dim=head_dim, rank=args.rank,
    )
    scorer = make_scorer(spec, seed=args.seed)

    def trained(ex: DocExamples) -> Any:
        with torch.no_grad():
            return score_features(scorer, ex.features())

    def report(examples: list[DocExamples]) -> dict[str, Any]:
        out = {
            kind: rank_metrics(examples, lambda ex, kind=kind: training_free_scores(ex.features(), kind), k=k, select=defaults.select_pages)
            for kind in ("quest", "mean_key")
        }
        out["trained"] = rank_metrics(examples, trained, k=k, select=defaults.select_pages)
        return out

    before = report(parts["heldout"])
    print(f"[retrolm] held-out before training: {json.dumps(before)}", flush=True)
    hist = train_scorer(
        scorer, parts["train"], parts["val"], steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
        minutes=args.minutes, eval_every=args.eval_every, seed=args.seed,
        log=lambda pt: print(f"[retrolm] {json.dumps(pt)}", flush=True),
    )
    after = report(parts["heldout"])
    print(f"[retrolm] held-out after training (best step {hist['best_step']}): {json.dumps(after)}", flush=True)
    out = Path(args.out)
    save_scorer(scorer, spec, out, extra={"recipe": "longread train retrolm", "best_step": hist["best_step"]})
    sidecar = {
        "scorer": out.name,
        "model": args.model,
        "page_size": args.page_size,
        "layers": layers,
        "rank": args.rank,
        "trained_parts": "scorer only (head weights + low-rank bilinear form); the model is frozen",
        "data": {
            "source": "SQuAD v1.1 dev (squad/squad-dev-1.1.rebuilt.json), one article per document",
            "max_tokens": args.max_tokens,
            "questions_per_article": args.questions,
            "train_articles": [ex.title for ex in parts["train"]],
            "val_articles": [ex.title for ex in parts["val"]],
            "heldout_articles": [ex.title for ex in parts["heldout"]],
            "train_questions": sum(ex.n_questions for ex in parts["train"]),
            "heldout_questions": sum(ex.n_questions for ex in parts["heldout"]),
        },
        "k": k,
        "steps": hist["steps"],
        "best_step": hist["best_step"],
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "train_seconds": round(hist["seconds"], 2),
        "seconds_per_step": hist["seconds_per_step"],
        "extract_seconds_per_article": (sum(extract_s) / len(extract_s)) if extract_s else None,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "torch_threads": torch.get_num_threads(),
        "heldout_before": before,
        "heldout_after": after,
        "curve": hist["curve"],
    }
    atomic_write_json(out.with_suffix(".json"), sidecar)
    print(f"[retrolm] wrote {out} and {out.with_suffix('.json')}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m longread.train.retrolm ...``."""
    p = argparse.ArgumentParser(prog="python -m longread.train.retrolm", description=__doc__.split("\n\n")[0])
    _arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
