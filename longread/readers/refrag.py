"""``reader.refrag``: compressed decoding after REFRAG ("REFRAG: Rethinking RAG based Decoding").

The context (retrieved passages, else ``state.context``, else the documents named by
``question.doc_ids``) is tokenised with the decoder's tokenizer and cut into chunks of ``k``
tokens. A light encoder embeds each chunk's text (re-tokenised with its own tokenizer); a
learned 2-layer MLP projector maps each embedding into the decoder's input-embedding space, so
the decoder reads ONE position per compressed chunk through ``inputs_embeds``. A fraction
``expand_fraction`` of the chunks, those whose embedding is most similar to the question
(encoder cosine), is expanded back to its tokens. The question prompt follows (``prompt``:
``short`` is :data:`PROMPT`; ``span``, ``free`` or a template); left-padded batches of
``inputs_embeds`` are decoded by :func:`longread.llm.hf.decode`, the project's one decoding loop,
and answers cleaned by the style's cleaner. Usage is recorded as typed
:class:`~longread.types.Usage` (``prompt_tokens``: decoder input positions).

Decoder input = chat-template prefix tokens + [per chunk: 1 vector, or its k tokens] +
question/suffix tokens. With ``expand_fraction=1.0`` this is exactly token prefill of the same
token sequence (tested), so all loss of quality comes from compression.

Chunk embeddings (pre-projector, so retraining the projector does not invalidate them) are
cached per passage text: in memory for the stage's lifetime and, when the run has a
``cache_dir``, as safetensors files keyed by text hash + encoder + decoder tokenizer + ``k``.

Projectors are trained with ``longread train refrag`` (``longread/train/refrag.py``); one ships
for all-minilm-l6-v2 + smollm2-135m-instruct at k=16 (``projector: default``). It was trained
briefly on CPU: it carries part of each chunk (see its held-out losses), and on a 10-question
SQuAD check it did not answer better than a random projector when a quarter of the chunks is
expanded to tokens.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from pydantic import field_validator, model_validator

from ..citations import citations_for
from ..io import atomic_write_bytes
from ..llm.hf import Decoded, decode, render_chat
from ..llm.params import ReaderLLMParams
from ..llm.prompts import clean, resolve_prompt
from ..llm.usage import record
from ..registry import register
from ..stage import RunContext, Stage, timed
from ..types import QAState

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

__all__ = [
    "RefragReader",
    "RefragParams",
    "Projector",
    "SHIPPED_PROJECTORS",
    "ASSETS_DIR",
    "resolve_projector_path",
    "load_projector",
    "save_projector",
    "chunk_ids",
    "ChunkStore",
    "PromptParts",
    "prompt_parts",
    "select_expanded",
    "build_inputs",
    "decode_embeds",
    "benchmark_ttft",
    "format_rows",
]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"

SHIPPED_PROJECTORS: dict[tuple[str, str, int], str] = {
    ("all-minilm-l6-v2", "smollm2-135m-instruct", 16): "refrag_projector_minilm_smollm2_k16.safetensors",
}
"""Where shipped projectors live in ``longread/assets``: (encoder, model, k) -> file name.

