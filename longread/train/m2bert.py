"""Fine-tune an M2-BERT retrieval encoder with the orthogonal projection loss on single-sample batches.

M2-BERT's retrieval models are trained one (query, passage) pair at a time — long inputs leave
no room for in-batch negatives — so the contrastive signal comes from the pair's label. The
"orthogonal projection loss" (OPL) of the M2 retrieval recipe (HazyResearch/m2
``embeddings_train.py``, ``loss_choice="orthogonal_projection_loss"``, implemented in the
authors' sentence-transformers fork as the MSE between the pair's cosine similarity and its
label) pushes a positive pair to cosine 1 and a negative pair to cosine 0 — orthogonal:

    L(q, d, y) = (cos(e_q, e_d) − y)²,   y = 1 for the relevant passage, 0 for a negative.

Negatives are mined with BM25 as in the recipe (``gather_strong_negatives``): rank the corpus
by BM25 for the query (whitespace tokens), drop relevant documents, keep the top
``neg_pool`` and draw from them at random. Optimiser as in the recipe's yaml: AdamW,
betas (0.9, 0.98), eps 1e-6, weight decay 1e-6 (lr 5e-6 there; raise it for tiny CPU runs).
Runs on CPU on a small slice: ``python -m longread.train.m2bert --help``.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Pair", "opl_loss", "evaluate_opl", "mine_bm25_negatives", "build_pairs", "train_opl", "add_parser", "run", "main"]


@dataclass(frozen=True)
class Pair:
    """One single-sample training example: a query, a passage and its label (1.0 or 0.0)."""

    query: str
    passage: str
    label: float


def opl_loss(q: Any, d: Any, label: Any) -> Any:
    """Mean over the batch of ``(cos(q, d) − label)²``; ``q``/``d``: (B, dim) tensors, ``label``: (B,)."""
    import torch.nn.functional as F

    cos = F.cosine_similarity(q, d, dim=-1)
    return ((cos - label.to(cos.dtype)) ** 2).mean()


def mine_bm25_negatives(
    queries: Sequence[str],
    relevant: Sequence[set[int]],
    corpus: Sequence[str],
    *,
    per_query: int = 1,
    neg_pool: int = 10,
    seed: int = 0,
) -> list[list[int]]:
    """For each query, ``per_query`` corpus indices drawn from its top-``neg_pool`` BM25 non-relevant hits.

    Raises ``ValueError`` when the corpus has no non-relevant document for some query.
    """
    from rank_bm25 import BM25Okapi

    if per_query < 1 or neg_pool < 1:
        raise ValueError(f"per_query and neg_pool must be >= 1, got {per_query} and {neg_pool}")
    bm25 = BM25Okapi([doc.lower().split() for doc in corpus])
    rng = random.Random(seed)
    out = []
    for qi, (q, rel) in enumerate(zip(queries, relevant)):
        scores = bm25.get_scores(q.lower().split())
        ranked = sorted(range(len(corpus)), key=lambda i: (-scores[i], i))
        pool = [i for i in ranked if i not in rel][:neg_pool]
        if not pool:
            raise ValueError(f"query {qi} ({q[:60]!r}) has no non-relevant document to use as a negative")
        out.append([rng.choice(pool) for _ in range(per_query)])
    return out


def build_pairs(
    queries: Sequence[str], relevant: Sequence[set[int]], corpus: Sequence[str], *, per_query: int = 1,
    neg_pool: int = 10, seed: int = 0,
) -> list[Pair]:
    """Positive pairs (label 1) plus BM25-mined negative pairs (label 0), shuffled with ``seed``."""
    negs = mine_bm25_negatives(queries, relevant, corpus, per_query=per_query, neg_pool=neg_pool, seed=seed)
    pairs = []
    for q, rel, ns in zip(queries, relevant, negs):
        pairs += [Pair(q, corpus[i], 1.0) for i in sorted(rel)]
        pairs += [Pair(q, corpus[i], 0.0) for i in ns]
    random.Random(seed).shuffle(pairs)
    return pairs


def _embed(encoder: Any, texts: list[str], kind: str) -> Any:
    """Differentiable pooled embeddings from an :class:`~longread.encoders.m2bert.M2BertEncoder`."""
    import torch

    ids = encoder.token_ids(texts, kind=kind)
    L = encoder.max_tokens if encoder.padding == "max_length" else max(len(r) for r in ids)
    inp = torch.full((len(ids), L), encoder.pad_id, dtype=torch.long)
    att = torch.zeros((len(ids), L), dtype=torch.long)
    for r, row in enumerate(ids):
        inp[r, : len(row)] = torch.tensor(row)
        att[r, : len(row)] = 1
    return encoder.model(inp.to(encoder.device), att.to(encoder.device), mask_padding=encoder.padding == "longest")


def train_opl(
    encoder: Any, pairs: Sequence[Pair], *, epochs: int = 1, lr: float = 5e-6, seed: int = 0,
    weight_decay: float = 1e-6,
) -> list[float]:
    """Train ``encoder.model`` in place on single-sample batches; return the loss of every step.

    Raises ``ValueError`` for no pairs or a non-positive ``epochs``/``lr``.
    """
    import torch

    if not pairs:
        raise ValueError("no training pairs")
    if epochs < 1 or lr <= 0:
        raise ValueError(f"epochs must be >= 1 and lr > 0, got epochs={epochs} lr={lr}")
    torch.manual_seed(seed)
    model = encoder.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=weight_decay)
    losses = []
    try:
        for _ in range(epochs):
            for p in pairs:
                q = _embed(encoder, [p.query], "query")
                d = _embed(encoder, [p.passage], "document")
                loss = opl_loss(q, d, torch.tensor([p.label]))
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        model.eval()
    return losses


def evaluate_opl(encoder: Any, pairs: Sequence[Pair]) -> float:
    """Mean OPL over ``pairs`` in eval mode (no dropout, no gradients)."""
    import torch

    encoder.model.eval()
    with torch.no_grad():
        losses = [float(opl_loss(_embed(encoder, [p.query], "query"), _embed(encoder, [p.passage], "document"),
                                 torch.tensor([p.label]))) for p in pairs]
    return sum(losses) / max(1, len(losses))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``m2bert`` sub-command to an argparse ``subparsers``; sets ``func=run``."""
    p = subparsers.add_parser("m2bert", help="fine-tune M2-BERT with the orthogonal projection loss")
    _arguments(p)
    p.set_defaults(func=run)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, help="local M2-BERT dir (config.json + weights + tokenizer)")
    p.add_argument("--squad", required=True, help="SQuAD v1.1 JSON; paragraphs are passages, questions queries")
    p.add_argument("--out", required=True, help="output dir for the fine-tuned model")
    p.add_argument("--queries", type=int, default=16, help="questions to train on (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--neg-pool", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--padding", choices=["max_length", "longest"], default="max_length",
        help="max_length (default): every input padded to the model's full length, as the official "
        "checkpoints were trained and evaluated; longest: each batch at its own length (faster, masked)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the recipe from parsed arguments; prints the mean loss of the first and last quarter."""
    import json

    from ..encoders.m2bert import load_m2bert, save_m2bert_dir

    enc = load_m2bert(args.model_dir, padding=args.padding)
    with open(args.squad, encoding="utf-8") as f:
        data = json.load(f)["data"]
    corpus, queries, relevant = [], [], []
    for art in data:
        for para in art["paragraphs"]:
            corpus.append(para["context"])
            for qa in para["qas"][:1]:
                queries.append(qa["question"])
                relevant.append({len(corpus) - 1})
    rng = random.Random(args.seed)
    pick = rng.sample(range(len(queries)), min(args.queries, len(queries)))
    pairs = build_pairs([queries[i] for i in pick], [relevant[i] for i in pick], corpus, neg_pool=args.neg_pool, seed=args.seed)
    losses = train_opl(enc, pairs, epochs=args.epochs, lr=args.lr, seed=args.seed)
    q = max(1, len(losses) // 4)
    print(f"steps={len(losses)} loss first-quarter={sum(losses[:q]) / q:.4f} last-quarter={sum(losses[-q:]) / q:.4f}")
    save_m2bert_dir(enc.model, Path(args.out), enc.tokenizer)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m longread.train.m2bert``."""
    p = argparse.ArgumentParser(prog="python -m longread.train.m2bert", description=__doc__.split("\n\n")[0])
    _arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
