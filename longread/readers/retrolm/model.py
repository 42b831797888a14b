"""What RetroLM needs to know about its model: :class:`KVModel` (from the ``hf`` backend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .store import sha

__all__ = ["KVModel"]


@dataclass
class KVModel:
    """A causal LM with rotary positions, as the page store, prefill, scoring and decoding use it.

    ``layout``: ``(layers, heads, kv_heads, head_dim)``; ``inv_freq``: the rotary frequencies keys
    are re-rotated with; ``max_pos``: its position limit; ``dtype``: e.g. ``float32``;
    ``signature``: name + config hash (part of the page-KV cache key); ``stop_ids``: the one stop
    policy (:func:`longread.llm.hf.stop_token_ids`).
    """

    model: Any
    tokenizer: Any
    inv_freq: Any
    layout: tuple[int, int, int, int]
    max_pos: int
    dtype: str
    device: Any
    signature: str
    stop_ids: frozenset[int]

    @classmethod
    def from_backend(cls, backend: Any, name: str) -> "KVModel":
        """From a loaded :class:`longread.llm.hf.HFBackend` whose model is ``name``.

        Raises ``TypeError``/``ValueError`` for models without usable rotary positions.
        """
        from ..kvcache import model_layout, rope_inv_freq

        model, tok = backend.model, backend.tokenizer
        inv_freq = rope_inv_freq(model)  # raises for models without usable rotary positions
        param = next(model.parameters())
        return cls(
            model=model,
            tokenizer=tok,
            inv_freq=inv_freq,
            layout=model_layout(model),
            max_pos=int(getattr(model.config, "max_position_embeddings", 0) or 0) or 1 << 30,
            dtype=str(param.dtype).replace("torch.", ""),
            device=param.device,
            signature=sha([name, model.config.to_json_string(use_diff=False)])[:16],
            stop_ids=frozenset(backend.stop_ids),
        )

    @property
    def body(self) -> Any:
        """The decoder stack without the LM head (prefill and scoring need no logits)."""
        return self.model.model