One ships: MiniLM-L6 -> SmolLM2-135M-Instruct at k=16, trained by ``longread train refrag`` for
39 CPU minutes; it beats both an untrained projector and zero vectors on held-out reconstruction
and next-token losses (numbers in the ``.json`` sidecar beside it and in the module docstring of
``longread.train.refrag``). For any other (encoder, model, k), ``projector: default`` raises
``FileNotFoundError`` with the command to train one.
"""

PROMPT = (
    "Answer the question using the context. Give a short answer.\n\n"
    "Context:\n{context}\n\nQuestion: {question}"
)
"""User message; ``{context}`` is replaced by the (partly compressed) context."""

PASSAGE_SEPARATOR = "\n\n"
MAX_K = 64

_SENTINEL = "\u2063REFRAGCTX\u2063"


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return (s or "x")[:80]


# --------------------------------------------------------------------------------------------
# Projector


def _torch():
    import torch

    return torch


class Projector:  # built lazily as a torch module; see ``make``
    """Factory for the 2-layer MLP (encoder dim -> hidden -> decoder hidden size).

    ``Projector.make(in_dim, out_dim, hidden=None)`` returns a ``torch.nn.Sequential`` with
    parameter names ``0.weight, 0.bias, 2.weight, 2.bias`` (Linear, GELU, Linear). A class rather
    than a module-level ``nn.Module`` subclass so that importing this file does not import torch.
    """

    GELU_MEAN: ClassVar[float] = 0.2826
    """E[GELU(z)] for z ~ N(0, 1)."""
    GELU_SQ: ClassVar[float] = 0.4263
    """E[GELU(z)^2] for z ~ N(0, 1)."""

    @staticmethod
    def make(in_dim: int, out_dim: int, hidden: int | None = None, *, seed: int = 0, embeddings: Any = None):
        """Return a freshly initialised projector (fp32, deterministic for ``seed``).

        Without ``embeddings`` the layers keep PyTorch's default init. That init assumes inputs
        with unit-variance coordinates; an L2-normalised 384-d encoder vector has coordinates of
        variance 1/384, so the output is nearly the constant last-layer bias, with a norm of ~0.6
        where SmolLM2-135M's token-embedding rows have ~3.2 (measured). Pass the decoder's
        input-embedding matrix ``(vocab, out_dim)`` as ``embeddings`` to start instead where the
        decoder expects its inputs: first-layer pre-activations ~N(0, 1) for unit-norm inputs,
        and outputs centred on the mean embedding row with the rows' per-coordinate spread.
        """
        torch = _torch()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"projector dims must be > 0, got in_dim={in_dim} out_dim={out_dim}")
        hidden = hidden or out_dim
        if embeddings is not None and tuple(embeddings.shape[1:]) != (out_dim,):
            raise ValueError(f"embeddings must have shape (vocab, {out_dim}), got {tuple(embeddings.shape)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = torch.nn.Sequential(
                torch.nn.Linear(in_dim, hidden),
                torch.nn.GELU(),
                torch.nn.Linear(hidden, out_dim),
            ).float()
            if embeddings is not None:
                rows = embeddings.detach().float().cpu()
                mean = rows.mean(0)
                spread = float((rows - mean).std())
                with torch.no_grad():
                    net[0].weight.normal_(0.0, 1.0)
                    net[0].bias.zero_()
                    net[2].weight.normal_(0.0, spread / math.sqrt(hidden * Projector.GELU_SQ))
                    net[2].bias.copy_(mean - net[2].weight.sum(1) * Projector.GELU_MEAN)
        return net


def save_projector(net: Any, path: str | Path, meta: dict[str, Any]) -> None:
    """Write a projector's weights + ``meta`` (encoder, model, k, dims, ...) as safetensors, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    meta = {k: str(v) for k, v in meta.items()}
    meta.update(
        in_dim=str(state["0.weight"].shape[1]),
        hidden=str(state["0.weight"].shape[0]),
        out_dim=str(state["2.weight"].shape[0]),
        format="longread-refrag-projector-v1",
    )
    atomic_write_bytes(path, save(state, metadata=meta))


def resolve_projector_path(projector: str, *, encoder: str, model: str, k: int) -> Path | None:
    """Map the ``projector`` param to a file; ``None`` for ``"random"``.

    Raises ``FileNotFoundError`` with the training command when ``"default"`` has no shipped
    projector for this (encoder, model, k), or a given path does not exist.
    """
    if projector == "random":
        return None
    hint = (
        f"train one with `longread train refrag --model {model} --encoder {encoder} --k {k} "
        f"--out projector.safetensors` and set `projector: projector.safetensors` "
        f"(or `projector: random` for timing runs only: its answers are meaningless)"
    )
    if projector == "default":
        name = SHIPPED_PROJECTORS.get((encoder, model, k))
        if name is None or not (ASSETS_DIR / name).is_file():
            shipped = ", ".join(
                f"{e}+{m} k={kk}" for (e, m, kk), f in SHIPPED_PROJECTORS.items() if (ASSETS_DIR / f).is_file()
            ) or "none"
            raise FileNotFoundError(
                f"no trained REFRAG projector ships for encoder={encoder!r} model={model!r} k={k} "
                f"(shipped: {shipped}); {hint}"
            )
        return ASSETS_DIR / name
    path = Path(projector).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"projector file {str(path)!r} does not exist; {hint}")
    return path


