"""Key/value-cache helpers for KV-level readers: rotary re-rotation and cache assembly.

Works on transformers causal LMs whose attention applies rotary embeddings in the
``rotate_half`` convention (Llama, Qwen2/3, Mistral, SmolLM2, ...) before the keys enter the
cache, which is what transformers 5.x does. Keys in a cache therefore carry their position;
these helpers move them to other positions without running the model again, using
``R(a) R(b) = R(a + b)``.

Shared by ``reader.retrolm``; model calls that take these caches go through
:func:`longread.llm.hf.forward` (``cache=``, the transformers 5.x keyword).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = [
    "rope_inv_freq",
    "rotate_keys",
    "rerotate_keys",
    "unrotate_keys",
    "make_cache",
    "cache_layers",
    "model_layout",
]

# Rope types whose frequencies are fixed at load time; "dynamic" rescales them with the
# sequence length inside forward(), so a stored key cannot be moved exactly.
_STATIC_ROPE = {"default", "linear", "llama3", "yarn", "longrope", "su", "ntk"}


def _decoder(model: Any) -> Any:
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise TypeError(f"{type(model).__name__} has no .model.layers decoder stack; need a transformers causal LM")
    return inner


def rope_inv_freq(model: Any) -> torch.Tensor:
    """The model's rotary inverse frequencies (float32, shape ``(head_dim // 2,)``).

    Raises ``TypeError`` for a model without ``model.model.rotary_emb`` and ``ValueError`` for
    rope types whose frequencies change with sequence length (they cannot be re-rotated exactly).
    """
    rot = getattr(_decoder(model), "rotary_emb", None)
    if rot is None or not hasattr(rot, "inv_freq"):
        raise TypeError(f"{type(model).__name__} has no rotary embedding (model.model.rotary_emb.inv_freq)")
    rope_type = getattr(rot, "rope_type", "default")
    if rope_type not in _STATIC_ROPE:
        raise ValueError(
            f"rope type {rope_type!r} rescales frequencies per sequence; re-rotation supports {sorted(_STATIC_ROPE)}"
        )
    # The buffer the model itself multiplies positions by (possibly cast with the model's dtype).
    return rot.inv_freq.float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_keys(keys: torch.Tensor, angles_pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``keys`` (``[..., T, head_dim]``) by ``angles_pos`` (``[T]``, may be negative or fractional).

    Computed in float32 and cast back to the keys' dtype, so a bf16 key gets one rounding.
    """
    if keys.shape[-2] != angles_pos.shape[-1]:
        raise ValueError(f"keys have {keys.shape[-2]} positions but {angles_pos.shape[-1]} angles were given")
    if keys.shape[-1] != 2 * inv_freq.shape[0]:
        raise ValueError(f"head_dim {keys.shape[-1]} does not match rotary dim {2 * inv_freq.shape[0]}")
    angles = angles_pos.to(device=keys.device, dtype=torch.float64)
    freqs = angles[:, None] * inv_freq.to(device=keys.device, dtype=torch.float64)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    # float64 angles: positions of tens of thousands times frequencies near 1 lose digits in fp32.
    cos, sin = emb.cos().float(), emb.sin().float()
    k = keys.float()
    return (k * cos + _rotate_half(k) * sin).to(keys.dtype)


def rerotate_keys(
    keys: torch.Tensor, from_pos: torch.Tensor, to_pos: torch.Tensor, inv_freq: torch.Tensor
) -> torch.Tensor:
    """Move keys rotated at ``from_pos`` to ``to_pos`` (both ``[T]`` integer tensors).

    Raises ``ValueError`` when the two position lists differ in length.
    """
    if from_pos.shape != to_pos.shape:
        raise ValueError(f"from_pos {tuple(from_pos.shape)} and to_pos {tuple(to_pos.shape)} must match")
    delta = to_pos.to(torch.int64) - from_pos.to(torch.int64)
    if not bool(delta.any()):
        return keys
    return rotate_keys(keys, delta, inv_freq)


def unrotate_keys(keys: torch.Tensor, from_pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Remove the rotation of keys rotated at ``from_pos``; returns float32 (position-free keys)."""
    return rotate_keys(keys.float(), -from_pos.to(torch.int64), inv_freq)


def model_layout(model: Any) -> tuple[int, int, int, int]:
    """``(num_layers, num_heads, num_kv_heads, head_dim)`` of a transformers causal LM."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, heads, kv, head_dim


def make_cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A transformers 5.x ``DynamicCache`` holding the given per-layer ``(keys, values)``.

    Tensors are ``[batch, kv_heads, T, head_dim]``. Filled through ``Cache.update(keys, values,
    layer_idx)``; built without a model config on purpose: a config with sliding-window layers
    would make those layers drop the page KV outside the window.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer ``(keys, values)`` of a transformers 5.x cache (``Cache.layers``).

    Raises ``TypeError`` for anything else (a legacy tuple cache).
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"expected a transformers Cache with .layers, got {type(cache).__name__}")
    return [(layer.keys, layer.values) for layer in layers]
