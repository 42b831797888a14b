"""RetroLM's bounded prefill: a document's page KV computed page by page in bounded memory.

The prompt prefix plus the first ``sink_tokens`` document tokens form the **sink**; the rest is
cut into pages of ``page_size`` tokens. Each page attends only to the sink and the
``local_pages`` pages before it, at compact positions (sink at ``0..S-1``, window pages right
after it), so no page sees a position beyond ``S + (local_pages + 1) * page_size`` and documents
longer than the model's window work. Keys are stored as the model produced them, rotated at their
prefill position (saved in ``pos``), so reusing them unchanged is exact; window pages are moved
to their window positions with :func:`longread.readers.kvcache.rerotate_keys`. Per page the
position-free key summaries (mean, channel min and max, float32) are kept for scoring.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .model import KVModel
from .store import PageWriter

__all__ = ["prefill"]


def _run(kv: KVModel, ids: list[int], pos: Any, past: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Per-layer ``(keys, values)`` ``[kv_heads, T, head_dim]`` of ``ids`` at ``pos`` after ``past``."""
    import torch

    from ...llm.hf import forward
    from ..kvcache import cache_layers, make_cache

    _, cache = forward(
        kv.body, cache=make_cache(past), input_ids=torch.tensor([ids], device=kv.device),
        position_ids=pos.to(kv.device)[None], use_cache=True,
    )
    n = len(ids)
    return [(k[0, :, -n:].clone(), v[0, :, -n:].clone()) for k, v in cache_layers(cache)]


def prefill(
    kv: KVModel, prefix_ids: list[int], doc_ids: list[int], offsets: list[tuple[int, int]], writer: PageWriter, *,
    page_size: int, sink_tokens: int, local_pages: int, stats: dict[str, int] | None = None,
) -> None:
    """Prefill the sink and every page of ``doc_ids`` into ``writer``, each page written as soon as it is computed.

    Only the sink, the last ``local_pages`` pages and the small per-page summaries stay in memory;
    ``writer.commit`` then writes the sink, positions, bounds, spans (from ``offsets``) and
    summaries. ``stats["pages_prefilled"]`` counts pages written. Raises ``ValueError`` when the
    prefill window exceeds the model's positions.
    """
    import torch

    from ..kvcache import rerotate_keys, unrotate_keys

    stats = stats if stats is not None else {}
    ps, inv = page_size, kv.inv_freq
    n_sink_doc = min(sink_tokens, len(doc_ids))
    sink_ids, rest = prefix_ids + doc_ids[:n_sink_doc], doc_ids[n_sink_doc:]
    S = len(sink_ids)
    n_pages = -(-len(rest) // ps)
    widest = S + min(max(n_pages - 1, 0), local_pages) * ps + min(ps, len(rest))
    if widest > kv.max_pos:
        raise ValueError(
            f"prefill window (sink {S} + local_pages * page_size + page = {widest} tokens) exceeds the "
            f"model's {kv.max_pos} positions; lower local_pages or page_size"
        )
    with torch.inference_mode():
        sink = _run(kv, sink_ids, torch.arange(S), [])
        window: deque[tuple[list[Any], Any]] = deque(maxlen=local_pages)  # (per-layer (k, v), pos): all that is kept
        positions, bounds, spans, summaries = [torch.arange(S)], [], [], []
        for i, start in enumerate(range(0, len(rest), ps)):
            ids = rest[start : start + ps]
            past = []
            for li, (sk, sv) in enumerate(sink):
                ks, vs, at = [sk], [sv], S
                for layers, wpos in window:
                    ks.append(rerotate_keys(layers[li][0], wpos, torch.arange(at, at + wpos.shape[0]), inv))
                    vs.append(layers[li][1])
                    at += wpos.shape[0]
                past.append((torch.cat(ks, dim=1)[None], torch.cat(vs, dim=1)[None]))
            at = S + sum(w[1].shape[0] for w in window)
            pos = torch.arange(at, at + len(ids))
            page = _run(kv, ids, pos, past)
            del past
            writer.page(i, torch.stack([k for k, _ in page]), torch.stack([v for _, v in page]))
            window.append((page, pos))  # drops the page that leaves the window
            stats["pages_prefilled"] = stats.get("pages_prefilled", 0) + 1
            raw = torch.stack([unrotate_keys(k, pos, inv) for k, _ in page])  # [L, kvH, n, d] float32
            summaries.append((raw.mean(dim=2), raw.amin(dim=2), raw.amax(dim=2)))
            positions.append(pos)
            bounds.append((S + start, S + start + len(ids)))
            spans.append((offsets[n_sink_doc + start][0], offsets[n_sink_doc + start + len(ids) - 1][1]))
    window.clear()
    head: dict[str, Any] = {
        "sink.k": torch.stack([k for k, _ in sink]),
        "sink.v": torch.stack([v for _, v in sink]),
        "pos": torch.cat(positions).to(torch.int64),
        "bounds": torch.tensor(bounds, dtype=torch.int64).reshape(-1, 2),
        "spans": torch.tensor(spans, dtype=torch.int64).reshape(-1, 2),
    }
    for j, name in enumerate(("mean", "min", "max")):
        if summaries:
            head[f"summary.{name}"] = torch.stack([s[j] for s in summaries], dim=2)
    writer.commit(head)
    stats["documents_prefilled"] = stats.get("documents_prefilled", 0) + 1