def load_projector(path: str | Path, *, in_dim: int, out_dim: int, k: int | None = None):
    """Load a projector saved by :func:`save_projector`; return ``(net, meta)``.

    Raises ``ValueError`` when its dims (or ``k``, when given and recorded) do not match.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {name: f.get_tensor(name) for name in f.keys()}
    expected = {"0.weight", "0.bias", "2.weight", "2.bias"}
    if set(state) != expected:
        raise ValueError(f"{path}: not a REFRAG projector; tensors {sorted(state)}, expected {sorted(expected)}")
    got_in, hidden, got_out = state["0.weight"].shape[1], state["0.weight"].shape[0], state["2.weight"].shape[0]
    if (got_in, got_out) != (in_dim, out_dim):
        raise ValueError(
            f"{path}: projector maps {got_in} -> {got_out}, but the encoder gives {in_dim} and the decoder "
            f"needs {out_dim} (trained for encoder={meta.get('encoder')!r} model={meta.get('model')!r})"
        )
    if k is not None and "k" in meta and int(meta["k"]) != k:
        raise ValueError(f"{path}: projector was trained for k={meta['k']}, but k={k} was asked for")
    net = Projector.make(in_dim, out_dim, hidden)
    net.load_state_dict(state)
    net.eval()
    return net, meta


# --------------------------------------------------------------------------------------------
# Chunking and the embedding cache


def chunk_ids(ids: Sequence[int], k: int) -> list[list[int]]:
    """Cut token ids into consecutive chunks of ``k`` (the last may be shorter); covers ``ids`` exactly."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    return [list(ids[i : i + k]) for i in range(0, len(ids), k)]


@dataclass
class ChunkedText:
    """One passage: its decoder token chunks and each chunk's encoder embedding (n, dim) fp32."""

    chunks: list[list[int]]
    embeddings: "np.ndarray"


class ChunkStore:
    """Chunks texts with the decoder tokenizer and embeds chunks with the encoder, with caching.

    Takes the decoder ``tokenizer``, an ``encoder`` (longread ``Encoder`` protocol), ``k``, a
    ``cache_dir`` (None: memory only) and a ``key`` naming the (encoder, decoder tokenizer) pair.
    ``stats`` counts ``encoded_chunks`` (encoder work done), ``memory_hits`` and ``disk_hits``.
    """

    def __init__(
        self,
        tokenizer: Any,
        encoder: Any,
        k: int,
        *,
        cache_dir: Path | None,
        key: str,
        batch_size: int = 64,
        memory_items: int = 4096,
    ) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.k = k
        self.dir = None if cache_dir is None else Path(cache_dir) / _slug(key) / f"k{k}"
        self.batch_size = batch_size
        self.memory_items = memory_items
        self._memory: dict[str, ChunkedText] = {}
        self.stats = {"encoded_chunks": 0, "memory_hits": 0, "disk_hits": 0}

    def _path(self, digest: str) -> Path | None:
        return None if self.dir is None else self.dir / digest[:2] / f"{digest}.safetensors"

    def get_many(self, texts: list[str]) -> list[ChunkedText]:
        """Chunk + embed each text, reusing cached results; one batched encoder call for the misses."""
        import numpy as np

        out: list[ChunkedText | None] = [None] * len(texts)
        todo: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            hit = self._memory.get(digest)
            if hit is None:
                hit = self._read(digest)
                if hit is not None:
                    self.stats["disk_hits"] += 1
                    self._remember(digest, hit)
            else:
                self.stats["memory_hits"] += 1
            if hit is not None:
                out[i] = hit
            else:
                todo.setdefault(digest, []).append(i)
        if todo:
            pending = []
            for digest, idx in todo.items():
                ids = self.tokenizer(texts[idx[0]], add_special_tokens=False)["input_ids"]
                pending.append((digest, idx, chunk_ids(ids, self.k)))
            chunk_texts = [self.tokenizer.decode(c) for _, _, chunks in pending for c in chunks]
            if chunk_texts:
                embs = np.asarray(
                    self.encoder.encode(chunk_texts, kind="document", batch_size=self.batch_size), dtype=np.float32
                )
            else:
                embs = np.zeros((0, int(self.encoder.dim)), dtype=np.float32)
            self.stats["encoded_chunks"] += len(chunk_texts)
            pos = 0
            for digest, idx, chunks in pending:
                item = ChunkedText(chunks, embs[pos : pos + len(chunks)])
                pos += len(chunks)
                self._write(digest, item)
                self._remember(digest, item)
                for i in idx:
                    out[i] = item
        return out  # type: ignore[return-value]

    def _remember(self, digest: str, item: ChunkedText) -> None:
        if len(self._memory) >= self.memory_items:
            self._memory.pop(next(iter(self._memory)))  # oldest first: dicts keep insertion order
        self._memory[digest] = item

    def _read(self, digest: str) -> ChunkedText | None:
        path = self._path(digest)
        if path is None or not path.is_file():
            return None
        path.touch()  # last use, for the KV cache's LRU eviction (longread.cache)
        from safetensors.numpy import load_file

        data = load_file(str(path))
        ids, lens = data["ids"].tolist(), data["lens"].tolist()
        chunks, pos = [], 0
        for n in lens:
            chunks.append(ids[pos : pos + n])
            pos += n
        return ChunkedText(chunks, data["emb"])

    def _write(self, digest: str, item: ChunkedText) -> None:
        path = self._path(digest)
        if path is None:
            return
        import numpy as np
        from safetensors.numpy import save

        flat = [t for c in item.chunks for t in c]
        blob = save(
            {
                "emb": np.ascontiguousarray(item.embeddings, dtype=np.float32),
                "ids": np.asarray(flat, dtype=np.int64),
                "lens": np.asarray([len(c) for c in item.chunks], dtype=np.int64),
            },
            metadata={"k": str(self.k)},
        )
        atomic_write_bytes(path, blob)


