"""BM25 retrieval (Okapi BM25, as ``rank_bm25.BM25Okapi`` defines it) over the indexed chunks.

Two backends give the same scores and rankings (a parity test proves it):

- ``bm25s`` (default, fast): Okapi scores are computed once at index time, vectorised, into a
  term-major sparse matrix (terms x chunks) stored in ``bm25s``' file layout (``.npy`` without
  pickle plus JSON; ``bm25s.BM25.load`` opens it). bm25s' own methods cannot express Okapi's idf
  floor (negative idf replaced by ``epsilon * mean idf``), so the entries are written here:
  ``idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avglen))``. The build streams
  (see :class:`OkapiBuilder`): ``Pipeline.index`` tokenises and counts each store shard apart
  (in parallel on Ray, kept for a resumed build) and one builder merges the shards' counts
  into the matrix on disk; 10M chunks fit a 24 GB machine. At query time the matrix is
  memory-mapped and a batch of questions is scored as one sparse product (query-term counts
  x matrix), so cost follows the postings the queries touch, not the corpus size.
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
import shutil
from array import array
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Literal, Sequence

import numpy as np
from pydantic import field_validator

from ..io import atomic_write_json, atomic_write_text
from ..registry import register
from ..stage import ChunkShard, IndexBuilder, Params, RunContext, ShardedBuilder, Stage, timed
from ..types import QAState
from .common import Hits, make_passages, part_name, select_top_k

__all__ = ["BM25Retriever", "BM25Tokenizer", "OkapiBuilder", "OkapiIndex", "RankBM25Index", "OKAPI_EPSILON",
           "build_index", "open_index", "search", "search_many"]

OKAPI_EPSILON = 0.25  # rank_bm25.BM25Okapi's default floor factor for negative idf
META_FILE = "longread_bm25.json"
FORMAT_VERSION = 2  # 2: streamed build, int32 ids, idf.npy beside the matrix
_WORD = re.compile(r"\w+")
_NO_HITS: Hits = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
# Postings one sparse product may touch: bounds its result (12 bytes an entry, ~200 MB) whatever
# the batch size; small corpora score a whole batch in one product.
_MAX_GROUP_POSTINGS = 1 << 24
# A builder's counted blocks and the parts sharded builds hand from map to reduce.
_BLOCK_ARRAYS = ("terms", "tf", "per_chunk")
_PART_FILE = "part.json"
_PART_FORMAT = 1


def _load(a: Any) -> np.ndarray:
    """An array, or the one a ``.npy`` path holds."""
    return np.load(a, allow_pickle=False) if isinstance(a, Path) else a


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


class OkapiBuilder:
    """Builds an :class:`OkapiIndex` from tokenised chunks streamed in one at a time, or from
    parts (one shard's chunks each) that builders in other processes wrote.

    Memory stays near one block plus the vocabulary, not the corpus: tokens become int32 ids as
    they arrive (no list of strings per chunk is kept); every ``block`` chunks their distinct
    ``(term, tf)`` pairs are counted and, with a ``directory``, spilled to disk; ``finish``
    scatters the scores into the term-major matrix written straight into its ``.npy`` files
    (memory-mapped), ``block`` chunks at a time. Without a ``directory`` everything stays in
    memory (small corpora, tests). Term ids are numbered by first occurrence and entries sorted
    by (term, chunk).

    Sharded builds (``retriever.bm25``'s index part): each shard's builder :meth:`write_part` s
    its counted blocks with the shard's own vocabulary; the reducing builder :meth:`add_part` s
    them in shard order, reading only their vocabularies and counts, and ``finish`` renumbers
    each block's terms as it scatters it. The index is byte for byte the one a single builder
    makes from the same chunks, whatever the shard sizes.
    """

    def __init__(self, *, k1: float, b: float, epsilon: float = OKAPI_EPSILON, directory: Path | None = None,
                 block: int = 65_536) -> None:
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.directory = Path(directory) if directory is not None else None
        self.block = block
        # A missing word gets the next id: the default factory is the dict's own length.
        self.vocab: defaultdict[str, int] = defaultdict()
        self.vocab.default_factory = self.vocab.__len__
        self._id_of = self.vocab.__getitem__
        self._ids = array("i")  # the current block's token ids
        self._block_lens = array("i")
        self._lens = array("i")  # every chunk's token count, in order
        # Per block: (terms, tfs, distinct terms per chunk, term renumbering or None), each an
        # array or the .npy file holding it.
        self._blocks: list[tuple[Any, Any, Any, Any]] = []
        self._df = np.zeros(0, dtype=np.int64)
        self._spill = self.directory / ".blocks" if self.directory is not None else None

    @property
    def n_chunks(self) -> int:
        """Chunks added so far (by :meth:`add` and :meth:`add_part`)."""
        return len(self._lens) + len(self._block_lens)

    def add(self, tokens: Sequence[str]) -> None:
        """Append one chunk's tokens (possibly none)."""
        n = len(self._ids)
        self._ids.extend(map(self._id_of, tokens))
        self._block_lens.append(len(self._ids) - n)
        if len(self._block_lens) >= self.block:
            self._flush()

    def add_many(self, corpus_tokens: Iterable[Sequence[str]]) -> "OkapiBuilder":
        """Append every chunk of ``corpus_tokens``; returns ``self``."""
        for tokens in corpus_tokens:
            self.add(tokens)
        return self

    def _grow_df(self) -> np.ndarray:
        df = np.zeros(len(self.vocab), dtype=np.int64)
        df[: len(self._df)] = self._df
        self._df = df
        return df

    def _flush(self) -> None:
        lens = np.array(self._block_lens, dtype=np.int64)
        if len(lens) == 0:
            return
        flat = np.array(self._ids, dtype=np.int64)
        self._lens.extend(self._block_lens)
        self._ids, self._block_lens = array("i"), array("i")
        v = max(1, len(self.vocab))
        # One key per (chunk, term) pair; unique() sorts chunk-major and counts tf.
        keys, tf = np.unique(np.repeat(np.arange(len(lens), dtype=np.int64), lens) * v + flat, return_counts=True)
        del flat
        terms = (keys % v).astype(np.int32)
        per_chunk = np.bincount(keys // v, minlength=len(lens)).astype(np.int32)
        del keys
        tf = tf.astype(np.uint16 if len(tf) == 0 or tf.max() < 2**16 else np.int32)
        self._grow_df()[:] += np.bincount(terms, minlength=len(self.vocab))
        if self._spill is not None:
            self._spill.mkdir(parents=True, exist_ok=True)
            i = len(self._blocks)
            paths = tuple(self._spill / f"{i}.{name}.npy" for name in _BLOCK_ARRAYS)
            for path, arr in zip(paths, (terms, tf, per_chunk)):
                np.save(path, arr, allow_pickle=False)
            self._blocks.append((*paths, None))
        else:
            self._blocks.append((terms, tf, per_chunk, None))

    def write_part(self, out: Path) -> None:
        """Write the chunks added so far as a part for :meth:`add_part` into the directory ``out``:
        the counted blocks (``N.terms.npy``, ``N.tf.npy``, ``N.per_chunk.npy``; int32 term ids
        into this builder's vocabulary), ``lens.npy``, ``df.npy``, ``vocab.json`` (the terms in id
        order) and ``part.json`` last. Only for a builder fed with :meth:`add`."""
        self._flush()
        if any(block[3] is not None for block in self._blocks):
            raise ValueError("write_part: this builder holds added parts; write parts only from add()ed chunks")
        out = Path(out)
        for i, block in enumerate(self._blocks):
            for name, arr in zip(_BLOCK_ARRAYS, block):
                np.save(out / f"{i}.{name}.npy", _load(arr), allow_pickle=False)
        np.save(out / "lens.npy", np.frombuffer(self._lens, dtype=np.int32) if len(self._lens) else np.zeros(0, np.int32),
                allow_pickle=False)
        np.save(out / "df.npy", self._grow_df(), allow_pickle=False)
        atomic_write_text(out / "vocab.json", json.dumps(list(self.vocab), ensure_ascii=False))
        atomic_write_json(out / _PART_FILE, {"format": _PART_FORMAT, "n_chunks": len(self._lens), "blocks": len(self._blocks),
                                             "n_terms": len(self.vocab)})

    def add_part(self, part: Path) -> None:
        """Append the chunks of a part :meth:`write_part` wrote (after those added so far).

        Reads the part's vocabulary, counts and lengths now; its blocks are read by ``finish``,
        so ``part`` must stay until then. Raises ``ValueError`` for a directory holding no part.
        """
        self._flush()
        part = Path(part)
        try:
            meta = json.loads((part / _PART_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{part}: not a BM25 index part ({_PART_FILE}: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != _PART_FORMAT:
            raise ValueError(f"{part}: BM25 part format {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                             f"expected {_PART_FORMAT}; rebuild the index")
        with open(part / "vocab.json", encoding="utf-8") as f:
            terms = json.load(f)
        # The part's terms in its id order: new ones get the next ids, so ids stay numbered by
        # first occurrence in the whole corpus.
        remap = np.fromiter(map(self._id_of, terms), dtype=np.int32, count=len(terms))
        del terms
        self._grow_df()[remap] += np.load(part / "df.npy", allow_pickle=False)
        self._lens.frombytes(np.load(part / "lens.npy", allow_pickle=False).astype(np.int32).tobytes())
        if self._spill is not None:
            self._spill.mkdir(parents=True, exist_ok=True)
            path = self._spill / f"{len(self._blocks)}.remap.npy"
            np.save(path, remap, allow_pickle=False)
            remap = path
        for i in range(int(meta["blocks"])):
            self._blocks.append((*(part / f"{i}.{name}.npy" for name in _BLOCK_ARRAYS), remap))

    def finish(self, show_progress: bool = False) -> "OkapiIndex":
        """Compute idf and write the matrix; return the index (memory-mapped with a ``directory``).

        ``show_progress``: a bar over the chunks as their scores are written.
        Raises ``ValueError`` when no chunk has any token.
        """
        try:
            return self._finish(show_progress)
        finally:
            if self._spill is not None and self._spill.exists():
                shutil.rmtree(self._spill)

    def _groups(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The blocks, terms renumbered, joined into groups of at least ``block`` chunks (parts
        of small shards would otherwise make many small scatters over the whole matrix)."""
        group: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        size = 0
        for terms, tf, per_chunk, remap in self._blocks:
            terms, per_chunk = _load(terms), _load(per_chunk)
            if remap is not None:
                terms = _load(remap)[terms]
            group.append((terms, _load(tf), per_chunk))
            size += len(per_chunk)
            if size >= self.block:
                yield tuple(np.concatenate(a) for a in zip(*group))  # type: ignore[misc]
                group, size = [], 0
        if group:
            yield tuple(np.concatenate(a) for a in zip(*group))  # type: ignore[misc]

    def _finish(self, show_progress: bool) -> "OkapiIndex":
        self._flush()
        n = len(self._lens)
        lens = np.frombuffer(self._lens, dtype=np.int32) if n else np.zeros(0, dtype=np.int32)
        total = int(lens.sum(dtype=np.int64))
        if n == 0 or total == 0:
            raise ValueError(f"cannot build a BM25 index: none of the {n} chunks has an indexable term")
        v = len(self.vocab)
        df = self._grow_df()
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        # rank_bm25: negative idf (term in more than half the docs) -> epsilon * mean idf of all terms.
        idf = np.where(idf < 0, self.epsilon * (idf.sum() / v), idf)
        avgdl = total / n
        nnz = int(df.sum())
        # int32 ids where they fit: half the memory, and scipy then shares the arrays instead of
        # copying them to int64 (it needs one index dtype for indptr and indices).
        idx_dtype = np.int32 if max(nnz, n) < 2**31 else np.int64
        indptr = np.zeros(v + 1, dtype=idx_dtype)
        np.cumsum(df, out=indptr[1:], dtype=idx_dtype)
        data, indices = self._alloc(nnz, idx_dtype)
        cursor = indptr[:-1].astype(np.int64)
        first = 0
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="bm25 writing index", unit="chunk", mininterval=1.0)
        for terms, tf, per_chunk in self._groups():
            chunk = np.repeat(np.arange(first, first + len(per_chunk), dtype=idx_dtype), per_chunk)
            first += len(per_chunk)
            tf = tf.astype(np.float64)
            val = idf[terms] * (tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * lens[chunk] / avgdl)))
            # Scatter term-major: a stable sort keeps chunk order inside each term's run.
            order = np.argsort(terms, kind="stable")
            ts = terms[order]
            starts = np.flatnonzero(np.concatenate(([True], ts[1:] != ts[:-1]))) if len(ts) else np.zeros(0, dtype=np.int64)
            runs = np.diff(np.append(starts, len(ts)))
            pos = cursor[ts] + (np.arange(len(ts)) - np.repeat(starts, runs))
            indices[pos] = chunk[order]
            data[pos] = val[order]
            cursor[ts[starts]] += runs
            if bar is not None:
                bar.update(len(per_chunk))
        if bar is not None:
            bar.close()
        vocab = dict(self.vocab)
        if self.directory is None:
            return OkapiIndex(data, indices, indptr, vocab, idf, n_docs=n, k1=self.k1, b=self.b)
        for arr in (data, indices):
            arr.flush()
        del data, indices
        np.save(self.directory / _FILES["indptr"], indptr, allow_pickle=False)
        np.save(self.directory / _FILES["idf"], idf, allow_pickle=False)
        _write_vocab_and_params(self.directory, vocab, n_docs=n, k1=self.k1, b=self.b, int_dtype=idx_dtype)
        return OkapiIndex.load(self.directory)

    def _alloc(self, nnz: int, idx_dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.directory is None:
            return np.empty(nnz, dtype=np.float64), np.empty(nnz, dtype=idx_dtype)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Written in place: the finished matrix never has to fit in anonymous memory.
        fmt = np.lib.format
        return (fmt.open_memmap(self.directory / _FILES["data"], mode="w+", dtype=np.float64, shape=(nnz,)),
                fmt.open_memmap(self.directory / _FILES["indices"], mode="w+", dtype=idx_dtype, shape=(nnz,)))


# bm25s' file names (``bm25s.BM25.load`` opens the part) plus our idf (kept to know which terms
# can contribute a zero or negative score).
_FILES = {"data": "data.csc.index.npy", "indices": "indices.csc.index.npy", "indptr": "indptr.csc.index.npy",
          "vocab": "vocab.index.json", "params": "params.index.json", "idf": "idf.npy"}


def _write_vocab_and_params(directory: Path, vocab: dict[str, int], *, n_docs: int, k1: float, b: float, int_dtype: Any) -> None:
    from importlib.metadata import version

    atomic_write_text(directory / _FILES["vocab"], json.dumps(vocab, ensure_ascii=False))
    # bm25s' params layout; method/idf_method only label the file: scores are the stored entries.
    atomic_write_json(directory / _FILES["params"], {
        "k1": k1, "b": b, "delta": 0.5, "method": "atire", "idf_method": "atire", "dtype": "float64",
        "int_dtype": np.dtype(int_dtype).name, "num_docs": n_docs, "version": version("bm25s"), "backend": "numpy",
    })


class OkapiIndex:
    """Okapi BM25 scores as a term-major sparse matrix (terms x chunks, see the module docstring).

    ``data[j]`` is the score chunk ``indices[j]`` gets from term ``t`` for ``indptr[t] <= j <
    indptr[t+1]``. A query's scores are the sum of its tokens' rows (repeated tokens count again,
    as in rank_bm25), computed for a whole batch as one sparse product.
    """

    def __init__(self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, vocab: dict[str, int],
                 idf: np.ndarray, *, n_docs: int, k1: float, b: float) -> None:
        import scipy.sparse as sp

        self.data, self.indices, self.indptr = data, indices, indptr
        self.vocab, self.idf, self.n_docs, self.k1, self.b = vocab, idf, n_docs, k1, b
        self.matrix = sp.csr_matrix((data, indices, indptr), shape=(len(vocab), n_docs), copy=False)
        # A term with idf <= 0 can make a matching chunk's sum 0, which the sparse product drops;
        # queries with such a term take the exact path (rare: idf == 0 needs df == n/2 exactly,
        # and the floor is negative only when most terms are in most chunks).
        self._risky = idf <= 0
        self._df = np.diff(np.asarray(indptr, dtype=np.int64))

    @classmethod
    def build(cls, corpus_tokens: Iterable[Sequence[str]], *, k1: float, b: float, epsilon: float = OKAPI_EPSILON,
              directory: Path | None = None) -> "OkapiIndex":
        """Index tokenised chunks (see :class:`OkapiBuilder`). Raises ``ValueError`` when no chunk has a token."""
        return OkapiBuilder(k1=k1, b=b, epsilon=epsilon, directory=directory).add_many(corpus_tokens).finish()

    def save(self, directory: Path) -> None:
        """Write the index in bm25s' layout (``.npy`` without pickle, JSON); a no-op where it already lives."""
        directory = Path(directory)
        if isinstance(self.data, np.memmap) and Path(self.data.filename).parent.resolve() == directory.resolve():
            return
        for name, arr in (("data", self.data), ("indices", self.indices), ("indptr", self.indptr), ("idf", self.idf)):
            np.save(directory / _FILES[name], np.asarray(arr), allow_pickle=False)
        _write_vocab_and_params(directory, self.vocab, n_docs=self.n_docs, k1=self.k1, b=self.b, int_dtype=self.indices.dtype)

    @classmethod
    def load(cls, directory: Path) -> "OkapiIndex":
        """Open an index written by :meth:`save` or a builder, memory-mapped (pages shared between workers)."""
        directory = Path(directory)
        arrays = {name: np.load(directory / _FILES[name], allow_pickle=False, mmap_mode="r")
                  for name in ("data", "indices", "indptr")}
        idf = np.load(directory / _FILES["idf"], allow_pickle=False)
        with open(directory / _FILES["vocab"], encoding="utf-8") as f:
            vocab = json.load(f)
        with open(directory / _FILES["params"], encoding="utf-8") as f:
            params = json.load(f)
        return cls(arrays["data"], arrays["indices"], arrays["indptr"], vocab, idf,
                   n_docs=int(params["num_docs"]), k1=float(params["k1"]), b=float(params["b"]))

    def _ids(self, tokens: Sequence[str]) -> list[int]:
        get = self.vocab.get
        return [i for i in map(get, tokens) if i is not None]

    def _sparse(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(chunks containing a query term (sorted), their scores)``, summed in query order."""
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        ptr = self.indptr
        spans = [(int(ptr[t]), int(ptr[t + 1])) for t in ids]
        chunks = np.concatenate([self.indices[a:e] for a, e in spans])
        vals = np.concatenate([self.data[a:e] for a, e in spans])
        u, inv = np.unique(chunks, return_inverse=True)
        return u.astype(np.int64), np.bincount(inv, weights=vals, minlength=len(u))

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """Okapi score of every chunk for the query ``tokens`` (float64, shape (n_docs,))."""
        out = np.zeros(self.n_docs, dtype=np.float64)
        pos, vals = self._sparse(self._ids(tokens))
        out[pos] = vals
        return out

    def matched(self, tokens: Sequence[str]) -> np.ndarray:
        """Positions of the chunks containing at least one of ``tokens`` (sorted)."""
        return self._sparse(sorted(set(self._ids(tokens))))[0]

    def search_many(self, queries: Sequence[Sequence[str]], k: int, scopes: Sequence[np.ndarray | None] | None = None,
                    *, threads: int = 1) -> list[Hits]:
        """Best ``k`` matching chunks per tokenised query, optionally only among ``scopes[i]`` positions.

        One sparse product scores a group of queries (the whole batch unless its postings are many;
        groups run on ``threads`` threads when > 1, scipy releases the GIL); scopes are applied to
        all scoped rows of a group at once.
        """
        scopes = list(scopes) if scopes is not None else [None] * len(queries)
        ids = [self._ids(q) for q in queries]
        out: list[Hits] = [_NO_HITS] * len(queries)
        fast = [i for i, q in enumerate(ids) if q and not self._risky[q].any()]
        for i, q in enumerate(ids):
            if q and self._risky[q].any():
                pos, vals = self._sparse(q)
                if scopes[i] is not None:
                    keep = np.isin(pos, scopes[i])
                    pos, vals = pos[keep], vals[keep]
                out[i] = select_top_k(pos, vals, k)
        if not fast:
            return out
        parts = self._groups(fast, ids, threads)
        if len(parts) == 1 or threads == 1:
            results = [self._search_rows(rows, ids, scopes, k) for rows in parts]
        else:
            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(lambda rows: self._search_rows(rows, ids, scopes, k), parts))
        for rows, hits in zip(parts, results):
            for i, h in zip(rows, hits):
                out[i] = h
        return out

    def _groups(self, rows: list[int], ids: list[list[int]], threads: int) -> list[list[int]]:
        """Consecutive groups of ``rows`` for one sparse product each: at most ``len/threads`` rows
        and, past the first row, at most ``_MAX_GROUP_POSTINGS`` postings, the bound on the
        product's size (10M chunks: a frequent term alone has ~1M postings)."""
        cap = -(-len(rows) // threads)
        groups: list[list[int]] = []
        cur: list[int] = []
        load = 0
        for i in rows:
            n = int(self._df[ids[i]].sum())
            if cur and (len(cur) >= cap or load + n > _MAX_GROUP_POSTINGS):
                groups.append(cur)
                cur, load = [], 0
            cur.append(i)
            load += n
        return groups + [cur] if cur else groups

    def _search_rows(self, rows: list[int], ids: list[list[int]], scopes: list[np.ndarray | None], k: int) -> list[Hits]:
        import scipy.sparse as sp

        lens = [len(ids[i]) for i in rows]
        q_rows = np.repeat(np.arange(len(rows)), lens)
        q_cols = np.fromiter(itertools.chain.from_iterable(ids[i] for i in rows), dtype=np.int64, count=sum(lens))
        # Repeated query tokens become counts (the csr conversion sums duplicates).
        qm = sp.csr_matrix((np.ones(len(q_cols)), (q_rows, q_cols)), shape=(len(rows), self.matrix.shape[0]))
        res = (qm @ self.matrix).tocsr()
        scoped = [j for j, i in enumerate(rows) if scopes[i] is not None]
        in_scope = res
        if scoped:
            # One elementwise product with a 0/1 scope matrix restricts every scoped row at once.
            sc = [np.asarray(scopes[rows[j]], dtype=np.int64) for j in scoped]
            m_rows = np.repeat(np.asarray(scoped), [len(s) for s in sc])
            mask = sp.csr_matrix((np.ones(len(m_rows)), (m_rows, np.concatenate(sc))), shape=res.shape)
            mask.data[:] = 1.0  # a position listed twice keeps its score once
            in_scope = res.multiply(mask).tocsr()
        hits = []
        for j, i in enumerate(rows):
            m = res if scopes[i] is None else in_scope
            a, e = m.indptr[j], m.indptr[j + 1]
            hits.append(select_top_k(m.indices[a:e], m.data[a:e], k))
        return hits


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

    def search_many(self, queries: Sequence[Sequence[str]], k: int, scopes: Sequence[np.ndarray | None] | None = None,
                    *, threads: int = 1) -> list[Hits]:
        """Best ``k`` matching documents per query (one reference call per query; ``threads`` unused)."""
        scopes = list(scopes) if scopes is not None else [None] * len(queries)
        out = []
        for q, scope in zip(queries, scopes):
            if not q:
                out.append(_NO_HITS)
                continue
            cand = self.matched(q)
            if scope is not None:
                cand = np.intersect1d(cand, np.asarray(scope, dtype=np.int64))
            out.append(select_top_k(cand, self.scores(q)[cand], k))
        return out


Backend = Literal["bm25s", "rank_bm25"]
BACKENDS: tuple[str, ...] = ("bm25s", "rank_bm25")


def build_index(corpus_tokens: Iterable[Sequence[str]], backend: str, *, k1: float, b: float,
                directory: Path | None = None) -> OkapiIndex | RankBM25Index:
    """Build a BM25 index with ``backend`` (``bm25s`` streams into ``directory`` when given).

    Raises ``ValueError`` for an unknown backend or a corpus without any token.
    """
    if backend == "bm25s":
        return OkapiIndex.build(corpus_tokens, k1=k1, b=b, directory=directory)
    if backend == "rank_bm25":
        return RankBM25Index.build(list(corpus_tokens), k1=k1, b=b)
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
    return search_many(index, [tokens], k, [None if positions is None else np.asarray(positions, dtype=np.int64)])[0]


def search_many(index: OkapiIndex | RankBM25Index, queries: Sequence[Sequence[str]], k: int,
                scopes: Sequence[np.ndarray | None] | None = None, *, threads: int = 1) -> list[Hits]:
    """Best ``k`` matching documents for each tokenised query, optionally only among ``scopes[i]``."""
    return index.search_many(queries, k, scopes, threads=threads)


@register
class BM25Retriever(Stage):
    """``retriever.bm25``: Okapi BM25 over the indexed chunks (see the module docstring)."""

    key: ClassVar[str] = "retriever.bm25"

    class Params(Params):
        """``top_k`` passages; ``k1``/``b`` Okapi parameters; tokenisation; engine backend;
        ``threads`` scoring a batch in parallel (``bm25s`` backend; 1 = in the calling thread)."""

        top_k: int = 20
        k1: float = 1.5
        b: float = 0.75
        stemmer: str | None = "english"
        stopwords: Literal["en"] | None = "en"
        backend: Backend = "bm25s"
        threads: int = 1

        @field_validator("top_k", "threads")
        @classmethod
        def _positive(cls, v: int, info: Any) -> int:
            if v <= 0:
                raise ValueError(f"{info.field_name} must be > 0, got {v}")
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
        """One part: the BM25 index of every chunk's text, tokenised shard by shard (the map, in
        parallel on Ray) and merged by one streaming :class:`OkapiBuilder` (the reduce)."""
        return {self.part: ShardedBuilder(map=self._tokenize_shard, reduce=self._merge_shards)}

    def _tokenize_shard(self, ctx: RunContext, shard: ChunkShard, out: Path) -> None:
        tok = self.tokenizer()
        if self.params.backend == "rank_bm25":
            atomic_write_json(out / "tokens.json", tok.many(shard.texts))  # the reference keeps the token lists
            return
        builder = OkapiBuilder(k1=self.params.k1, b=self.params.b)  # a shard's counts fit in memory
        builder.add_many(map(tok, shard.texts)).write_part(out)

    def _merge_shards(self, ctx: RunContext, shards: Sequence[Path], out: Path) -> None:
        p = self.params
        if p.backend == "rank_bm25":
            tokens: list[list[str]] = []
            for d in shards:
                with open(d / "tokens.json", encoding="utf-8") as f:
                    tokens.extend(json.load(f))
            index: OkapiIndex | RankBM25Index = RankBM25Index.build(tokens, k1=p.k1, b=p.b)
            index.save(out)
        else:
            builder = OkapiBuilder(k1=p.k1, b=p.b, directory=out)
            for d in shards:
                builder.add_part(d)
            index = builder.finish(show_progress=builder.n_chunks > 100_000)
        self._write_meta(out, index.n_docs)

    def build_part(self, texts: Iterable[str], out: Path, *, n: int | None = None, show_progress: bool | None = None) -> None:
        """Tokenise ``texts`` (streamed: one chunk's tokens at a time) and write the part into ``out``,
        in this process (``Pipeline.index`` builds it shard by shard instead; the result is the same).

        ``n`` (the number of texts, if known) sizes the progress bar, shown by default above 10k.
        Raises ``ValueError`` when no text has an indexable term.
        """
        p = self.params
        tok = self.tokenizer()
        if show_progress is None:
            show_progress = n is None or n > 10_000
        if show_progress:
            from tqdm.auto import tqdm

            texts = tqdm(texts, total=n, desc="bm25 indexing", unit="chunk", mininterval=1.0)
        index = build_index(map(tok, texts), p.backend, k1=p.k1, b=p.b, directory=out)
        index.save(out)
        self._write_meta(out, index.n_docs)

    def _write_meta(self, out: Path, n_docs: int) -> None:
        p = self.params
        atomic_write_json(out / META_FILE, {
            "format": FORMAT_VERSION, "backend": p.backend, "k1": p.k1, "b": p.b, "epsilon": OKAPI_EPSILON,
            "stemmer": p.stemmer, "stopwords": p.stopwords, "n_docs": n_docs,
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
        # Resolve scopes first so an unknown document fails before any scoring.
        scopes = [None if d is None else np.asarray(self._store.positions_for(d), dtype=np.int64)
                  for d in (doc_ids if doc_ids is not None else [None] * len(queries))]
        tok = self.tokenizer()
        return search_many(self._index, [tok(q) for q in queries], k, scopes, threads=self.params.threads)

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Set ``passages`` of each state to its BM25 hits, best first."""
        with timed(batch, self.key):
            hits = self.search([s.question.question for s in batch], [s.question.doc_ids for s in batch])
            for s, h in zip(batch, hits):
                s.passages = make_passages(self._chunks, h, self.key)
        return batch
