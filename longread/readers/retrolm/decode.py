"""RetroLM's decoding: sink + selected pages assembled into one cache, then :func:`longread.llm.hf.decode`.

``positions="compact"`` re-rotates the selected pages to contiguous positions right after the
sink; ``"original"`` keeps each page at its place in the document (the whole document must then
fit in the model's window).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from .model import KVModel
from .store import PagedDoc

__all__ = ["Positions", "assemble_cache", "decode_logits", "generate"]

Positions = Literal["compact", "original"]


def assemble_cache(doc: PagedDoc, selected: list[int], positions: Positions, inv_freq: Any) -> tuple[Any, int, int]:
    """A ``DynamicCache`` of the sink + ``selected`` pages at their decode positions.

    Returns ``(cache, first position after the document, KV length)``. Reads each selected page once.
    """
    import torch

    from ..kvcache import make_cache, rerotate_keys

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
        target = torch.arange(at, at + n) if positions == "compact" else torch.arange(b0, b1)
        k_all[:, :, at : at + n] = rerotate_keys(doc.tensor(f"page.{i}.k"), pos_all[b0:b1], target, inv_freq)
        v_all[:, :, at : at + n] = doc.tensor(f"page.{i}.v")
        at += n
    if positions == "original":
        at = int(bounds[-1, 1]) if doc.n_pages else S
    cache = make_cache([(k_all[li][None], v_all[li][None]) for li in range(k_all.shape[0])])
    return cache, at, total


def decode_logits(kv: KVModel, doc: PagedDoc, selected: list[int], suffix_ids: list[int], positions: Positions) -> Any:
    """Float32 logits ``[T, vocab]`` of ``suffix_ids`` read after sink + ``selected`` pages."""
    import torch

    from ...llm.hf import forward

    cache, at, _ = assemble_cache(doc, selected, positions, kv.inv_freq)
    with torch.inference_mode():
        out, _ = forward(
            kv.model, cache=cache, input_ids=torch.tensor([suffix_ids], device=kv.device),
            position_ids=torch.arange(at, at + len(suffix_ids), device=kv.device)[None], use_cache=True,
        )
    return out.logits[0].float()


def generate(
    kv: KVModel, doc: PagedDoc, selected: list[int], suffix_ids: list[int], positions: Positions, *,
    max_new_tokens: int, t0: float | None = None,
) -> tuple[Any, int]:
    """Decode the answer after sink + ``selected`` pages and ``suffix_ids`` with :func:`longread.llm.hf.decode`.

    Returns ``(Decoded, KV length)``; ``ttft_s``/``seconds`` count from ``t0`` (default: now).
    Raises ``ValueError`` when the answer would pass the model's last position.
    """
    import torch

    from ...llm.hf import decode

    t0 = time.perf_counter() if t0 is None else t0
    cache, at, kv_len = assemble_cache(doc, selected, positions, kv.inv_freq)
    end = at + len(suffix_ids) + max_new_tokens
    if end > kv.max_pos:
        raise ValueError(
            f"decode needs positions up to {end} but the model has {kv.max_pos}; "
            + ("use positions: compact" if positions == "original" else "lower budget_tokens")
        )
    (out,) = decode(
        kv.model, kv.tokenizer, input_ids=torch.tensor([suffix_ids], device=kv.device),
        position_ids=torch.arange(at, at + len(suffix_ids), device=kv.device)[None], cache=cache,
        max_new_tokens=max_new_tokens, stop_ids=kv.stop_ids, t0=t0,
    )
    return out, kv_len