# --------------------------------------------------------------------------------------------
# Prompt assembly and decoding


@dataclass
class PromptParts:
    """Token ids before the context and after it (the question and the generation prompt)."""

    prefix: list[int]
    suffix: list[int]


def _message(prompt: str, question: str) -> str:
    spec = resolve_prompt(prompt)
    if spec.style is not None and spec.style.name == "short":
        return PROMPT.format(context=_SENTINEL, question=question)  # REFRAG's own wording for short answers
    return spec.message(_SENTINEL, question, source="passages")


def prompt_parts(tokenizer: Any, question: str, prompt: str = "short") -> PromptParts:
    """Render the chat prompt around a placeholder context and tokenise the two sides.

    ``prompt``: an answer style or a template (``short``: :data:`PROMPT`). Uses the tokenizer's chat
    template when it has one, else the plain user message (``short`` then ends with "Answer:").
    """
    text = render_chat(tokenizer, [{"role": "user", "content": _message(prompt, question)}])
    if not getattr(tokenizer, "chat_template", None) and prompt == "short":
        text += "\nAnswer:"
    before, after = text.split(_SENTINEL)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
    return PromptParts(enc(before), enc(after))


def select_expanded(sims: Sequence[float], fraction: float) -> set[int]:
    """Indices of the ``floor(fraction * n)`` most similar chunks (ties: earlier chunk first)."""
    n = len(sims)
    m = min(n, int(math.floor(fraction * n + 1e-9)))
    order = sorted(range(n), key=lambda i: (-float(sims[i]), i))
    return set(order[:m])


@dataclass
class Segment:
    """One run of decoder input: token ids (``vectors is None``) or compressed vectors."""

    ids: list[int] | None = None
    vectors: "torch.Tensor | None" = None

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else int(self.vectors.shape[0])


def build_inputs(model: Any, segments: list[Segment]) -> "torch.Tensor":
    """Concatenate token embeddings and projected vectors into ``(positions, hidden)`` in model dtype."""
    torch = _torch()
    emb = model.get_input_embeddings()
    dtype = emb.weight.dtype
    parts = []
    for seg in segments:
        if seg.vectors is not None:
            parts.append(seg.vectors.to(dtype))
        elif seg.ids:
            parts.append(emb(torch.tensor(seg.ids, dtype=torch.long, device=emb.weight.device)))
    return torch.cat(parts, dim=0)


