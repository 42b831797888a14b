"""RetroLM's page scoring: the question's query vectors against each page's key summaries.

The question suffix runs once after the sink; its query vectors (``q_proj`` outputs, before
rotation) at the scoring layers are compared with each page's position-free key summaries
(:func:`page_features`):

- per scoring layer ``l`` and query head ``h``, the page probabilities ``quest[l, h, p]`` (the
  Quest upper bound Σ max(q·min, q·max)) and ``mean_key[l, h, p]`` (q·mean): softmax over pages
  of the question tokens' scores, averaged over the tokens, times the page count (mean 1);
- per layer, the question's query vectors averaged over its tokens ``q[l]`` (heads concatenated,
  RMS-normalised) and each page's summaries (mean, min, max; kv heads concatenated), centred over
  the document's pages and RMS-normalised over the document: ``s[l, p]``.

The training-free scorers (``quest``, ``mean_key``) average their probabilities over layers and
heads with equal weights; a trained scorer (:mod:`.trained`) weighs the same features.
:class:`PageScorer` is the one the reader uses, chosen by its ``scorer`` param.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .model import KVModel
from .store import PagedDoc

__all__ = ["TRAINING_FREE_SCORERS", "query_vectors", "page_features", "training_free_scores", "PageScorer"]

TRAINING_FREE_SCORERS = ("quest", "mean_key")
_EPS = 1e-6


def query_vectors(kv: KVModel, doc: PagedDoc, suffix_ids: list[int], layers: list[int]) -> dict[int, Any]:
    """Pre-rotation query vectors ``[heads, T, head_dim]`` (float32) of the question suffix at ``layers``."""
    import torch

    from ...llm.hf import forward
    from ..kvcache import make_cache

    sk, sv = doc.tensor("sink.k"), doc.tensor("sink.v")
    _, n_heads, _, d = kv.layout
    captured: dict[int, Any] = {}
    hooks = []
    for li in layers:
        attn = kv.body.layers[li].self_attn

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
            forward(
                kv.body, cache=make_cache([(sk[i][None], sv[i][None]) for i in range(sk.shape[0])]),
                input_ids=torch.tensor([suffix_ids], device=kv.device),
                position_ids=torch.arange(S, S + len(suffix_ids), device=kv.device)[None], use_cache=True,
            )
    finally:
        for h in hooks:
            h.remove()
    return captured


def page_features(queries: dict[int, Any], summary: dict[str, Any], layers: list[int], group: int) -> dict[str, Any]:
    """Features of one question against one document's pages (float32, on the inputs' device).

    ``queries``: layer -> pre-rotation query vectors ``[heads, T, head_dim]``;
    ``summary``: ``mean``/``min``/``max`` key summaries ``[L, kv_heads, P, head_dim]``;
    ``group``: query heads per kv head. Returns ``quest``/``mean_key`` ``[len(layers), heads, P]``,
    ``q`` ``[len(layers), heads*head_dim]`` and ``s`` ``[len(layers), P, 3*kv_heads*head_dim]``
    (see the module docstring). Raises ``KeyError`` for a layer without queries.
    """
    import torch

    missing = [li for li in layers if li not in queries]
    if missing:
        raise KeyError(f"no query vectors for layers {missing}")
    quest, mean_key, qs, ss = [], [], [], []
    for li in layers:
        q = queries[li].float()  # [H, T, d]
        d = q.shape[-1]
        mk, lo, hi = (summary[k][li].float().repeat_interleave(group, dim=0) for k in ("mean", "min", "max"))  # [H, P, d]
        n_pages = mk.shape[1]
        m_logits = q @ mk.transpose(1, 2)  # [H, T, P]
        qe = q[:, :, None, :]
        q_logits = torch.maximum(qe * lo[:, None], qe * hi[:, None]).sum(-1)
        quest.append(torch.softmax(q_logits / math.sqrt(d), dim=-1).mean(dim=1) * n_pages)  # [H, P]
        mean_key.append(torch.softmax(m_logits / math.sqrt(d), dim=-1).mean(dim=1) * n_pages)
        qv = q.mean(dim=1).reshape(-1)  # [H*d]
        qs.append(qv / (qv.pow(2).mean().sqrt() + _EPS))
        # [kvH, P, d] x3 -> [P, 3*kvH*d], centred over pages, RMS-normalised over the document.
        s = torch.cat([summary[k][li].float() for k in ("mean", "min", "max")], dim=-1)  # [kvH, P, 3d]
        s = s.transpose(0, 1).reshape(n_pages, -1)
        s = s - s.mean(dim=0, keepdim=True)
        ss.append(s / (s.pow(2).mean().sqrt() + _EPS))
    return {"quest": torch.stack(quest), "mean_key": torch.stack(mean_key), "q": torch.stack(qs), "s": torch.stack(ss)}


def training_free_scores(feats: dict[str, Any], kind: str) -> Any:
    """The training-free ``quest`` / ``mean_key`` page scores ``[..., P]`` from :func:`page_features`
    (equal weights over layers and heads; mean 1 over pages)."""
    if kind not in TRAINING_FREE_SCORERS:
        raise ValueError(f"kind must be 'quest' or 'mean_key', got {kind!r}")
    return feats[kind].mean(dim=(-3, -2))


class PageScorer:
    """Scores a document's pages for a question: training-free (``kind``) or with a trained scorer.

    Build with :meth:`create`. ``layers``: the scoring layers (a trained scorer brings its own).
    """

    def __init__(self, kv: KVModel, kind: str, layers: list[int], trained: Any = None) -> None:
        self.kv, self.kind, self.layers, self.trained = kv, kind, layers, trained

    @classmethod
    def create(
        cls, kv: KVModel, *, scorer: str, trained_path: Path | None, score_layers: list[int] | None, model: str,
        page_size: int,
    ) -> "PageScorer":
        """The scorer the reader's params name. Raises ``ValueError`` for layers out of range or a
        trained scorer of another model, page size or layout."""
        n_layers = kv.layout[0]
        if trained_path is not None:
            from .trained import load_scorer

            net, spec, _ = load_scorer(trained_path, model=model, page_size=page_size, layout=tuple(kv.layout))
            return cls(kv, "trained", list(spec.layers), net.to(kv.device))
        if score_layers is None:
            return cls(kv, scorer, list(range(n_layers)))
        bad = [i for i in score_layers if not -n_layers <= i < n_layers]
        if bad:
            raise ValueError(f"score_layers {bad} out of range for a {n_layers}-layer model")
        return cls(kv, scorer, sorted({i % n_layers for i in score_layers}))

    def features(self, doc: PagedDoc, suffix_ids: list[int]) -> dict[str, Any]:
        """:func:`page_features` of the question suffix against every page of ``doc`` (what
        ``longread train retrolm`` trains on, so training and inference see the same features)."""
        queries = query_vectors(self.kv, doc, suffix_ids, self.layers)
        _, n_heads, n_kv, _ = self.kv.layout
        summary = {k: doc.tensor(f"summary.{k}") for k in ("mean", "min", "max")}
        return page_features(queries, summary, self.layers, n_heads // n_kv)

    def score(self, doc: PagedDoc, suffix_ids: list[int]) -> Any:
        """Relevance of every page of ``doc``: float32 tensor ``[P]`` on CPU.

        Training-free scorers give page probabilities averaged over layers, heads and question
        tokens (they sum to 1); a trained scorer gives unnormalised scores (only their order counts).
        """
        import torch

        from .trained import score_features

        feats = self.features(doc, suffix_ids)
        with torch.no_grad():
            if self.trained is not None:
                return score_features(self.trained, feats).float().cpu()
            return (training_free_scores(feats, self.kind) / doc.n_pages).cpu()
