"""``reader.retrolm``: KV-level retrieval over pages of a long input (after RetroLM).

RetroLM ("Does RAG Really Perform Bad For Long-Context Processing?") retrieves at the level of
the model's own key/value cache instead of text chunks. This reader, written from the paper's
description (no official code exists):

1. Tokenizes the prompt *prefix* (chat template up to the document), the scoped document(s) and
   the question *suffix* separately. The prefix plus the first ``sink_tokens`` document tokens
   form the **sink**; the rest of the document is cut into contiguous **pages** of
   ``page_size`` tokens.
2. **Prefills page by page with bounded memory**: each page attends only to the sink and the
   ``local_pages`` pages before it. Positions inside that window are compact (sink at
   ``0..S-1``, window pages right after it), so no page ever sees a position beyond
   ``S + (local_pages + 1) * page_size`` and documents longer than the model's window work.
3. Keeps every page's KV. **Keys are stored as the model produced them, rotated at their
   prefill position** (saved in ``pos``), so reusing them unchanged is exact; they are moved to
   any other position with :func:`longread.readers.kvcache.rerotate_keys`. Per page it also keeps
   position-free summaries of its keys (mean, channel min and max, float32).
4. **Scores pages from the KV**: the question suffix runs once after the sink, its query vectors
   (``q_proj`` outputs, before rotation) are compared with each page's summary keys
   (``mean_key``: q·mean; ``quest``: the Quest upper bound Σ max(q·min, q·max)); per layer and
   head the page scores are softmaxed over pages and averaged. ``scorer: PATH`` uses instead a
   small scorer trained for the model and page size (``longread train retrolm``; learned head
   weights, optionally a low-rank bilinear form, on the same queries and summaries, see
   :mod:`longread.readers.retrolm_scorer`); the model itself is never changed. ``scorer:
   trained`` is the one shipped for smollm2-135m-instruct with 128-token pages (held-out SQuAD
   articles: answer page kept by the default selection 76% of the time vs 55% for ``quest``).
5. **Selects** the last ``recent_pages`` pages (nearest the question) plus the best-scored pages,
   each followed by ``follow_pages`` next pages (a fact cut by a page end stays whole), within
   ``budget_tokens`` document tokens, and decodes greedily attending only to
   sink + selected pages + question. ``positions="compact"`` re-rotates the selected pages to
   contiguous positions after the sink; ``"original"`` keeps each page at its place in the
   document (requires the whole document to fit in the model's window).

Page KV never sits in memory as a whole: each page's keys and values are written to their own
safetensors file as soon as the page is prefilled (only the sink and the ``local_pages`` window
stay in memory), into a temp dir that is renamed to ``<key>/`` once the document is complete, so
an interrupted read never leaves a cache a later question trusts. ``<key>/meta.safetensors``
holds the sink KV, positions, bounds, spans and key summaries; ``<key>/page-NNNNN.safetensors``
one page each. A question loads the meta file and only the pages it selected, so memory is
bounded by the window and the budget, not by the document length. The key hashes the document
text's sha256, the format version, the model (name and config), page size, dtype, sink/window
params and the prompt prefix. Under ``<cache_dir>/retrolm/<model>/`` the dirs are reused by
every later question on that document (even from a new process); caches of an older format
have another key and are rebuilt. With ``precompute: true`` the same dirs are built at index
time into the index part named by :meth:`RetroLMReader.indexes`. Without a cache dir they go to
a private temp dir, those of the last ``memory_docs`` documents are reused, and a dir is
deleted when nothing refers to it any more.

``self.stats`` counts documents and pages prefilled and cache hits, for tests and benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..registry import register
from ..stage import Params, RunContext, Stage, timed
from ..types import QAState
from .hf import clean_answer

__all__ = ["RetroLMParams", "RetroLMReader", "PagedDoc", "DEFAULT_INSTRUCTION", "FORMAT_VERSION"]

# 2: one dir per document (meta file + one file per page, written while prefilling); 1: one file.
FORMAT_VERSION = 2
_META = "meta.safetensors"
_PAGE_NAME = re.compile(r"page\.(\d+)\.([kv])")
# Same wording as reader.long_context so the two readers differ only in what the model attends to.
DEFAULT_INSTRUCTION = (
    "Answer the question using the document below. Reply with only the answer, as a short phrase "
    "of a few words, with no explanation."
)
_DOC_MARK = "\u2063LONGREAD_DOCUMENT\u2063"
_QUESTION_MARK = "\u2063LONGREAD_QUESTION\u2063"
TRAINING_FREE_SCORERS = ("quest", "mean_key")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


def _join_documents(docs: list[Any]) -> str:
    """The text a question scoped to ``docs`` reads (titles first, as reader.long_context does)."""
    return "\n\n".join((f"{d.title}\n{d.text}" if d.title else d.text).strip() for d in docs)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _page_file(i: int) -> str:
    return f"page-{i:05d}.safetensors"


def _write_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Write ``tensors`` as one safetensors file and fsync it (the only place page KV is written)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _PageWriter:
    """Writes one document's page KV into a temp dir beside ``final``, renamed into place on ``commit``.

    Used as a context manager: an exception before ``commit`` removes the temp dir, so ``final``
    only ever appears complete. When another writer committed ``final`` first, ours is dropped.
    """

    def __init__(self, final: Path, key: str, meta: dict[str, str]) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self.final, self.key = final, key
        self.meta = {"format": str(FORMAT_VERSION), "key": key, **meta}
        self.tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        self.n_pages = 0

    def page(self, i: int, k: Any, v: Any) -> None:
        if i != self.n_pages:
            raise ValueError(f"pages must be written in order: expected page {self.n_pages}, got {i}")
        _write_tensors(self.tmp / _page_file(i), {"k": k, "v": v}, {**self.meta, "page": str(i)})
        self.n_pages += 1

    def commit(self, head: dict[str, Any]) -> None:
        n = int(head["bounds"].shape[0])
        if n != self.n_pages:
            raise ValueError(f"{self.n_pages} pages written but bounds has {n}")
        _write_tensors(self.tmp / _META, head, {**self.meta, "n_pages": str(n)})
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if not (self.final / _META).is_file():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)  # an equal copy was committed meanwhile

    def __enter__(self) -> "_PageWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


class _SpillDir:
    """A private temp dir for page KV when there is no cache dir; removed once nothing holds it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="longread-retrolm-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)