def decode_embeds(
    model: Any, tokenizer: Any, inputs: list["torch.Tensor"], *, max_new_tokens: int, stop_ids: Any = None,
    t0: float | None = None,
) -> list[Decoded]:
    """Decode from per-example input embeddings ``(positions, hidden)``, left-padded into one batch,
    with :func:`longread.llm.hf.decode` (greedy; ``stop_ids`` default: :func:`~longread.llm.hf.stop_token_ids`).

    Returns one :class:`~longread.llm.hf.Decoded` per example; ``ttft_s`` (the batch's) counts from
    ``t0`` (default: the call).
    """
    torch = _torch()
    n, width = len(inputs), max(int(x.shape[0]) for x in inputs)
    dev = inputs[0].device
    embeds = torch.zeros((n, width, inputs[0].shape[1]), dtype=inputs[0].dtype, device=dev)
    mask = torch.zeros((n, width), dtype=torch.long, device=dev)
    for i, x in enumerate(inputs):
        embeds[i, width - x.shape[0] :] = x
        mask[i, width - x.shape[0] :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens only: a padded row sees what it sees alone
    return decode(model, tokenizer, inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                  max_new_tokens=max_new_tokens, stop_ids=stop_ids, t0=t0)


# --------------------------------------------------------------------------------------------
# The stage


class RefragParams(ReaderLLMParams):
    """Params of ``reader.refrag``.

    ``llm`` (or ``model:``): the decoder, an ``hf`` model (the reader feeds it ``inputs_embeds``);
    ``encoder`` (hub name or local dir); ``k`` (chunk tokens, 1..64); ``expand_fraction`` (share of
    chunks kept as tokens, most question-similar first); ``projector`` ("default" = shipped asset,
    a safetensors path, or "random" for timing only); ``prompt`` (``short``: :data:`PROMPT`;
    ``span``, ``free`` or a template); ``max_new_tokens``; ``max_context_tokens`` (context tokens
    before compression; more is an error); ``batch_size`` (questions per decoder batch).
    """

    default_model: ClassVar[str] = "smollm2-135m-instruct"
    needs: ClassVar[frozenset[str]] = frozenset({"kv"})

    encoder: str = "all-minilm-l6-v2"
    k: int = 16
    expand_fraction: float = 0.25
    projector: str = "default"
    max_context_tokens: int = 32768
    batch_size: int = 4

    @field_validator("encoder", "projector")
    @classmethod
    def _nonempty(cls, v: str, info: Any) -> str:
        if not v.strip():
            raise ValueError(f"{info.field_name} must be a non-empty string, got {v!r}")
        return v

    @field_validator("k")
    @classmethod
    def _k(cls, v: int) -> int:
        if not 0 < v <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K} (usually 8, 16 or 32), got {v}")
        return v

    @field_validator("expand_fraction")
    @classmethod
    def _p(cls, v: float) -> float:
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            raise ValueError(f"expand_fraction must be in [0, 1], got {v}")
        return v

    @field_validator("max_context_tokens", "batch_size")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v <= 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _prompt_fits(self) -> "RefragParams":
        if self.prompt_spec.cites:
            raise ValueError("prompt 'cite' needs numbered passages, which reader.refrag compresses away: use short, span, free or a template")
        return self


