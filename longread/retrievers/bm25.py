"""BM25 retrieval (Okapi BM25, as ``rank_bm25.BM25Okapi`` defines it) over the indexed chunks.

Two backends give the same scores and rankings (a parity test proves it):

- ``bm25s`` (default, fast): Okapi scores are computed once at index time, vectorised, into
  a term-major sparse matrix stored and queried by the ``bm25s`` engine (its save/load use
  ``.npy`` without pickle plus JSON). bm25s' own methods cannot express Okapi's idf floor
  (negative idf replaced by ``epsilon * mean idf``), so the matrix entries are written here:
  ``idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avglen))``.
- ``rank_bm25``: the ``rank_bm25.BM25Okapi`` reference; the tokenised corpus is stored as
  JSON and the model is rebuilt from it in ``setup``.

Both use the same tokenisation: lower-case ``\\w+`` words, optional English stop words
removed, optional Snowball stemming (PyStemmer).

What a query returns: the chunks that contain at least one query term, best first (ties
by index order), at most ``top_k``. A query with no indexable term (empty, whitespace, only
punctuation or stop words) returns no passages. ``question.doc_ids`` restricts the search
to those documents' chunks; an unknown document raises ``KeyError`` naming it.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import field_validator

from ..io import atomic_write_json
from ..registry import register
from ..stage import ChunkShard, IndexBuilder, Params, RunContext, ShardedBuilder, Stage, timed
from ..types import QAState
from .common import Hits, make_passages, part_name, top_k

__all__ = ["BM25Retriever", "BM25Tokenizer", "OkapiIndex", "RankBM25Index", "OKAPI_EPSILON", "build_index", "open_index", "search"]

OKAPI_EPSILON = 0.25  # rank_bm25.BM25Okapi's default floor factor for negative idf
META_FILE = "longread_bm25.json"
FORMAT_VERSION = 1
_WORD = re.compile(r"\w+")


class BM25Tokenizer:
    """Lower-case ``\\w+`` words, minus stop words, stemmed. Picklable (for Ray workers).

    ``stemmer``: a PyStemmer language (e.g. ``"english"``) or None; ``stopwords``: ``"en"`` or None.
    Raises ``ValueError`` for an unknown stemmer language or stop-word list.
    """

    def __init__(self, stemmer: str | None = "english", stopwords: str | None = "en") -> None:
        self.stemmer_name = stemmer
        self.stopwords_name = stopwords
        self._stemmer: Any = None
        if stemmer is not None:
            import Stemmer

            if stemmer not in Stemmer.algorithms():
                raise ValueError(f"unknown stemmer {stemmer!r}; valid: {', '.join(sorted(Stemmer.algorithms()))}")
            self._stemmer = Stemmer.Stemmer(stemmer)
        if stopwords is None:
            self._stop: frozenset[str] = frozenset()
        elif stopwords == "en":
            from bm25s.stopwords import STOPWORDS_EN

            self._stop = frozenset(STOPWORDS_EN)
        else:
            raise ValueError(f"unknown stopwords {stopwords!r}; valid: 'en' or None")

    def __getstate__(self) -> dict:
        return {"stemmer": self.stemmer_name, "stopwords": self.stopwords_name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["stemmer"], state["stopwords"])  # type: ignore[misc]

    def __call__(self, text: str) -> list[str]:
        """Tokens of ``text`` (possibly empty)."""
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stop]
        if self._stemmer is not None and words:
            words = self._stemmer.stemWords(words)
        return words

    def many(self, texts: Sequence[str], show_progress: bool = False) -> list[list[str]]:
        """Tokens of each text."""
        it: Any = texts
        if show_progress:
            from tqdm.auto import tqdm

            it = tqdm(texts, desc="bm25 tokenising", unit="chunk")
        return [self(t) for t in it]


class OkapiIndex:
    """Okapi BM25 scores in a ``bm25s.BM25`` engine (see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.vocab: dict[str, int] = engine.vocab_dict
        self.n_docs = int(engine.scores["num_docs"])

    @classmethod
    def build(cls, corpus_tokens: Sequence[Sequence[str]], *, k1: float, b: float, epsilon: float = OKAPI_EPSILON) -> "OkapiIndex":
        """Index tokenised documents. Raises ``ValueError`` when no document has any token."""
        lens = np.fromiter(map(len, corpus_tokens), dtype=np.int64, count=len(corpus_tokens))
        # Term ids in order of first occurrence; map()/dict.fromkeys keep the per-token work in C.
        tokens = list(itertools.chain.from_iterable(corpus_tokens))
        vocab: dict[str, int] = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
        flat = np.fromiter(map(vocab.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        del tokens
        return cls.from_ids(vocab, flat, lens, k1=k1, b=b, epsilon=epsilon)

    @classmethod
    def from_ids(
        cls, vocab: dict[str, int], flat: np.ndarray, lens: np.ndarray, *, k1: float, b: float, epsilon: float = OKAPI_EPSILON
    ) -> "OkapiIndex":
        """Index documents given as term ids: ``flat`` holds every document's ids in turn, ``lens``
        their counts, ``vocab`` maps terms to ids. Raises ``ValueError`` when no document has a term."""
        import bm25s

        n = len(lens)
        total = int(lens.sum())
        if n == 0 or total == 0:
            raise ValueError(f"cannot build a BM25 index: none of the {n} chunks has an indexable term")
        v = len(vocab)
        flat = np.asarray(flat, dtype=np.int64)
        doc_of = np.repeat(np.arange(n, dtype=np.int64), lens)
        # One key per (term, doc) pair, term-major: unique() sorts into CSC order and counts tf.
        keys, tf = np.unique(flat * n + doc_of, return_counts=True)
        term, doc = keys // n, keys % n
        df = np.bincount(term, minlength=v)
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        # rank_bm25: negative idf (term in more than half the docs) -> epsilon * mean idf of all terms.
        idf = np.where(idf < 0, epsilon * (idf.sum() / v), idf)
        avgdl = total / n
        tf = tf.astype(np.float64)
        data = idf[term] * (tf * (k1 + 1) / (tf + k1 * (1 - b + b * lens[doc] / avgdl)))
        indptr = np.zeros(v + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        # method/idf_method only label the saved params: the engine just sums stored entries.
        engine = bm25s.BM25(k1=k1, b=b, method="atire", dtype="float64", int_dtype="int64", backend="numpy")
        engine.scores = {"data": data, "indices": doc, "indptr": indptr, "num_docs": n}
        engine.vocab_dict = vocab
        engine.unique_token_ids_set = set(vocab.values())
        engine.nonoccurrence_array = None
        return cls(engine)

    def save(self, directory: Path) -> None:
        """Write the engine with bm25s' own format (``.npy`` without pickle, JSON)."""
        self.engine.save(str(directory), allow_pickle=False, show_progress=False)

    @classmethod
    def load(cls, directory: Path) -> "OkapiIndex":
        """Open an index written by :meth:`save` (no pickle)."""
        import bm25s

        return cls(bm25s.BM25.load(str(directory), allow_pickle=False, load_corpus=False))

    def _ids(self, tokens: Sequence[str]) -> np.ndarray:
        return np.asarray(self.engine.get_tokens_ids(list(tokens)), dtype=np.int64)

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """Okapi score of every document for the query ``tokens`` (float64, shape (n_docs,))."""
        ids = self._ids(tokens)
        if len(ids) == 0:
            return np.zeros(self.n_docs, dtype=np.float64)
        return np.asarray(self.engine.get_scores_from_ids(ids), dtype=np.float64)

    def matched(self, tokens: Sequence[str]) -> np.ndarray:
        """Positions of the documents containing at least one of ``tokens`` (sorted)."""
        ids = np.unique(self._ids(tokens))
        s = self.engine.scores
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        parts = [s["indices"][s["indptr"][t] : s["indptr"][t + 1]] for t in ids.tolist()]
        return np.unique(np.concatenate(parts)).astype(np.int64)


class RankBM25Index:
    """The ``rank_bm25.BM25Okapi`` reference over the same tokens."""

    def __init__(self, corpus_tokens: list[list[str]], *, k1: float, b: float, epsilon: float = OKAPI_EPSILON) -> None:
        from rank_bm25 import BM25Okapi

        if not corpus_tokens or not any(corpus_tokens):
            raise ValueError(f"cannot build a BM25 index: none of the {len(corpus_tokens)} chunks has an indexable term")
        self.corpus_tokens = corpus_tokens
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.model = BM25Okapi(corpus_tokens, k1=k1, b=b, epsilon=epsilon)
        self.n_docs = len(corpus_tokens)

    @classmethod
    def build(cls, corpus_tokens: Sequence[Sequence[str]], *, k1: float, b: float, epsilon: float = OKAPI_EPSILON) -> "RankBM25Index":
        """Index tokenised documents. Raises ``ValueError`` when no document has any token."""
        return cls([list(d) for d in corpus_tokens], k1=k1, b=b, epsilon=epsilon)

    def save(self, directory: Path) -> None:
        """Write the tokenised corpus as JSON; the model is rebuilt from it on load."""
        atomic_write_json(directory / "tokens.json", self.corpus_tokens)

    @classmethod
    def load(cls, directory: Path, *, k1: float, b: float, epsilon: float = OKAPI_EPSILON) -> "RankBM25Index":
        """Rebuild the model from ``tokens.json``."""
        with open(directory / "tokens.json", encoding="utf-8") as f:
            return cls(json.load(f), k1=k1, b=b, epsilon=epsilon)

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """Okapi score of every document (float64, shape (n_docs,))."""
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.asarray(self.model.get_scores(list(tokens)), dtype=np.float64)
        # rank_bm25 computes 0/0 for a document with no tokens when b == 1; it matched nothing: 0.
        return np.nan_to_num(scores, nan=0.0)

    def matched(self, tokens: Sequence[str]) -> np.ndarray:
        """Positions of the documents containing at least one of ``tokens`` (sorted)."""
        q = set(tokens)
        return np.asarray([i for i, d in enumerate(self.model.doc_freqs) if not q.isdisjoint(d)], dtype=np.int64)


Backend = Literal["bm25s", "rank_bm25"]
BACKENDS: tuple[str, ...] = ("bm25s", "rank_bm25")


def build_index(corpus_tokens: Sequence[Sequence[str]], backend: str, *, k1: float, b: float) -> OkapiIndex | RankBM25Index:
    """Build a BM25 index with ``backend``; raise ``ValueError`` for an unknown backend."""
    if backend == "bm25s":
        return OkapiIndex.build(corpus_tokens, k1=k1, b=b)
    if backend == "rank_bm25":
        return RankBM25Index.build(corpus_tokens, k1=k1, b=b)
    raise ValueError(f"unknown BM25 backend {backend!r}; valid: {', '.join(BACKENDS)}")


def open_index(directory: Path) -> tuple[OkapiIndex | RankBM25Index, dict]:
    """Open a saved BM25 part; return the index and its metadata.

    Raises ``ValueError`` for a part written in another format version or by an unknown backend.
    """
    with open(directory / META_FILE, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{directory}: BM25 index format {meta.get('format')!r}, expected {FORMAT_VERSION}; rebuild the index")
    backend = meta.get("backend")
    if backend == "bm25s":
        return OkapiIndex.load(directory), meta
    if backend == "rank_bm25":
        return RankBM25Index.load(directory, k1=meta["k1"], b=meta["b"], epsilon=meta["epsilon"]), meta
    raise ValueError(f"{directory}: unknown BM25 backend {backend!r}; valid: {', '.join(BACKENDS)}")


def search(index: OkapiIndex | RankBM25Index, tokens: Sequence[str], k: int, positions: Sequence[int] | None = None) -> Hits:
    """Best ``k`` matching documents for query ``tokens``, optionally only among ``positions``."""
    if not tokens:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    scores = index.scores(tokens)
    cand = index.matched(tokens)
    if positions is not None:
        cand = np.intersect1d(cand, np.asarray(positions, dtype=np.int64))
    return top_k(scores, k, cand)


@register
class BM25Retriever(Stage):
    """``retriever.bm25``: Okapi BM25 over the indexed chunks (see the module docstring)."""

    key: ClassVar[str] = "retriever.bm25"

    class Params(Params):
        """``top_k`` passages; ``k1``/``b`` Okapi parameters; tokenisation; engine backend."""

        top_k: int = 20
        k1: float = 1.5
        b: float = 0.75
        stemmer: str | None = "english"
        stopwords: Literal["en"] | None = "en"
        backend: Backend = "bm25s"

        @field_validator("top_k")
        @classmethod
        def _top_k(cls, v: int) -> int:
            if v <= 0:
                raise ValueError(f"top_k must be > 0, got {v}")
            return v

        @field_validator("k1")
        @classmethod
        def _k1(cls, v: float) -> float:
            if not v >= 0:
                raise ValueError(f"k1 must be >= 0, got {v}")
            return v

        @field_validator("b")
        @classmethod
        def _b(cls, v: float) -> float:
            if not 0 <= v <= 1:
                raise ValueError(f"b must be in [0, 1], got {v}")
            return v

        @field_validator("stemmer")
        @classmethod
        def _stemmer(cls, v: str | None) -> str | None:
            if v is not None:
                import Stemmer

                if v not in Stemmer.algorithms():
                    raise ValueError(f"unknown stemmer {v!r}; valid: None, {', '.join(sorted(Stemmer.algorithms()))}")
            return v

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._index: OkapiIndex | RankBM25Index | None = None
        self._tokenizer: BM25Tokenizer | None = None
        self._chunks: list = []
        self._store: Any = None

    @property
    def part(self) -> str:
        """Index part name; changes with every param that changes the index."""
        p = self.params
        fields = {"backend": p.backend, "k1": p.k1, "b": p.b, "stemmer": p.stemmer, "stopwords": p.stopwords,
                  "epsilon": OKAPI_EPSILON, "format": FORMAT_VERSION}
        return part_name(f"bm25-{p.backend.replace('_', '')}", fields)

    def tokenizer(self) -> BM25Tokenizer:
        """The query/corpus tokenizer for these params."""
        if self._tokenizer is None:
            self._tokenizer = BM25Tokenizer(self.params.stemmer, self.params.stopwords)
        return self._tokenizer

    def indexes(self) -> dict[str, IndexBuilder]:
        """One part: the BM25 index of every chunk's text, tokenised shard by shard."""
        return {self.part: ShardedBuilder(map=self._tokenize_shard, reduce=self._build)}

    def _tokenize_shard(self, ctx: RunContext, shard: ChunkShard, out: Path) -> None:
        from .bm25_shards import save_token_shard

        save_token_shard(out, self.tokenizer().many(shard.texts))

    def _build(self, ctx: RunContext, shards: Sequence[Path], out: Path) -> None:
        from .bm25_shards import build_index_from_shards

        p = self.params
        index = build_index_from_shards(shards, p.backend, k1=p.k1, b=p.b)
        index.save(out)
        atomic_write_json(out / META_FILE, {
            "format": FORMAT_VERSION, "backend": p.backend, "k1": p.k1, "b": p.b, "epsilon": OKAPI_EPSILON,
            "stemmer": p.stemmer, "stopwords": p.stopwords, "n_docs": index.n_docs,
        })

    def setup(self, ctx: RunContext) -> None:
        """Open the persisted index part (never rebuilt here). Raises ``ValueError`` on a corpus mismatch."""
        store = ctx.require_store()
        path = ctx.index_part(self.part)
        index, meta = open_index(path)
        if index.n_docs != len(store.chunks):
            raise ValueError(f"{path}: BM25 index has {index.n_docs} chunks but the corpus has {len(store.chunks)}; rebuild the index")
        self._index, self._store, self._chunks = index, store, store.chunks
        self.tokenizer()

    def search(self, queries: Sequence[str], doc_ids: Sequence[Sequence[str] | None] | None = None, k: int | None = None) -> list[Hits]:
        """Hits for each query (optionally scoped to ``doc_ids[i]``); see the module docstring.

        Raises ``RuntimeError`` before ``setup`` and ``KeyError`` for an unknown document id.
        """
        if self._index is None:
            raise RuntimeError("BM25Retriever.search called before setup()")
        k = self.params.top_k if k is None else k
        scopes = doc_ids if doc_ids is not None else [None] * len(queries)
        tok = self.tokenizer()
        out = []
        for q, scope in zip(queries, scopes):
            positions = self._store.positions_for(scope)
            out.append(search(self._index, tok(q), k, positions))
        return out

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Set ``passages`` of each state to its BM25 hits, best first."""
        with timed(batch, self.key):
            hits = self.search([s.question.question for s in batch], [s.question.doc_ids for s in batch])
            for s, h in zip(batch, hits):
                s.passages = make_passages(self._chunks, h, self.key)
        return batch