class RetroLMParams(Params):
    """Params of ``reader.retrolm`` (see the module docstring for the method)."""

    model: str = Field(default="qwen2.5-0.5b-instruct", description="causal LM name or local HF dir (rotary positions)")
    page_size: int = Field(default=128, description="tokens per page")
    budget_tokens: int = Field(default=2048, description="document tokens kept in KV at decode (sink doc tokens + pages)")
    sink_tokens: int = Field(default=0, description="first document tokens always kept with the prompt prefix")
    local_pages: int = Field(default=4, description="previous pages each page attends to during prefill")
    recent_pages: int = Field(default=1, description="last pages of the document always selected")
    follow_pages: int = Field(
        default=1, description="pages after each selected page also kept (budget permitting): facts cross page ends"
    )
    positions: Literal["compact", "original"] = Field(default="compact", description="decode positions of pages")
    # quest by default: on a 4k-token needle the mean key missed the page holding the fact and the
    # channel-wise upper bound found it (benchmarks/kv_readers.py).
    scorer: str = Field(
        default="quest",
        description="page scorer: 'quest' or 'mean_key' (training-free), 'trained' (the scorer shipped for "
        "this model and page_size) or the path of a .safetensors scorer from `longread train retrolm`",
    )
    score_layers: list[int] | None = Field(
        default=None, description="layers whose queries score pages; None = all (a trained scorer brings its own)"
    )
    max_new_tokens: int = Field(default=32, description="greedy decoding length")
    instruction: str = Field(default=DEFAULT_INSTRUCTION, description="instruction before the document")
    cache: bool = Field(default=True, description="reuse page KV across questions (disk under cache_dir, else memory)")
    precompute: bool = Field(default=False, description="build page KV for every document at index time")
    memory_docs: int = Field(
        default=2, description="documents whose page KV (in a temp dir) is reused when there is no cache dir"
    )
    max_input_tokens: int = Field(default=262_144, description="refuse longer scoped inputs")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model must be a non-empty model name or path")
        return v

    @field_validator("page_size")
    @classmethod
    def _page(cls, v: int) -> int:
        if not 1 <= v <= 8192:
            raise ValueError(f"page_size must be in [1, 8192], got {v}")
        return v

    @field_validator("budget_tokens", "max_input_tokens", "max_new_tokens", "memory_docs")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v <= 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v}")
        return v

    @field_validator("sink_tokens", "local_pages", "recent_pages", "follow_pages")
    @classmethod
    def _non_negative(cls, v: int, info: Any) -> int:
        if v < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {v}")
        return v

    @field_validator("score_layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and not v:
            raise ValueError("score_layers must be None (all layers) or a non-empty list, got []")
        return v

    @field_validator("scorer")
    @classmethod
    def _scorer(cls, v: str) -> str:
        if v in TRAINING_FREE_SCORERS or v == "trained":
            return v
        if not v.endswith(".safetensors"):
            raise ValueError(
                f"scorer must be one of {list(TRAINING_FREE_SCORERS)}, 'trained' (the shipped scorer) or the path "
                f"of a trained scorer (.safetensors, from `longread train retrolm`), got {v!r}"
            )
        if not Path(v).expanduser().is_file():
            raise ValueError(f"scorer file {v!r} does not exist; train one with `longread train retrolm --out {v}`")
        return v

    @property
    def trained_scorer(self) -> Path | None:
        """The trained scorer's file, or None for a training-free scorer.

        Raises ``FileNotFoundError`` for ``"trained"`` when no scorer ships for this model and page size.
        """
        if self.scorer in TRAINING_FREE_SCORERS:
            return None
        from .retrolm_scorer import resolve_scorer_path

        return resolve_scorer_path(self.scorer, model=self.model, page_size=self.page_size)

    @model_validator(mode="after")
    def _budget(self) -> "RetroLMParams":
        if self.scorer == "trained":
            try:
                self.trained_scorer  # noqa: B018 (raises, naming what ships, when none does)
            except FileNotFoundError as e:
                raise ValueError(str(e)) from None
        if self.scorer not in TRAINING_FREE_SCORERS and self.score_layers is not None:
            raise ValueError("score_layers must be unset with a trained scorer: the scorer file names its layers")
        if self.budget_tokens < self.page_size:
            raise ValueError(
                f"budget_tokens ({self.budget_tokens}) must be >= page_size ({self.page_size}): no page would fit"
            )
        forced = self.sink_tokens + self.recent_pages * self.page_size
        if forced > self.budget_tokens:
            raise ValueError(
                f"sink_tokens + recent_pages * page_size = {forced} exceeds budget_tokens ({self.budget_tokens})"
            )
        return self


@dataclass
class PagedDoc:
    """Page KV of one long input, backed by its cache dir; tensors are read when first asked for.

    ``tensor(name)`` returns: ``sink.k``/``sink.v`` (``[L, kv_heads, S, head_dim]``),
    ``page.{i}.k``/``page.{i}.v`` (read from that page's file only), ``pos`` (prefill position of
    every sink and page token), ``bounds`` (``[P, 2]`` token ranges of pages in the
    sink+document sequence), ``spans`` (``[P, 2]`` character ranges of pages in the input text)
    and ``summary.{mean,min,max}`` (``[L, kv_heads, P, head_dim]`` float32 position-free key
    summaries). Page tensors are read from disk each time they are asked for (``page_reads``
    lists them) and not kept; the rest is O(pages) small and kept until the object is dropped.
    """

    key: str
    get: Callable[[str], Any]
    sink_len: int
    n_pages: int
    source: str  # "prefill", "memory", "disk", "index"
    path: Path | None = None
    _keep: Any = None  # holds a _SpillDir alive while this doc is in use
    page_reads: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    def tensor(self, name: str) -> Any:
        if _PAGE_NAME.fullmatch(name):
            self.page_reads.append(name)
            return self.get(name)
        if name not in self._cache:
            self._cache[name] = self.get(name)
        return self._cache[name]


@register
class RetroLMReader(Stage):
    """Reader that retrieves pages of the input's own KV cache and decodes from them."""

    key: ClassVar[str] = "reader.retrolm"
    Params = RetroLMParams

    def __init__(self, params: RetroLMParams | dict | None = None) -> None:
        super().__init__(params)
        self.stats = {"documents_prefilled": 0, "pages_prefilled": 0, "memory_hits": 0, "disk_hits": 0, "index_hits": 0}
        self._model = None
        self._tok = None
        self._memory: OrderedDict[str, tuple[Path, _SpillDir]] = OrderedDict()
        self._cache_root: Path | None = None
        self._index_root: Path | None = None
        self._store = None
        self._scorer = self._scorer_spec = None  # a trained page scorer (scorer: PATH), loaded in setup

    # ------------------------------------------------------------------ setup
    def indexes(self) -> dict[str, Callable[[RunContext, Path], None]]:
        """``{part: builder}`` when ``precompute`` is set: page KV for every corpus document."""
        if not self.params.precompute:
            return {}
        return {self._part_name(): self._build_part}

    def _part_name(self) -> str:
        p = self.params
        h = _sha([FORMAT_VERSION, p.page_size, p.sink_tokens, p.local_pages, p.instruction])[:12]
        return f"retrolm-{_slug(p.model)}-{h}"

    def _build_part(self, ctx: RunContext, out_dir: Path) -> None:
        self._load_model(ctx)
        store = ctx.require_store()
        prefix_ids = self._prefix_ids()
        for doc in store.documents.values():
            text = _join_documents([doc])  # what a question scoped to this one document reads
            key = self._doc_key(text, prefix_ids)
            if not (out_dir / key).is_dir():  # two documents with the same text share one
                self._build(out_dir / key, key, text, prefix_ids)

    def setup(self, ctx: RunContext) -> None:
        """Load the model; open the precomputed index part (if ``precompute``) and the cache dir."""
        self._load_model(ctx)
        self._store = ctx.store
        p = self.params
        if p.precompute:
            self._index_root = ctx.index_part(self._part_name())
        if p.cache and ctx.cache_dir is not None:
            self._cache_root = Path(ctx.cache_dir) / "retrolm" / _slug(p.model)

    def _load_model(self, ctx: RunContext) -> None:
        if self._model is not None:
            return
        from .kvcache import model_layout, rope_inv_freq

        model, tok = ctx.models.causal_lm(self.params.model)
        self._inv_freq = rope_inv_freq(model)  # raises for models without usable rotary positions
        self._layout = model_layout(model)
        n_layers = self._layout[0]
        layers = self.params.score_layers
        self._scorer = self._scorer_spec = None
        if self.params.trained_scorer is not None:
            from .retrolm_scorer import load_scorer

            self._scorer, self._scorer_spec, _ = load_scorer(
                self.params.trained_scorer, model=self.params.model, page_size=self.params.page_size,
                layout=tuple(self._layout),
            )
            self._scorer.to(next(model.parameters()).device)
            self._score_layers = list(self._scorer_spec.layers)
        elif layers is not None:
            bad = [i for i in layers if not -n_layers <= i < n_layers]
            if bad:
                raise ValueError(f"score_layers {bad} out of range for a {n_layers}-layer model")
            self._score_layers = sorted({i % n_layers for i in layers})
        else:
            self._score_layers = list(range(n_layers))
        self._model, self._tok = model, tok
        self._device = next(model.parameters()).device
        self._max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 1 << 30
        self._dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        self._model_sig = _sha([self.params.model, model.config.to_json_string(use_diff=False)])[:16]
        self._eos = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self._model, "generation_config", None), self._tok):
            e = getattr(src, "eos_token_id", None)
            if e is None:
                continue
            ids.update(e if isinstance(e, (list, tuple)) else [e])
        for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>"):
            i = self._tok.convert_tokens_to_ids(t)
            if isinstance(i, int) and i >= 0 and i != getattr(self._tok, "unk_token_id", None):
                ids.add(i)
        return ids

    # ---------------------------------------------------------------- prompts
    def _render(self, question: str) -> tuple[str, str]:
        """(prefix text, suffix text) around the document for ``question``."""
        content = f"{self.params.instruction}\n\n{_DOC_MARK}\n\nQuestion: {_QUESTION_MARK}\nAnswer:"
        if getattr(self._tok, "chat_template", None):
            text = self._tok.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        else:
            text = content
        if text.count(_DOC_MARK) != 1 or text.count(_QUESTION_MARK) != 1:
            raise ValueError(f"chat template of {self.params.model!r} does not keep the user message verbatim")
        prefix, suffix = text.split(_DOC_MARK)
        return prefix, suffix.replace(_QUESTION_MARK, question)

    def _prefix_ids(self) -> list[int]:
        prefix, _ = self._render("?")
        # Chat templates carry their own BOS; plain text gets the tokenizer's default specials.
        plain = not getattr(self._tok, "chat_template", None)
        return list(self._tok(prefix, add_special_tokens=plain)["input_ids"])

    def _doc_ids(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        if len(ids) > self.params.max_input_tokens:
            raise ValueError(
                f"input has {len(ids)} tokens, more than max_input_tokens={self.params.max_input_tokens}"
            )
        if not ids:
            raise ValueError("input document tokenizes to no tokens")
        return ids, [tuple(o) for o in enc["offset_mapping"]]

    def _doc_key(self, text: str, prefix_ids: list[int]) -> str:
        p = self.params
        return _sha(
            {
                "v": FORMAT_VERSION,
                "doc": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "model": self._model_sig,
                "page_size": p.page_size,
                "dtype": self._dtype,
                "sink_tokens": p.sink_tokens,
                "local_pages": p.local_pages,
                "prefix": prefix_ids,
            }
        )[:32]

    def cache_key(self, text: str) -> str:
        """The page-KV cache key of ``text`` for this reader's model and params (after ``setup``)."""
        return self._doc_key(text, self._prefix_ids())

    # ---------------------------------------------------------------- prefill
    def _build(self, final: Path, key: str, text: str, prefix_ids: list[int]) -> int:
        """Prefill ``text`` into the page-KV dir ``final`` (atomically); returns the tokens prefilled."""
        doc_ids, offsets = self._doc_ids(text)
        meta = {"model": self.params.model, "page_size": str(self.params.page_size), "dtype": self._dtype}
        with _PageWriter(final, key, meta) as writer:
            self._prefill(prefix_ids, doc_ids, offsets, writer)
        return len(prefix_ids) + len(doc_ids)

    def _prefill(
        self, prefix_ids: list[int], doc_ids: list[int], offsets: list[tuple[int, int]], writer: _PageWriter
    ) -> None:
        """Page-by-page bounded prefill into ``writer``: each page is written as soon as it is computed.

        Only the sink, the last ``local_pages`` pages and the small per-page summaries stay in
        memory; ``writer.commit`` then writes the sink, positions, bounds, spans and summaries.
        """
        import torch
        dev = self._device

        from .kvcache import cache_layers, make_cache, rerotate_keys, unrotate_keys

        p = self.params
        ps, inv = p.page_size, self._inv_freq
        n_sink_doc = min(p.sink_tokens, len(doc_ids))
        sink_ids = prefix_ids + doc_ids[:n_sink_doc]
        rest = doc_ids[n_sink_doc:]
        S = len(sink_ids)
        n_pages = -(-len(rest) // ps)
        widest = S + min(max(n_pages - 1, 0), p.local_pages) * ps + min(ps, len(rest))
        if widest > self._max_pos:
            raise ValueError(
                f"prefill window (sink {S} + local_pages * page_size + page = {widest} tokens) exceeds the "
                f"model's {self._max_pos} positions; lower local_pages or page_size"
            )
        body = self._model.model
        with torch.inference_mode():
            out = body(
                input_ids=torch.tensor([sink_ids], device=dev),
                position_ids=torch.arange(S, device=dev)[None],
                past_key_values=make_cache([]),
                use_cache=True,
            )
            sink = [(k[0].clone(), v[0].clone()) for k, v in cache_layers(out.past_key_values)]
            del out
            # (keys per layer, values per layer, pos) of the last local_pages pages: all that is kept.
            window: deque[tuple[list[Any], list[Any], Any]] = deque(maxlen=p.local_pages)
            positions: list[Any] = [torch.arange(S)]
            bounds, spans = [], []
            means, mins, maxs = [], [], []
            for i, start in enumerate(range(0, len(rest), ps)):
                ids = rest[start : start + ps]
                layers = []
                for li, (sk, sv) in enumerate(sink):
                    ks, vs = [sk], [sv]
                    at = S
                    for wk, wv, wpos in window:
                        n = wpos.shape[0]
                        ks.append(rerotate_keys(wk[li], wpos, torch.arange(at, at + n), inv))
                        vs.append(wv[li])
                        at += n
                    layers.append((torch.cat(ks, dim=1)[None], torch.cat(vs, dim=1)[None]))
                at = S + sum(w[2].shape[0] for w in window)
                pos = torch.arange(at, at + len(ids))
                out = body(
                    input_ids=torch.tensor([ids], device=dev),
                    position_ids=pos.to(dev)[None],
                    past_key_values=make_cache(layers),
                    use_cache=True,
                )
                n = len(ids)
                pk = [k[0, :, -n:].clone() for k, _ in cache_layers(out.past_key_values)]
                pv = [v[0, :, -n:].clone() for _, v in cache_layers(out.past_key_values)]
                del out, layers
                writer.page(i, torch.stack(pk), torch.stack(pv))
                window.append((pk, pv, pos))  # drops the page that leaves the window
                positions.append(pos)
                self.stats["pages_prefilled"] += 1
                raw = torch.stack([unrotate_keys(k, pos, inv) for k in pk])  # [L, kvH, n, d] float32
                means.append(raw.mean(dim=2))
                mins.append(raw.amin(dim=2))
                maxs.append(raw.amax(dim=2))
                tok0 = S + start
                bounds.append((tok0, tok0 + n))
                c0 = offsets[n_sink_doc + start][0]
                c1 = offsets[n_sink_doc + start + n - 1][1]
                spans.append((c0, c1))
        window.clear()
        head: dict[str, Any] = {
            "sink.k": torch.stack([k for k, _ in sink]),
            "sink.v": torch.stack([v for _, v in sink]),
            "pos": torch.cat(positions).to(torch.int64),
            "bounds": torch.tensor(bounds, dtype=torch.int64).reshape(-1, 2),
            "spans": torch.tensor(spans, dtype=torch.int64).reshape(-1, 2),
        }
        if bounds:
            head["summary.mean"] = torch.stack(means, dim=2)
            head["summary.min"] = torch.stack(mins, dim=2)
            head["summary.max"] = torch.stack(maxs, dim=2)
        writer.commit(head)
        self.stats["documents_prefilled"] += 1

    # ------------------------------------------------------------------ cache
    def _open(self, key: str, path: Path, source: str, keep: Any = None) -> PagedDoc | None:
        """The page-KV dir ``path`` of ``key`` as a :class:`PagedDoc` (None when there is none)."""
        if not path.is_dir():
            return None
        from safetensors import safe_open

        meta_path = path / _META
        if not meta_path.is_file():
            raise ValueError(f"page-KV dir {path} has no {_META}; delete it and rerun")
        head = safe_open(str(meta_path), framework="pt")
        meta = head.metadata() or {}
        if meta.get("key") != key or meta.get("format") != str(FORMAT_VERSION):
            raise ValueError(f"page-KV dir {path} does not hold key {key} (format {FORMAT_VERSION}); delete it and rerun")
        sink_len = head.get_slice("sink.k").get_shape()[2]
        n_pages = head.get_slice("bounds").get_shape()[0]
        missing = [i for i in range(n_pages) if not (path / _page_file(i)).is_file()]
        if str(n_pages) != meta.get("n_pages") or missing:
            raise ValueError(
                f"page-KV dir {path} is incomplete ({len(missing)} of {n_pages} page files missing); delete it and rerun"
            )
        dev = self._device

        def get(name: str) -> Any:
            m = _PAGE_NAME.fullmatch(name)
            if m is None:
                return head.get_tensor(name).to(dev)
            i = int(m.group(1))
            if i >= n_pages:
                raise KeyError(f"page {i} out of range: {path} has {n_pages} pages")
            with safe_open(str(path / _page_file(i)), framework="pt") as f:
                if (f.metadata() or {}).get("key") != key:
                    raise ValueError(f"{path / _page_file(i)} does not hold key {key}; delete {path} and rerun")
                return f.get_tensor(m.group(2)).to(dev)

        return PagedDoc(key, get, sink_len, n_pages, source, path, keep)

    def _paged(
        self, text: str, prefix_ids: list[int], batch_memory: dict[str, tuple[Path, Any]]
    ) -> tuple[PagedDoc, int]:
        """The page KV of ``text``: from this batch or the memory list, the index part, the cache dir, or a fresh prefill.

        Returns it with the number of tokens prefilled for it now (0 when reused).
        """
        key = self._doc_key(text, prefix_ids)
        if key in batch_memory:
            self.stats["memory_hits"] += 1
            path, spill = batch_memory[key]
            return self._open(key, path, "memory", spill), 0
        if key in self._memory:
            self._memory.move_to_end(key)
            self.stats["memory_hits"] += 1
            path, spill = self._memory[key]
            return self._open(key, path, "memory", spill), 0
        if self._index_root is not None:
            doc = self._open(key, self._index_root / key, "index")
            if doc is not None:
                self.stats["index_hits"] += 1
                return doc, 0
        if self._cache_root is not None:
            doc = self._open(key, self._cache_root / key, "disk")
            if doc is not None:
                (self._cache_root / key).touch()  # last use, for the KV cache's LRU eviction (longread.cache)
                self.stats["disk_hits"] += 1
                return doc, 0
            spill, path = None, self._cache_root / key
        else:
            spill = _SpillDir()  # removed when the last PagedDoc / memory entry holding it goes
            path = spill.path / key
        prefilled = self._build(path, key, text, prefix_ids)
        if spill is not None and self.params.cache:
            self._memory[key] = (path, spill)
            while len(self._memory) > self.params.memory_docs:
                self._memory.popitem(last=False)
        batch_memory[key] = (path, spill)
        return self._open(key, path, "prefill", spill), prefilled

    # -------------------------------------------------------------- selection
    def _query_vectors(self, doc: PagedDoc, suffix_ids: list[int]) -> dict[int, Any]:
        """Pre-rotation query vectors ``[heads, T, head_dim]`` of the question at the scoring layers."""
        import torch
        dev = self._device

        from .kvcache import make_cache

        sk, sv = doc.tensor("sink.k"), doc.tensor("sink.v")
        layers = self._model.model.layers
        _, n_heads, _, d = self._layout
        captured: dict[int, Any] = {}
        hooks = []
        for li in self._score_layers:
            attn = layers[li].self_attn

            def hook(_m: Any, _inp: Any, out: Any, li: int = li, attn: Any = attn) -> None:
                q = out[0].view(out.shape[1], n_heads, d)
                norm = getattr(attn, "q_norm", None)  # Qwen3-style per-head query norm
                if norm is not None:
                    q = norm(q)
                captured[li] = q.transpose(0, 1).float()

            hooks.append(attn.q_proj.register_forward_hook(hook))
        try:
            S = doc.sink_len
            with torch.inference_mode():
                self._model.model(
                    input_ids=torch.tensor([suffix_ids], device=dev),
                    position_ids=torch.arange(S, S + len(suffix_ids), device=dev)[None],
                    past_key_values=make_cache([(sk[i][None], sv[i][None]) for i in range(sk.shape[0])]),
                    use_cache=True,
                )
        finally:
            for h in hooks:
                h.remove()
        return captured

    def page_features(self, doc: PagedDoc, suffix_ids: list[int]) -> dict[str, Any]:
        """Scoring features of the question suffix against every page of ``doc`` (at the scoring layers).

        See :func:`longread.readers.retrolm_scorer.page_features`; ``longread train retrolm``
        trains on exactly these, so training and inference see the same features.
        """
        from .retrolm_scorer import page_features

        queries = self._query_vectors(doc, suffix_ids)
        _, n_heads, n_kv, _ = self._layout
        summary = {k: doc.tensor(f"summary.{k}") for k in ("mean", "min", "max")}
        return page_features(queries, summary, self._score_layers, n_heads // n_kv)

    def score_pages(self, doc: PagedDoc, suffix_ids: list[int]) -> Any:
        """Relevance of every page of ``doc`` to the question suffix: float32 tensor ``[P]``.

        Training-free scorers give the page probabilities averaged over layers, heads and question
        tokens (they sum to 1); a trained scorer gives unnormalised scores (only their order counts).
        """
        import torch

        from .retrolm_scorer import score_features, training_free_scores

        feats = self.page_features(doc, suffix_ids)
        with torch.no_grad():
            if self._scorer is not None:
                return score_features(self._scorer, feats).float().cpu()
            return (training_free_scores(feats, self.params.scorer) / doc.n_pages).cpu()

    def select_pages(self, lengths: list[int], scores: Any | None) -> list[int]:
        """Indices (ascending) of pages to keep: the recent ones, then best-scored within the budget."""
        p = self.params
        left = p.budget_tokens - p.sink_tokens
        n = len(lengths)
        if sum(lengths) <= left:
            return list(range(n))
        chosen = set(range(max(0, n - p.recent_pages), n))
        left -= sum(lengths[i] for i in chosen)
        if scores is None:
            raise ValueError("scores are needed when the pages exceed the budget")
        for i in sorted(range(n), key=lambda j: (-float(scores[j]), j)):
            if i not in chosen:
                if lengths[i] > left:
                    continue
                chosen.add(i)
                left -= lengths[i]
            # Then the pages that continue it (even when it was already kept as another page's
            # follower): a fact cut by a page end stays whole.
            for j in range(i + 1, min(n, i + 1 + p.follow_pages)):
                if j not in chosen and lengths[j] <= left:
                    chosen.add(j)
                    left -= lengths[j]
        return sorted(chosen)

    # ----------------------------------------------------------------- decode
    def _assemble(self, doc: PagedDoc, selected: list[int]) -> tuple[Any, int, int]:
        """A cache of sink + ``selected`` pages at their decode positions.

        Returns ``(cache, first position after the document, KV length)``.
        """
        import torch

        from .kvcache import make_cache, rerotate_keys

        S = doc.sink_len
        bounds, pos_all = doc.tensor("bounds"), doc.tensor("pos")
        sk, sv = doc.tensor("sink.k"), doc.tensor("sink.v")
        total = S + sum(int(bounds[i, 1] - bounds[i, 0]) for i in selected)
        # Filled in place, one page read at a time: the only copy of the selected KV.
        k_all = sk.new_empty((*sk.shape[:2], total, sk.shape[3]))
        v_all = sv.new_empty((*sv.shape[:2], total, sv.shape[3]))
        k_all[:, :, :S], v_all[:, :, :S] = sk, sv
        at = S
        for i in selected:
            b0, b1 = int(bounds[i, 0]), int(bounds[i, 1])
            n = b1 - b0
            # compact: right after the previous kept token; original: where the page is in the input.
            target = torch.arange(at, at + n) if self.params.positions == "compact" else torch.arange(b0, b1)
            k_all[:, :, at : at + n] = rerotate_keys(doc.tensor(f"page.{i}.k"), pos_all[b0:b1], target, self._inv_freq)
            v_all[:, :, at : at + n] = doc.tensor(f"page.{i}.v")
            at += n
        if self.params.positions == "original":
            at = int(bounds[-1, 1]) if doc.n_pages else S
        cache = make_cache([(k_all[li][None], v_all[li][None]) for li in range(k_all.shape[0])])
        return cache, at, total

    def _decode(self, doc: PagedDoc, selected: list[int], suffix_ids: list[int]) -> tuple[list[int], float, float, int]:
        """Greedy decode over sink + selected pages; returns (token ids, ttft from now, decode seconds, KV length)."""
        import torch
        dev = self._device

        p = self.params
        t0 = time.perf_counter()
        cache, at, kv_len = self._assemble(doc, selected)
        end = at + len(suffix_ids) + p.max_new_tokens
        if end > self._max_pos:
            raise ValueError(
                f"decode needs positions up to {end} but {p.model!r} has {self._max_pos}; "
                + ("use positions: compact" if p.positions == "original" else "lower budget_tokens")
            )
        out_ids: list[int] = []
        with torch.inference_mode():
            out = self._model(
                input_ids=torch.tensor([suffix_ids], device=dev),
                position_ids=torch.arange(at, at + len(suffix_ids), device=dev)[None],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            nxt = int(out.logits[0, -1].argmax())
            ttft = time.perf_counter() - t0
            t1 = time.perf_counter()
            cur = at + len(suffix_ids)
            while nxt not in self._eos:
                out_ids.append(nxt)
                if len(out_ids) >= p.max_new_tokens:
                    break
                out = self._model(
                    input_ids=torch.tensor([[nxt]], device=dev),
                    position_ids=torch.tensor([[cur]], device=dev),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                    logits_to_keep=1,
                )
                cur += 1
                nxt = int(out.logits[0, -1].argmax())
        return out_ids, ttft, time.perf_counter() - t1, kv_len

    def decode_logits(self, doc: PagedDoc, selected: list[int], suffix_ids: list[int]) -> Any:
        """Float32 logits ``[T, vocab]`` of ``suffix_ids`` read after sink + ``selected`` pages."""
        import torch
        dev = self._device

        cache, at, _ = self._assemble(doc, selected)
        with torch.inference_mode():
            out = self._model(
                input_ids=torch.tensor([suffix_ids], device=dev),
                position_ids=torch.arange(at, at + len(suffix_ids), device=dev)[None],
                past_key_values=cache,
                use_cache=True,
            )
        return out.logits[0].float()

    # ------------------------------------------------------------------- call
    def _input_text(self, state: QAState) -> str:
        store = self._store
        if store is None:
            raise RuntimeError("reader.retrolm needs the indexed corpus, but no index is open")
        ids = state.question.doc_ids
        if ids is None:
            if len(store.documents) != 1:
                raise ValueError(
                    f"question {state.question.id!r} has no doc_ids and the corpus has {len(store.documents)} "
                    "documents; reader.retrolm reads the question's scoped documents"
                )
            ids = list(store.documents)
        missing = [d for d in ids if d not in store.documents]
        if missing:
            raise KeyError(f"question {state.question.id!r}: documents {missing} are not in the index")
        return _join_documents([store.documents[d] for d in ids])

    def read(self, text: str) -> PagedDoc:
        """Page KV of ``text`` (prefilled now or reused); for tests and tools."""
        return self._paged(text, self._prefix_ids(), {})[0]

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Answer each question from its scoped documents' page KV; sets answer and trace."""
        if self._model is None:
            raise RuntimeError("reader.retrolm: call setup(ctx) before answering")
        p = self.params
        batch_memory: dict[str, tuple[Path, Any]] = {}  # questions of one batch on one document share a prefill
        with timed(batch, self.key):
            for state in batch:
                t0 = time.perf_counter()
                text = self._input_text(state)
                _, suffix_text = self._render(state.question.question)
                prefix_ids = self._prefix_ids()
                suffix_ids = list(self._tok(suffix_text, add_special_tokens=False)["input_ids"])
                doc, prefilled = self._paged(text, prefix_ids, batch_memory)
                bounds = doc.tensor("bounds")
                lengths = [int(b1 - b0) for b0, b1 in bounds.tolist()]
                left = p.budget_tokens - p.sink_tokens
                scores = self.score_pages(doc, suffix_ids) if sum(lengths) > left else None
                selected = self.select_pages(lengths, scores)
                if p.positions == "original" and doc.sink_len + sum(lengths) + len(suffix_ids) + p.max_new_tokens > self._max_pos:
                    raise ValueError(
                        f"question {state.question.id!r}: input of {doc.sink_len + sum(lengths)} tokens does not fit "
                        f"{p.model!r}'s {self._max_pos} positions with positions='original'; use positions: compact"
                    )
                t_sel = time.perf_counter() - t0
                out_ids, ttft, decode_s, kv_len = self._decode(doc, selected, suffix_ids)
                raw = self._tok.decode(out_ids, skip_special_tokens=True)
                state.answer = clean_answer(raw)
                reader_tokens = kv_len + len(suffix_ids)
                spans = doc.tensor("spans")
                tr = state.trace
                tr["raw_answer"] = raw
                tr["reader_tokens"] = reader_tokens
                tr["ttft_s"] = t_sel + ttft
                tr["new_tokens"] = len(out_ids)
                tr["decode_s"] = decode_s
                tr["pages_total"] = doc.n_pages
                tr["pages_selected"] = len(selected)
                tr["prefill_reused"] = prefilled == 0
                tr["retrolm_pages"] = selected
                tr["retrolm_spans"] = [spans[i].tolist() for i in selected]
                calls = tr.setdefault("llm_calls", {})
                calls[self.key] = calls.get(self.key, 0) + 1
                toks = tr.setdefault("llm_tokens", {})
                toks[self.key] = toks.get(self.key, 0) + reader_tokens + len(out_ids) + prefilled
        return batch