@register
class RefragReader(Stage):
    """Reader that feeds the decoder one projected encoder vector per compressed k-token chunk.

    Params: :class:`RefragParams`. Usage: ``prompt_tokens`` = decoder input positions; trace:
    ``chunks_total``, ``chunks_expanded``.
    """

    key: ClassVar[str] = "reader.refrag"
    Params = RefragParams

    def setup(self, ctx: RunContext) -> None:
        """Load decoder (``hf`` backend), encoder and projector; open the chunk-embedding cache under ``ctx.cache_dir``."""
        from ..llm import load_backend

        p = self.params
        path = resolve_projector_path(p.projector, encoder=p.encoder, model=p.model, k=p.k)
        backend = load_backend(p.llm, ctx)
        self.model, self.tokenizer, self.stop_ids = backend.model, backend.tokenizer, backend.stop_ids
        self.encoder = ctx.models.encoder(p.encoder)
        in_dim, out_dim = int(self.encoder.dim), int(self.model.get_input_embeddings().weight.shape[1])
        if path is None:
            self.projector, self.projector_meta = Projector.make(in_dim, out_dim, seed=ctx.seed), {"random": "1"}
        else:
            self.projector, self.projector_meta = load_projector(path, in_dim=in_dim, out_dim=out_dim, k=p.k)
        self.projector.to(self.model.get_input_embeddings().weight.device)
        cache = None if ctx.cache_dir is None else Path(ctx.cache_dir) / "refrag"
        key = f"{p.encoder}--{p.model}-v{len(self.tokenizer)}"
        self.chunks = ChunkStore(self.tokenizer, self.encoder, p.k, cache_dir=cache, key=key)
        self.store = ctx.store
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def _context_texts(self, state: QAState) -> list[str]:
        if state.passages:
            return [p.text for p in state.passages]
        if state.context:
            return [state.context]
        if state.question.doc_ids and self.store is not None:
            return [self.store.documents[d].text for d in state.question.doc_ids if d in self.store.documents]
        raise ValueError(
            f"question {state.question.id!r} has no passages, no context and no doc_ids in the index; "
            "put a retriever before reader.refrag or scope the question to documents"
        )

    def _expanded(self, question: str, embs: list[Any]) -> set[int]:
        if not embs or self.params.expand_fraction == 0.0:
            return set()
        q = self.encoder.encode([question], kind="query")[0]
        return select_expanded([float(e @ q) for e in embs], self.params.expand_fraction)

    def prepare(self, state: QAState) -> tuple["torch.Tensor", dict[str, int]]:
        """Build one question's decoder input embeddings; return them with counts
        (``positions``, ``chunks_total``, ``chunks_expanded``).

        Raises ``ValueError`` when the context exceeds ``max_context_tokens`` or the decoder input
        exceeds the model's position limit.
        """
        torch = _torch()
        p = self.params
        items = self.chunks.get_many(self._context_texts(state))
        n_ctx = sum(len(c) for it in items for c in it.chunks)
        if n_ctx > p.max_context_tokens:
            raise ValueError(
                f"question {state.question.id!r}: context has {n_ctx} tokens, more than max_context_tokens="
                f"{p.max_context_tokens}; raise max_context_tokens or retrieve fewer passages"
            )
        expanded = self._expanded(state.question.question, [e for it in items for e in it.embeddings])
        parts = prompt_parts(self.tokenizer, state.question.question, p.prompt)
        sep = self.tokenizer(PASSAGE_SEPARATOR, add_special_tokens=False)["input_ids"]
        dev = self.model.get_input_embeddings().weight.device
        segments: list[Segment] = [Segment(ids=parts.prefix)]
        idx = 0
        for j, it in enumerate(items):
            if j:
                segments.append(Segment(ids=list(sep)))
            if not it.chunks:
                continue
            with torch.no_grad():
                vecs = self.projector(torch.as_tensor(it.embeddings, dtype=torch.float32, device=dev))
            for c, chunk in enumerate(it.chunks):
                segments.append(Segment(ids=chunk) if idx in expanded else Segment(vectors=vecs[c : c + 1]))
                idx += 1
        segments.append(Segment(ids=parts.suffix))
        inputs = build_inputs(self.model, segments)
        n_pos = int(inputs.shape[0])
        if self.max_positions and n_pos + p.answer_tokens > self.max_positions:
            raise ValueError(
                f"question {state.question.id!r}: decoder input of {n_pos} positions + max_new_tokens="
                f"{p.answer_tokens} exceeds the model's {self.max_positions} positions; lower k's expansion "
                "(expand_fraction), raise k, or retrieve less"
            )
        return inputs, {"positions": n_pos, "chunks_total": idx, "chunks_expanded": len(expanded)}

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Answer each question; set ``answer``, its usage and the trace keys listed on the class."""
        p = self.params
        with timed(batch, self.key):
            for start in range(0, len(batch), p.batch_size):
                group = batch[start : start + p.batch_size]
                t0 = time.perf_counter()
                prepared = [self.prepare(s) for s in group]
                rows = decode_embeds(self.model, self.tokenizer, [x for x, _ in prepared],
                                     max_new_tokens=p.answer_tokens, stop_ids=self.stop_ids, t0=t0)
                for s, (_, counts), out in zip(group, prepared, rows):
                    s.answer = clean(out.text, p.prompt_spec.cleaner)
                    # It reads every passage (compressed into chunk embeddings): all are cited as read.
                    s.citations = citations_for(s.passages, self.store.documents if self.store is not None else None, cited=False)
                    record(s, self.key, spec=p.llm, calls=1, prompt_tokens=counts["positions"], new_tokens=out.steps,
                           ttft_s=out.ttft_s)
                    s.trace.update(chunks_total=counts["chunks_total"], chunks_expanded=counts["chunks_expanded"])
        return batch


# --------------------------------------------------------------------------------------------
# Benchmark helper (called by benchmarks/kv_readers.py)


def _best_of(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        best = min(best, fn())
    return best


def benchmark_ttft(
    hub: Any,
    *,
    text: str,
    question: str,
    model: str = "smollm2-135m-instruct",
    encoder: str = "all-minilm-l6-v2",
    ks: Sequence[int] = (8, 16, 32),
    expand_fractions: Sequence[float] = (0.0, 0.25),
    projector: str = "random",
    repeats: int = 3,
    cache_dir: Path | None = None,
    clock: str = "wall",
) -> list[dict[str, Any]]:
    """Time to first token of REFRAG vs full token prefill on the same context, side by side.

    Takes a ``ModelHub``, the context ``text`` and a ``question``. For each (k, p) it measures:
    ``full_s`` (token prefill of the whole prompt to the first token), ``cold_s`` (REFRAG
    including chunking and the encoder forward on every chunk), ``warm_s`` (REFRAG with the
    chunk embeddings cached in memory). Each is the best of ``repeats`` runs. Returns one dict per
    (k, p) with those, the ratios ``full_s / cold_s`` and ``full_s / warm_s``, and the input
    positions of each path (``full_positions``, ``refrag_positions``). ``clock="cpu"`` times with
    this process's CPU time instead of wall time: on a shared, oversubscribed machine that
    measures the work done rather than the scheduler's share. Raises ``ValueError`` for another clock.
    """
    from ..types import Question

    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time

    lm, tok = hub.causal_lm(model)
    parts = prompt_parts(tok, question)
    ctx_ids = tok(text, add_special_tokens=False)["input_ids"]
    full_ids = parts.prefix + ctx_ids + parts.suffix

    def full() -> float:
        t0 = now()
        x = build_inputs(lm, [Segment(ids=full_ids)])
        decode_embeds(lm, tok, [x], max_new_tokens=1)
        return now() - t0

    full()  # warm-up (allocator, kernels)
    full_s = _best_of(full, repeats)
    rows = []
    for k in ks:
        for frac in expand_fractions:
            stage = RefragReader(
                RefragReader.Params(
                    model=model, encoder=encoder, k=k, expand_fraction=frac, projector=projector, max_new_tokens=1
                )
            )
            stage.setup(RunContext(models=hub, cache_dir=cache_dir))
            state = lambda: QAState(question=Question(id="q", question=question), context=text)  # noqa: E731

            def cold() -> float:
                stage.chunks._memory.clear()
                t0 = now()
                x, _ = stage.prepare(state())
                decode_embeds(lm, tok, [x], max_new_tokens=1)
                return now() - t0

            def warm() -> float:
                t0 = now()
                x, _ = stage.prepare(state())
                decode_embeds(lm, tok, [x], max_new_tokens=1)
                return now() - t0

            cold_s = _best_of(cold, repeats)
            warm()
            warm_s = _best_of(warm, repeats)
            _, counts = stage.prepare(state())
            rows.append(
                {
                    "k": k,
                    "expand_fraction": frac,
                    "context_tokens": len(ctx_ids),
                    "full_positions": len(full_ids),
                    "refrag_positions": counts["positions"],
                    "full_s": full_s,
                    "cold_s": cold_s,
                    "warm_s": warm_s,
                    "ratio_cold": full_s / cold_s,
                    "ratio_warm": full_s / warm_s,
                    "clock": clock,
                }
            )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Rows of :func:`benchmark_ttft` as a Markdown table."""
    head = "| k | p | ctx tok | full pos | refrag pos | full TTFT s | cold s | warm s | x cold | x warm |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['expand_fraction']:.2f} | {r['context_tokens']} | {r['full_positions']} | "
            f"{r['refrag_positions']} | {r['full_s']:.3f} | {r['cold_s']:.3f} | {r['warm_s']:.3f} | "
            f"{r['ratio_cold']:.1f} | {r['ratio_warm']:.1f} |"
        )
    return "\n".join(lines)
