"""NomicBERT (``nomic-embed-text-v1.5``): native torch encoder for 8k-token inputs.

Architecture facts from nomic-ai/contrastors (``modeling_hf_nomic_bert.py``) and the GGUF
metadata: BERT-style post-LayerNorm blocks; no position embeddings but rotary positions on the
full head dim (non-interleaved halves, base 1000); SwiGLU MLP ``fc2(fc11(x) · silu(fc12(x)))``;
no biases in attention or MLP; token-type embeddings; LayerNorm on the embeddings. Trained at
2,048 tokens; beyond that the rotary base grows by *dynamic NTK* scaling,
``base · (f·L/2048 − (f−1))^(d/(d−2))`` with ``f = rotary_scaling_factor`` (2, as the model
card prescribes for 8,192 tokens). Embedding = mean over real tokens → LayerNorm without
weights → (optional Matryoshka truncation) → L2 norm. Inputs carry the task prefix
``search_query: `` or ``search_document: ``.

Two weight layouts load unchanged: the official safetensors (``embeddings.word_embeddings``,
``emb_ln``, ``encoder.layers.N.attn.Wqkv`` …) and llama.cpp's GGUF (``token_embd``,
``blk.N.attn_qkv`` …), whose tensor names are mapped onto the official ones before a strict load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import bert_token_ids, check_kind, padded_batch
from .weights import CheckpointKeyError, load_strict, pick_device, read_config, read_state_dict

__all__ = [
    "NomicBertConfig",
    "NomicBertModel",
    "NomicEncoder",
    "gguf_to_official",
    "load_nomic",
    "PREFIXES",
]

PREFIXES = {"query": "search_query: ", "document": "search_document: "}


@dataclass
class NomicBertConfig:
    """Shape and positional settings of a NomicBERT encoder."""

    vocab_size: int = 30528
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    rotary_base: float = 1000.0
    max_trained_positions: int = 2048
    rotary_scaling_factor: float | None = 2.0
    max_tokens: int = 8192
    qkv_bias: bool = False
    mlp_fc1_bias: bool = False
    mlp_fc2_bias: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {self.max_tokens}")

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "NomicBertConfig":
        """From the official ``config.json`` (GPT2-style names: ``n_embd``, ``n_layer`` …).

        Raises ``ValueError`` for variants this implementation does not cover (pre-norm,
        partial rotary, non-SwiGLU, interleaved rotary).
        """
        if d.get("prenorm", False):
            raise ValueError("prenorm NomicBERT variants are not supported (prenorm=true)")
        if float(d.get("rotary_emb_fraction", 1.0)) != 1.0:
            raise ValueError(f"only rotary_emb_fraction=1.0 is supported, got {d.get('rotary_emb_fraction')}")
        if d.get("activation_function", "swiglu") != "swiglu":
            raise ValueError(f"only activation_function='swiglu' is supported, got {d.get('activation_function')!r}")
        if d.get("rotary_emb_interleaved", False):
            raise ValueError("interleaved rotary embeddings are not supported")
        scaling = d.get("rotary_scaling_factor")
        return cls(
            vocab_size=int(d.get("vocab_size", 30528)),
            hidden_size=int(d.get("n_embd", 768)),
            num_layers=int(d.get("n_layer", 12)),
            num_heads=int(d.get("n_head", 12)),
            intermediate_size=int(d.get("n_inner") or 4 * int(d.get("n_embd", 768))),
            layer_norm_eps=float(d.get("layer_norm_epsilon", 1e-12)),
            type_vocab_size=int(d.get("type_vocab_size", 2)),
            rotary_base=float(d.get("rotary_emb_base", 1000.0)),
            max_trained_positions=int(d.get("max_trained_positions", 2048)),
            rotary_scaling_factor=2.0 if scaling is None else float(scaling),
            max_tokens=int(d.get("n_positions", 8192)),
            qkv_bias=bool(d.get("qkv_proj_bias", False)),
            mlp_fc1_bias=bool(d.get("mlp_fc1_bias", False)),
            mlp_fc2_bias=bool(d.get("mlp_fc2_bias", False)),
        )


def rotary_inv_freq(cfg: NomicBertConfig, seqlen: int) -> torch.Tensor:
    """Inverse frequencies for a sequence of ``seqlen`` tokens (dynamic NTK beyond the trained length)."""
    dim = cfg.hidden_size // cfg.num_heads
    base = cfg.rotary_base
    if cfg.rotary_scaling_factor and seqlen > cfg.max_trained_positions:
        f = cfg.rotary_scaling_factor
        base = base * ((f * seqlen / cfg.max_trained_positions) - (f - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class _Attention(nn.Module):
    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_heads
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.Wqkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, L, hd)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(o.transpose(1, 2).reshape(B, L, D))


class _GatedMLP(nn.Module):
    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.fc11 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_fc1_bias)
        self.fc12 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_fc1_bias)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc11(x) * F.silu(self.fc12(x)))


class _Block(nn.Module):
    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.attn = _Attention(cfg)
        self.mlp = _GatedMLP(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, cos, sin, mask):
        x = self.norm1(self.attn(x, cos, sin, mask) + x)
        return self.norm2(self.mlp(x) + x)


class _Embeddings(nn.Module):
    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)


class _Encoder(nn.Module):
    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_layers))


class NomicBertModel(nn.Module):
    """NomicBERT with the official module names; ``forward`` returns mean-pooled, layer-normed vectors."""

    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.emb_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = _Encoder(cfg)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer states (B, L, hidden). Pads are masked out as keys."""
        B, L = input_ids.shape
        if L > self.config.max_tokens:
            raise ValueError(f"input length {L} exceeds max_tokens {self.config.max_tokens}")
        x = self.embeddings.word_embeddings(input_ids) + self.embeddings.token_type_embeddings(torch.zeros_like(input_ids))
        x = self.emb_ln(x)
        inv = rotary_inv_freq(self.config, L).to(x.device)
        ang = torch.outer(torch.arange(L, device=x.device, dtype=torch.float32), inv)
        cos = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype)
        sin = torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layers:
            x = layer(x, cos, sin, mask)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens, then LayerNorm without weights (B, hidden); not yet L2-normalised."""
        h = self.hidden_states(input_ids, attention_mask)
        m = attention_mask.to(h.dtype)[..., None]
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.layer_norm(pooled, (pooled.shape[-1],))


_GGUF_GLOBAL = {
    "token_embd.weight": "embeddings.word_embeddings.weight",
    "token_types.weight": "embeddings.token_type_embeddings.weight",
    "token_embd_norm.weight": "emb_ln.weight",
    "token_embd_norm.bias": "emb_ln.bias",
}
_GGUF_BLOCK = {
    "attn_qkv": "attn.Wqkv",
    "attn_output": "attn.out_proj",
    "ffn_up": "mlp.fc11",
    "ffn_gate": "mlp.fc12",
    "ffn_down": "mlp.fc2",
    "attn_output_norm": "norm1",
    "layer_output_norm": "norm2",
}
_BLK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def gguf_to_official(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename llama.cpp ``nomic-bert`` tensors to the official state-dict keys.

    Raises ``CheckpointKeyError`` naming any GGUF tensor with no official counterpart.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, t in tensors.items():
        if name in _GGUF_GLOBAL:
            out[_GGUF_GLOBAL[name]] = t
            continue
        m = _BLK.match(name)
        if m and m.group(2) in _GGUF_BLOCK:
            out[f"encoder.layers.{m.group(1)}.{_GGUF_BLOCK[m.group(2)]}.{m.group(3)}"] = t
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointKeyError(f"GGUF tensors with no NomicBERT counterpart: {', '.join(sorted(unknown))}")
    return out


class NomicEncoder:
    """:class:`longread.encoders.Encoder` for NomicBERT: prefixes, 8k tokens, Matryoshka ``dim``.

    ``token_budget`` caps tokens per forward batch (memory); inputs longer than the trained
    2,048 tokens run one per batch because the NTK-scaled rotary base depends on the padded
    length — batching them would make an embedding depend on its batch-mates.
    """

    def __init__(
        self,
        model: NomicBertModel,
        tokenizer: Any,
        *,
        name: str = "nomic-embed-text-v1.5",
        device: str = "cpu",
        dim: int | None = None,
        token_budget: int = 16384,
    ) -> None:
        full = model.config.hidden_size
        if dim is not None and not 1 <= dim <= full:
            raise ValueError(f"dim must be in 1..{full}, got {dim}")
        if token_budget < model.config.max_tokens:
            raise ValueError(f"token_budget must be >= max_tokens={model.config.max_tokens}, got {token_budget}")
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.name = name
        self.dim = dim or full
        self.max_tokens = model.config.max_tokens
        self.token_budget = token_budget
        self.pad_id = int(tokenizer.pad_token_id or 0)

    def token_ids(self, texts: list[str], *, kind: str = "document", truncate: bool = True) -> list[list[int]]:
        """Ids of ``prefix + text`` with ``[CLS]``/``[SEP]``.

        Raises ``ValueError`` for an empty text, or one over ``max_tokens`` when ``truncate`` is off.
        """
        check_kind(kind)
        return bert_token_ids(self.tokenizer, texts, self.max_tokens, truncate=truncate, prefix=PREFIXES[kind])

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        *,
        kind: str = "document",
        batch_size: int = 32,
        show_progress: bool = False,
        truncate: bool = True,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings (len(texts), dim); see the class doc for batching."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        check_kind(kind)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.token_ids(texts, kind=kind, truncate=truncate)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        trained = self.model.config.max_trained_positions
        s = 0
        while s < len(order):
            # grow the batch while it fits the budget (lengths ascend, so the last one is longest)
            e = s + 1
            while (
                e < len(order)
                and e - s < batch_size
                and len(ids[order[e]]) <= trained
                and len(ids[order[e]]) * (e - s + 1) <= self.token_budget
            ):
                e += 1
            idx = order[s:e]
            L = max(len(ids[i]) for i in idx)
            inp, att = padded_batch(ids, idx, L, self.pad_id)
            emb = self.model(inp.to(self.device), att.to(self.device))[:, : self.dim]
            out[idx] = F.normalize(emb.float(), dim=-1).cpu().numpy()
            s = e
        return out


def load_nomic(path: str | Path, *, device: str = "cpu", dim: int | None = None) -> NomicEncoder:
    """Load NomicBERT from a dir: GGUF (``config.json`` names ``gguf_file``) or official safetensors.

    For the official layout the dir also needs its tokenizer files. Raises
    ``CheckpointKeyError`` naming missing/unexpected keys, ``FileNotFoundError`` for missing files.
    """
    path = Path(path)
    conf = read_config(path)
    gguf_file = conf.get("gguf_file")
    if gguf_file:
        from .gguf_reader import bert_tokenizer, read_gguf, wordpiece_vocab

        g = read_gguf(path / gguf_file)
        if g.architecture != "nomic-bert":
            raise ValueError(f"{path / gguf_file}: GGUF architecture is {g.architecture!r}, expected 'nomic-bert'")
        sd = gguf_to_official(g.tensors)
        vocab = wordpiece_vocab(g.tokens, g.token_types)
        cfg = NomicBertConfig(
            vocab_size=sd["embeddings.word_embeddings.weight"].shape[0],
            hidden_size=int(g.require("embedding_length")),
            num_layers=int(g.require("block_count")),
            num_heads=int(g.require("attention.head_count")),
            intermediate_size=int(g.require("feed_forward_length")),
            layer_norm_eps=float(g.require("attention.layer_norm_epsilon")),
            type_vocab_size=sd["embeddings.token_type_embeddings.weight"].shape[0],
            rotary_base=float(g.require("rope.freq_base")),
            max_trained_positions=int(g.require("context_length")),
            rotary_scaling_factor=float(conf.get("rotary_scaling_factor", 2.0)),
            max_tokens=int(conf.get("max_tokens", 8192)),
        )
        tokenizer = bert_tokenizer(vocab, model_max_length=cfg.max_tokens)
        where = f"GGUF {path / gguf_file}"
    else:
        cfg = NomicBertConfig.from_hf(conf)
        sd = read_state_dict(path)
        if sd and all(k.startswith("bert.") for k in sd):
            sd = {k[len("bert.") :]: v for k, v in sd.items()}
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), model_max_length=cfg.max_tokens)
        where = f"NomicBERT checkpoint in {path}"
    model = NomicBertModel(cfg)
    load_strict(model, {k: v.float() for k, v in sd.items()}, where)
    return NomicEncoder(model, tokenizer, name=str(conf.get("name", path.name)), device=device, dim=dim)
