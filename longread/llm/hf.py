"""The ``hf`` backend: in-process transformers, and the one decoding loop of longread.

:func:`decode` is the only token-by-token loop in the project. It starts from token ids or
``inputs_embeds``, optionally on top of an existing KV cache (RetroLM's assembled pages), with
explicit position ids, and decodes each row until a stop token, one of its stop strings, or its
``max_new_tokens``. Greedy or sampled per row (seeded). :class:`HFBackend` builds text prompts
into left-padded batches on top of it; ``reader.retrolm`` and ``reader.refrag`` call it directly
(that is the backend's "kv" capability).

Batching does not change answers: prompts are left-padded, padding is masked out and position ids
count real tokens only, so each prompt sees what it would see alone (tested on a tiny fp32 model).
The cache goes through ``cache=`` (transformers 5.x; ``past_key_values=`` is deprecated there and
warns on every call) and falls back to ``past_key_values=`` on older releases.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .base import Backend
from .spec import LLMSpec
from .types import GenRequest, Generation

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..stage import RunContext

__all__ = ["HFBackend", "Decoded", "decode", "forward", "stop_token_ids", "render_chat", "next_token_logits"]

# End-of-turn markers of common chat formats; stop tokens when the tokenizer has them as specials.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


def stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Token ids that end a sequence: tokenizer and model eos plus known end-of-turn special tokens."""
    ids: set[int] = set()
    for src in (tokenizer, getattr(model, "generation_config", None)):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(i) for i in eos)
    # Only special (added) tokens count: a plain vocabulary entry spelled "</s>" is not a stop.
    added = {getattr(t, "content", str(t)): i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    ids.update(int(added[t]) for t in _END_OF_TURN if t in added)
    return frozenset(ids)


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """``messages`` through the tokenizer's chat template with the assistant turn opened; a tokenizer
    without a template gets the contents joined by blank lines."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages)


@functools.lru_cache(maxsize=64)
def _cache_kwarg(forward_fn: Any) -> str:
    try:
        params = inspect.signature(forward_fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - C-implemented or wrapped forwards
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def forward(model: Any, *, cache: Any = None, **kw: Any) -> tuple[Any, Any]:
    """Run ``model(**kw)`` with ``cache`` passed the way this transformers wants; returns
    ``(outputs, cache after the call)``. ``model`` may be a causal LM or its decoder body."""
    name = _cache_kwarg(type(model).forward)
    if cache is not None or kw.get("use_cache"):
        kw[name] = cache
    out = model(**kw)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = getattr(out, "past_key_values", None)
    return out, new_cache


def _logits_last(model: Any, **kw: Any) -> tuple[Any, Any]:
    # Only the last position's logits are needed; all of them would cost seq_len x vocab floats
    # (gigabytes for a long prompt and a 150k vocabulary).
    try:
        out, cache = forward(model, logits_to_keep=1, **kw)
    except TypeError:  # pragma: no cover - architectures without logits_to_keep
        out, cache = forward(model, **kw)
    return out.logits[:, -1, :], cache


@dataclass
class Decoded:
    """One decoded row: ``ids`` (stop token excluded), ``text`` (stop string cut off),
    ``finish_reason`` (``stop``/``length``), ``steps`` (tokens the model produced, a final stop
    token included), ``ttft_s`` and ``seconds`` from ``t0``."""

    ids: list[int]
    text: str
    finish_reason: str
    steps: int
    ttft_s: float
    seconds: float


def _pick(logits: "torch.Tensor", temps: list[float], top_ps: list[float], gens: list[Any]) -> "torch.Tensor":
    import torch

    nxt = logits.argmax(-1)
    for r, t in enumerate(temps):
        if t <= 0:
            continue
        probs = torch.softmax(logits[r].float() / t, dim=-1)
        if top_ps[r] < 1.0:
            sorted_p, idx = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < top_ps[r]  # smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
        nxt[r] = torch.multinomial(probs / probs.sum(), 1, generator=gens[r])[0]
    return nxt


def decode(
    model: Any,
    tokenizer: Any,
    *,
    input_ids: "torch.Tensor | None" = None,
    inputs_embeds: "torch.Tensor | None" = None,
    attention_mask: "torch.Tensor | None" = None,
    position_ids: "torch.Tensor",
    cache: Any = None,
    max_new_tokens: int | Sequence[int],
    stop_ids: frozenset[int] | set[int] | None = None,
    stop_strings: Sequence[Sequence[str]] | None = None,
    temperature: Sequence[float] | None = None,
    top_p: Sequence[float] | None = None,
    seed: Sequence[int | None] | None = None,
    t0: float | None = None,
) -> list[Decoded]:
    """Prefill ``input_ids`` or ``inputs_embeds`` (``[n, T]`` / ``[n, T, hidden]``) at ``position_ids``
    on top of ``cache`` (``None``: a fresh one), then decode every row.

    ``attention_mask`` covers cache + input (``[n, past + T]``) and is needed only for padded batches.
    Per-row lists: ``max_new_tokens``, ``stop_strings``, ``temperature`` (0 = greedy), ``top_p`` and
    ``seed``. ``t0`` (default: now) is where ``ttft_s``/``seconds`` count from. Returns one
    :class:`Decoded` per row. Raises ``ValueError`` on inconsistent arguments.
    """
    import torch

    t0 = time.perf_counter() if t0 is None else t0
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    first = input_ids if input_ids is not None else inputs_embeds
    n = int(first.shape[0])
    limits = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
    if len(limits) != n or min(limits) < 1:
        raise ValueError(f"max_new_tokens must be >= 1 for each of the {n} rows, got {limits}")
    stops = [tuple(s) for s in stop_strings] if stop_strings is not None else [()] * n
    temps = list(temperature) if temperature is not None else [0.0] * n
    tops = list(top_p) if top_p is not None else [1.0] * n
    seeds = list(seed) if seed is not None else [None] * n
    if not (len(stops) == len(temps) == len(tops) == len(seeds) == n):
        raise ValueError(f"per-row decoding lists must have {n} entries")
    stop_ids = frozenset(stop_ids if stop_ids is not None else stop_token_ids(model, tokenizer))
    dev = first.device
    gens = []
    for r in range(n):
        g = None
        if temps[r] > 0:
            g = torch.Generator(device=dev)
            g.manual_seed(int(seeds[r]) if seeds[r] is not None else torch.initial_seed() + r)
        gens.append(g)

    if cache is None:
        from transformers import DynamicCache

        cache = DynamicCache()
    kw: dict[str, Any] = {"position_ids": position_ids, "use_cache": True}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    with torch.inference_mode():
        if input_ids is not None:
            logits, cache = _logits_last(model, input_ids=input_ids, cache=cache, **kw)
        else:
            logits, cache = _logits_last(model, inputs_embeds=inputs_embeds, cache=cache, **kw)
        nxt = _pick(logits, temps, tops, gens)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ttft = time.perf_counter() - t0
        out: list[list[int]] = [[] for _ in range(n)]
        reason: list[str | None] = [None] * n
        texts: list[str | None] = [None] * n
        stopped_by_token = [False] * n
        last = position_ids[:, -1]
        mask = attention_mask
        pad = next(iter(stop_ids), 0)
        for step in range(max(limits)):
            for r in range(n):
                if reason[r] is not None:
                    continue
                tok = int(nxt[r])
                if tok in stop_ids:
                    reason[r], stopped_by_token[r] = "stop", True
                    continue
                out[r].append(tok)
                if stops[r]:
                    text = tokenizer.decode(out[r], skip_special_tokens=True)
                    hit = min((text.find(s) for s in stops[r] if s in text), default=-1)
                    if hit >= 0:
                        reason[r], texts[r] = "stop", text[:hit]
                        continue
                if len(out[r]) >= limits[r]:
                    reason[r] = "length"
            if all(x is not None for x in reason):
                break
            feed = torch.tensor([int(nxt[r]) if reason[r] is None else pad for r in range(n)], device=dev)[:, None]
            last = last + 1
            step_kw: dict[str, Any] = {"position_ids": last[:, None], "use_cache": True}
            if mask is not None:
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], dim=1)
                step_kw["attention_mask"] = mask
            logits, cache = _logits_last(model, input_ids=feed, cache=cache, **step_kw)
            nxt = _pick(logits, temps, tops, gens)
    seconds = time.perf_counter() - t0
    done = []
    for r in range(n):
        text = texts[r] if texts[r] is not None else tokenizer.decode(out[r], skip_special_tokens=True)
        done.append(Decoded(out[r], text, reason[r] or "length", len(out[r]) + stopped_by_token[r], ttft, seconds))
    return done


def _left_pad(seqs: list[list[int]], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    n, width = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s) :] = 1
    # Position ids count real tokens only, so a padded prompt gets the positions it has alone.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else 0


def next_token_logits(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 4) -> "torch.Tensor":
    """Float32 next-token logits after each finished prompt: ``[len(prompts), vocab]`` (on CPU).

    Prompts are tokenized without special tokens, sorted by length and left-padded.
    """
    import torch

    if not prompts:
        return torch.zeros((0, 0))
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    rows: list[Any] = [None] * len(enc)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            ids, mask, pos = _left_pad([enc[i] for i in idx], _pad_id(tokenizer), device)
            logits, _ = _logits_last(model, input_ids=ids, attention_mask=mask, position_ids=pos)
            for j, i in enumerate(idx):
                rows[i] = logits[j].float().cpu()
    return torch.stack(rows)


class HFBackend(Backend):
    """In-process transformers causal LM (loaded through the worker's model hub).

    ``model`` and ``tokenizer`` are public: the KV readers build on them with :func:`decode`.
    """

    name = "hf"

    def __init__(self, spec: LLMSpec, ctx: "RunContext | None" = None) -> None:
        super().__init__(spec, ctx)
        if ctx is not None:
            hub = ctx.models
        else:
            from ..models.hub import ModelHub

            hub = ModelHub()
        model, tokenizer = hub.causal_lm(spec.model, dtype=None if spec.dtype == "auto" else spec.dtype)
        self._attach(model, tokenizer)

    def _attach(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.device = next(self.model.parameters()).device

    @classmethod
    def from_loaded(cls, spec: LLMSpec, model: Any, tokenizer: Any) -> "HFBackend":
        """A backend over an already loaded ``model`` and ``tokenizer`` (e.g. a model with a merged
        LoRA adapter, which the hub's shared copy must not get)."""
        self = cls.__new__(cls)
        Backend.__init__(self, spec, None)
        self._attach(model, tokenizer)
        return self

    # -- tokens ----------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat-templated prompt (assistant turn opened)."""
        return render_chat(self.tokenizer, messages)

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens (``verbose=False``: long documents are expected)."""
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def window(self) -> int:
        """``max_position_embeddings`` (else the tokenizer's ``model_max_length``, else 2048)."""
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(self.tokenizer, "model_max_length", 2048))

    # -- generation ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Batched decoding: prompts sorted by length into batches of ``spec.batch_size``, left-padded."""
        if not requests:
            return []
        texts = [r.prompt if r.prompt is not None else self.render(r.messages or []) for r in requests]
        enc = [self.encode(t) for t in texts]
        for i, ids in enumerate(enc):
            if not ids:
                raise ValueError(f"prompt {i} is empty after tokenization")
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        out: list[Generation | None] = [None] * len(enc)
        bs = self.spec.batch_size
        for b in range(0, len(order), bs):
            idx = order[b : b + bs]
            t0 = time.perf_counter()
            ids, mask, pos = _left_pad([enc[i] for i in idx], _pad_id(self.tokenizer), self.device)
            rows = decode(
                self.model,
                self.tokenizer,
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                max_new_tokens=[requests[i].max_new_tokens for i in idx],
                stop_ids=self.stop_ids,
                stop_strings=[requests[i].stop for i in idx],
                temperature=[requests[i].temperature for i in idx],
                top_p=[requests[i].top_p for i in idx],
                seed=[requests[i].seed for i in idx],
                t0=t0,
            )
            for i, d in zip(idx, rows):
                out[i] = Generation(
                    text=d.text, finish_reason=d.finish_reason, prompt_tokens=len(enc[i]),  # type: ignore[arg-type]
                    new_tokens=d.steps,
                    ttft_s=d.ttft_s, seconds=d.seconds, token_ids=d.ids,
                )
        return out  # type: ignore[return-value]

    def next_token_logits(self, prompts: Sequence[str]) -> Any:
        """Float32 next-token logits ``[n, vocab]`` (a torch tensor on CPU)."""
        return next_token_logits(self.model, self.tokenizer, prompts, self.spec.batch_size)
