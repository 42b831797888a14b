"""BM25 built shard by shard: each shard's tokens become term ids, the reduce merges them.

A shard's map output (``tokens.npy``, ``lens.npy``, ``vocab.json``) holds its chunks' tokens as
int32 ids into the shard's own vocabulary (terms in order of first occurrence in the shard).
Merging the shards' vocabularies in shard order gives every term the id of its first occurrence
in the whole corpus, so the index is the one :meth:`OkapiIndex.build` makes from all tokens at once.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .bm25 import OkapiIndex, RankBM25Index

__all__ = ["save_token_shard", "merge_token_shards", "build_index_from_shards"]


def save_token_shard(out: Path, tokens: Sequence[Sequence[str]]) -> None:
    """Write one shard's tokenised chunks as term ids into ``out``."""
    flat = list(itertools.chain.from_iterable(tokens))
    vocab = {t: i for i, t in enumerate(dict.fromkeys(flat))}
    ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int32, count=len(flat))
    np.save(out / "tokens.npy", ids, allow_pickle=False)
    np.save(out / "lens.npy", np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)), allow_pickle=False)
    (out / "vocab.json").write_text(json.dumps(list(vocab), ensure_ascii=False), encoding="utf-8")


def merge_token_shards(shards: Sequence[Path]) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """``(vocab, term ids, chunk lengths)`` of all shards, in order; ids as the whole corpus numbers them."""
    vocab: dict[str, int] = {}
    ids, lens = [], []
    for d in shards:
        terms = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        # setdefault's default is evaluated first: a new term gets the next id.
        remap = np.fromiter((vocab.setdefault(t, len(vocab)) for t in terms), dtype=np.int64, count=len(terms))
        ids.append(remap[np.load(d / "tokens.npy", allow_pickle=False)])
        lens.append(np.load(d / "lens.npy", allow_pickle=False))
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return vocab, flat, np.concatenate(lens) if lens else np.zeros(0, np.int64)


def build_index_from_shards(shards: Sequence[Path], backend: str, *, k1: float, b: float) -> OkapiIndex | RankBM25Index:
    """The BM25 index of the token shards; raise ``ValueError`` for an unknown backend or no terms."""
    vocab, flat, lens = merge_token_shards(shards)
    if backend == "bm25s":
        return OkapiIndex.from_ids(vocab, flat, lens, k1=k1, b=b)
    if backend == "rank_bm25":
        terms = np.asarray(list(vocab), dtype=object)
        bounds = np.concatenate([[0], np.cumsum(lens)]).tolist()
        return RankBM25Index.build([terms[flat[a:z]].tolist() for a, z in zip(bounds, bounds[1:])], k1=k1, b=b)
    from .bm25 import BACKENDS

    raise ValueError(f"unknown BM25 backend {backend!r}; valid: {', '.join(BACKENDS)}")
