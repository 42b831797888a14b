"""M2-BERT (Monarch Mixer BERT) retrieval encoder, a native torch implementation.

Loads the official ``togethercomputer/m2-bert-80M-{2k,8k,32k}-retrieval`` checkpoints with
their state-dict key names unchanged (``bert.embeddings.*``, ``bert.encoder.layer.N.attention.*``,
``bert.encoder.layer.N.mlp.*``, ``bert.pooler.dense.*``, ``classifier.*``) — no
``trust_remote_code``. Architecture facts follow HazyResearch/m2 (``bert/src/bert_layers.py``,
``bert/src/mm/*``):

* embeddings: word + learned absolute position + token type, LayerNorm;
* sequence mixing (no attention): ``in_linear`` to 3·d, a depthwise causal short conv (k=3),
  split into ``x1, x2, v``; ``y = longconv(v·x1) · x2 + longconv₂(u)``; ``out_linear``.
  ``longconv`` is a *bidirectional* gated long convolution whose kernels come from an implicit
  Hyena filter (an MLP with sine activations over a positional embedding, times an
  exponential decay), computed with FFTs in O(n log n); there is no residual around the mixer
  (the second long conv over the input plays that role);
* state mixing: a GLU MLP whose linears are block-diagonal (Monarch) matrices, post-LayerNorm
  with the residual from the mixer output;
* pooling: ``tanh(dense(h[CLS]))`` (``pool_all: true`` → masked mean instead); the encoder
  L2-normalises the result.

The checkpoints were evaluated with every input padded to the model's full length
(``padding="max_length"``, the default here, faithful to them). ``padding="longest"`` runs each
batch at its own length and zeroes padded positions before every long convolution, so a text's
embedding does not depend on what it is batched with and short texts are cheap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import bert_token_ids, check_kind, padded_batch
from .weights import load_strict, pick_device, read_config, read_state_dict

__all__ = [
    "M2BertConfig",
    "M2BertForRetrieval",
    "M2BertEncoder",
    "BlockdiagLinear",
    "fft_long_conv",
    "direct_long_conv",
    "load_m2bert",
    "save_m2bert_dir",
]

Padding = Literal["max_length", "longest"]


@dataclass
class M2BertConfig:
    """The config fields of the official M2-BERT checkpoints that shape the model.

    Defaults are those of ``m2-bert-80M-*-retrieval`` (yamls/embeddings in HazyResearch/m2)
    except the lengths, which the preset :meth:`retrieval` sets.
    """

    vocab_size: int = 30528
    hidden_size: int = 768
    num_hidden_layers: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 8192
    long_conv_l_max: int = 8192
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1
    hyena_filter_order: int = 128
    hyena_emb_dim: int = 5
    hyena_w: float = 10.0
    hyena_w_mod: float = 1.0
    hyena_lr_pos_emb: float = 1e-5
    bidirectional: bool = True
    residual_long_conv: bool = True
    use_glu_mlp: bool = True
    use_monarch_mlp: bool = True
    monarch_mlp_nblocks: int = 4
    use_positional_encodings: bool = True
    pool_all: bool = False
    num_labels: int = 1
    monarch_mixer_sequence_mixing: bool = True
    hyena_training_additions: bool = False

    def __post_init__(self) -> None:
        if not self.monarch_mixer_sequence_mixing:
            raise ValueError("only Monarch Mixer sequence mixing is supported (monarch_mixer_sequence_mixing=false given)")
        if self.hyena_training_additions:
            raise ValueError("hyena_training_additions=true is not used by the retrieval checkpoints and not supported")
        if self.hyena_emb_dim < 3 or self.hyena_emb_dim % 2 == 0:
            raise ValueError(f"hyena_emb_dim must be odd and >= 3, got {self.hyena_emb_dim}")
        if self.long_conv_l_max < 1 or self.max_position_embeddings < 1:
            raise ValueError(
                f"lengths must be > 0, got long_conv_l_max={self.long_conv_l_max} "
                f"max_position_embeddings={self.max_position_embeddings}"
            )
        if self.hidden_size % self.monarch_mlp_nblocks and self.use_monarch_mlp:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by monarch_mlp_nblocks {self.monarch_mlp_nblocks}"
            )

    @classmethod
    def retrieval(cls, seq_len: int, **overrides: Any) -> "M2BertConfig":
        """The ``m2-bert-80M-{seq_len}-retrieval`` shape (2048, 8192 or 32768), with overrides."""
        return cls(max_position_embeddings=seq_len, long_conv_l_max=seq_len, **overrides)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "M2BertConfig":
        """Build from an official ``config.json`` dict; unknown fields are ignored.

        ``num_labels`` falls back to ``len(id2label)`` the way transformers configs store it.
        """
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "num_labels" not in kw and isinstance(d.get("id2label"), dict):
            kw["num_labels"] = len(d["id2label"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """Official-style ``config.json`` content (plus ``model_type: m2_bert`` for dispatch)."""
        return {"model_type": "m2_bert", "architectures": ["BertForTextEncoding"], **asdict(self)}


# ----------------------------------------------------------------------------- long convolution


def _kernel_circulant(k_fwd: torch.Tensor, k_rev: torch.Tensor | None, n: int) -> torch.Tensor:
    """Lay the two one-sided kernels out on a circle of length ``n`` (>= 2L-1).

    Offset j >= 0 (past and present) sits at index j; offset -m (m >= 1, the future) sits at
    index n - m and takes ``k_rev[m - 1]``.
    """
    d, L = k_fwd.shape
    k = torch.zeros(d, n, dtype=k_fwd.dtype, device=k_fwd.device)
    k[:, :L] = k_fwd
    if k_rev is not None and L > 1:
        k[:, n - (L - 1) :] = k_rev[:, : L - 1].flip(-1)
    return k


def fft_long_conv(u: torch.Tensor, k_fwd: torch.Tensor, k_rev: torch.Tensor | None, D: torch.Tensor) -> torch.Tensor:
    """Bidirectional long convolution in O(L log L): ``y[t] = Σ_{s≤t} u[s]k_fwd[t-s] + Σ_{s>t} u[s]k_rev[s-t-1] + D·u[t]``.

    ``u``: (B, d, L); ``k_fwd``/``k_rev``: (d, L); ``D``: (d,). Computed in float32 with
    zero-padding to 2L so the circular FFT product is a linear convolution.
    """
    L = u.shape[-1]
    n = 2 * L
    k = _kernel_circulant(k_fwd.float(), None if k_rev is None else k_rev.float(), n)
    y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
    return (y + u.float() * D.float()[:, None]).to(u.dtype)


def direct_long_conv(u: torch.Tensor, k_fwd: torch.Tensor, k_rev: torch.Tensor | None, D: torch.Tensor) -> torch.Tensor:
    """The same convolution as :func:`fft_long_conv` by explicit O(L²) sums (for checking it)."""
    B, d, L = u.shape
    t = torch.arange(L)
    off = t[:, None] - t[None, :]  # off[t, s] = t - s
    fwd = torch.where(off >= 0, k_fwd[:, off.clamp(min=0)], torch.zeros(()))  # (d, L, L)
    mat = fwd
    if k_rev is not None:
        rev = torch.where(off < 0, k_rev[:, (-off - 1).clamp(min=0)], torch.zeros(()))
        mat = mat + rev
    return torch.einsum("dts,bds->bdt", mat, u) + u * D[:, None]


# ----------------------------------------------------------------------------- Hyena filter


class _Sin(nn.Module):
    """``sin(w_mod · freq · x)`` with a learnt per-channel frequency (shared across the filter MLP)."""

    def __init__(self, dim: int, w: float, w_mod: float) -> None:
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))
        self.w_mod = w_mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w_mod * self.freq * x)


class _PositionalEmbedding(nn.Module):
    """Time plus complex-exponential features over ``seq_len`` positions: ``z`` (learnt), ``t`` (fixed)."""

    def __init__(self, emb_dim: int, seq_len: int) -> None:
        super().__init__()
        bands = (emb_dim - 1) // 2
        t = torch.linspace(0, 1, seq_len)[None, :, None]
        w = 2 * math.pi * torch.linspace(0, seq_len - 1, seq_len)[None, :, None] / seq_len
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        angle = f * w
        self.z = nn.Parameter(torch.cat([t, torch.cos(angle), -torch.sin(angle)], dim=-1))
        self.register_buffer("t", t)


class _ExponentialModulation(nn.Module):
    """Per-channel exponential decay ``exp(-t·|delta|)`` applied to the raw filter."""

    def __init__(self, d_model: int, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5, target: float = 1e-2):
        super().__init__()
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, d_model)[None, None])


def _filter_mlp(emb_dim: int, order: int, d_model: int, act: nn.Module) -> nn.Sequential:
    # Same Sin instance at indices 1, 3, 5: the official filter shares one frequency vector.
    return nn.Sequential(
        nn.Linear(emb_dim, order), act, nn.Linear(order, order), act, nn.Linear(order, order), act,
        nn.Linear(order, d_model, bias=False),
    )


class HyenaFilter(nn.Module):
    """Implicit long-convolution kernels (forward and, if bidirectional, reverse) of length up to ``seq_len``."""

    def __init__(self, cfg: M2BertConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.seq_len = cfg.long_conv_l_max
        self.bidirectional = cfg.bidirectional
        self.bias = nn.Parameter(torch.randn(d))
        act = _Sin(cfg.hyena_filter_order, cfg.hyena_w, cfg.hyena_w_mod)
        self.pos_emb = _PositionalEmbedding(cfg.hyena_emb_dim, cfg.long_conv_l_max)
        self.implicit_filter = _filter_mlp(cfg.hyena_emb_dim, cfg.hyena_filter_order, d, act)
        if cfg.bidirectional:
            self.implicit_filter_rev = _filter_mlp(cfg.hyena_emb_dim, cfg.hyena_filter_order, d, act)
        self.modulation = _ExponentialModulation(d)

    def kernels(self, L: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(k_fwd, k_rev)`` of shape (d, L); the first L taps do not depend on L."""
        if L > self.seq_len:
            raise ValueError(f"sequence length {L} exceeds the long-conv length {self.seq_len}")
        z = self.pos_emb.z[:, :L]
        decay = torch.exp(-self.pos_emb.t[:, :L] * self.modulation.deltas.abs())
        k_fwd = (self.implicit_filter(z) * decay)[0].transpose(0, 1)
        k_rev = (self.implicit_filter_rev(z) * decay)[0].transpose(0, 1) if self.bidirectional else None
        return k_fwd, k_rev

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Convolve ``u`` (B, d, L) with this filter, plus the per-channel skip ``bias · u``."""
        k_fwd, k_rev = self.kernels(u.shape[-1])
        return fft_long_conv(u, k_fwd, k_rev, self.bias)


class MonarchMixerSequenceMixing(nn.Module):
    """Gated bidirectional long-conv sequence mixer (replaces attention)."""

    def __init__(self, cfg: M2BertConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.d_model = d
        self.residual_long_conv = cfg.residual_long_conv
        self.filter_fn = HyenaFilter(cfg)
        if cfg.residual_long_conv:
            self.filter_fn2 = HyenaFilter(cfg)
        self.in_linear = nn.Linear(d, 3 * d)
        self.out_linear = nn.Linear(d, d)
        self.short_filter = nn.Conv1d(3 * d, 3 * d, kernel_size=3, groups=3 * d, padding=2)

    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``u``: (B, L, d); ``mask``: (B, L) with 1 for real tokens, or None (everything is input)."""
        L = u.shape[1]
        m = None if mask is None else mask[:, None, :].to(u.dtype)
        proj = self.in_linear(u).transpose(1, 2)
        uc = self.short_filter(proj)[..., :L]  # causal: position t sees t-2..t only
        x1, x2, v = uc.split(self.d_model, dim=1)
        v = v * x1
        if m is not None:
            v = v * m  # padded positions must not leak backwards through the reverse kernel
        y = self.filter_fn(v) * x2
        if self.residual_long_conv:
            ut = u.transpose(1, 2)
            if m is not None:
                ut = ut * m
            y = y + self.filter_fn2(ut)
        return self.out_linear(y.transpose(1, 2))


# ----------------------------------------------------------------------------- Monarch MLP


class BlockdiagLinear(nn.Module):
    """Block-diagonal linear map: ``weight`` (nblocks, out/nblocks, in/nblocks), optional ``bias`` (out)."""

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        in_blk = math.ceil(in_features / nblocks)
        out_blk = math.ceil(out_features / nblocks)
        self.weight = nn.Parameter(torch.empty(nblocks, out_blk, in_blk))
        nn.init.kaiming_uniform_(self.weight.view(nblocks * out_blk, in_blk), a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nb, _, in_blk = self.weight.shape
        if x.shape[-1] < nb * in_blk:
            x = F.pad(x, (0, nb * in_blk - x.shape[-1]))
        xb = x.reshape(*x.shape[:-1], nb, in_blk)
        out = torch.einsum("...kp,kqp->...kq", xb, self.weight).reshape(*x.shape[:-1], -1)
        out = out[..., : self.out_features]
        return out + self.bias if self.bias is not None else out


class _MLP(nn.Module):
    """GLU (``gelu(a)·b``) or plain GELU MLP, with residual and post-LayerNorm."""

    def __init__(self, cfg: M2BertConfig) -> None:
        super().__init__()

        def lin(i: int, o: int, bias: bool) -> nn.Module:
            if cfg.use_monarch_mlp:
                return BlockdiagLinear(i, o, cfg.monarch_mlp_nblocks, bias=bias)
            return nn.Linear(i, o, bias=bias)

        self.glu = cfg.use_glu_mlp
        self.inter = cfg.intermediate_size
        self.gated_layers = lin(cfg.hidden_size, cfg.intermediate_size * (2 if self.glu else 1), False)
        self.wo = lin(cfg.intermediate_size, cfg.hidden_size, True)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.gated_layers(h)
        x = F.gelu(x[..., : self.inter]) * x[..., self.inter :] if self.glu else F.gelu(x)
        return self.layernorm(self.wo(self.dropout(x)) + h)


class _Layer(nn.Module):
    def __init__(self, cfg: M2BertConfig) -> None:
        super().__init__()
        self.attention = MonarchMixerSequenceMixing(cfg)
        self.mlp = _MLP(cfg)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.mlp(self.attention(h, mask))


class _Encoder(nn.Module):
    def __init__(self, cfg: M2BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class _Embeddings(nn.Module):
    def __init__(self, cfg: M2BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.use_pos = cfg.use_positional_encodings
        if self.use_pos:
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
            # persistent in the official module, so official state dicts carry it
            self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings).expand((1, -1)))
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(torch.zeros_like(input_ids))
        if self.use_pos:
            x = x + self.position_embeddings(torch.arange(input_ids.shape[1], device=input_ids.device))[None]
        return self.dropout(self.LayerNorm(x))


class _Pooler(nn.Module):
    def __init__(self, cfg: M2BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.pool_all = cfg.pool_all

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pool_all:
            m = mask.to(h.dtype)[..., None]
            x = (h * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            x = h[:, 0]
        return torch.tanh(self.dense(x))


class _BertModel(nn.Module):
    def __init__(self, cfg: M2BertConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.pooler = _Pooler(cfg)


class M2BertForRetrieval(nn.Module):
    """The retrieval checkpoint's module tree (``bert`` + ``classifier``); ``forward`` gives the sentence embedding."""

    def __init__(self, cfg: M2BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.bert = _BertModel(cfg)
        # unused for embeddings but present in the official state dict
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_padding: bool) -> torch.Tensor:
        """Pooled, un-normalised embedding (B, hidden). ``mask_padding``: zero pads before long convs."""
        L = input_ids.shape[1]
        if L > self.config.max_position_embeddings:
            raise ValueError(f"input length {L} exceeds max_position_embeddings {self.config.max_position_embeddings}")
        h = self.bert.embeddings(input_ids)
        mask = attention_mask if mask_padding else None
        for layer in self.bert.encoder.layer:
            h = layer(h, mask)
        return self.bert.pooler(h, attention_mask)


# ----------------------------------------------------------------------------- encoder wrapper


class M2BertEncoder:
    """:class:`longread.encoders.Encoder` over an :class:`M2BertForRetrieval`.

    ``padding="max_length"`` pads every input to ``max_tokens`` as the checkpoints were
    evaluated; ``"longest"`` batches at the longest input and masks pads (exactly invariant to
    batching, much cheaper for short texts). Documents longer than ``max_tokens`` are truncated
    unless ``truncate=False``, which raises.
    """

    def __init__(
        self,
        model: M2BertForRetrieval,
        tokenizer: Any,
        *,
        name: str = "m2-bert",
        padding: Padding = "max_length",
        device: str = "cpu",
    ) -> None:
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.name = name
        self.padding: Padding = padding
        self.dim = model.config.hidden_size
        self.max_tokens = model.config.max_position_embeddings
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id)

    def token_ids(self, texts: list[str], *, kind: str = "document", truncate: bool = True) -> list[list[int]]:
        """Token ids with ``[CLS]``/``[SEP]`` (M2 uses no prefix, so ``kind`` changes nothing).

        Raises ``ValueError`` for empty texts or, with ``truncate`` off, over-long ones.
        """
        check_kind(kind)
        return bert_token_ids(self.tokenizer, texts, self.max_tokens, truncate=truncate)

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        *,
        kind: str = "document",
        batch_size: int = 8,
        show_progress: bool = False,
        truncate: bool = True,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings (len(texts), dim). M2 uses no query/document prefixes."""
        check_kind(kind)
        if batch_size < 1:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.token_ids(texts, truncate=truncate)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            L = self.max_tokens if self.padding == "max_length" else max(len(ids[i]) for i in idx)
            inp, att = padded_batch(ids, idx, L, self.pad_id)
            emb = self.model(inp.to(self.device), att.to(self.device), mask_padding=self.padding == "longest")
            out[idx] = F.normalize(emb.float(), dim=-1).cpu().numpy()
        return out


def load_m2bert(path: str | Path, *, device: str = "cpu", padding: Padding = "max_length", tokenizer: Any = None) -> M2BertEncoder:
    """Load an M2-BERT retrieval encoder from a local dir (``config.json`` + safetensors/bin).

    The tokenizer comes from ``tokenizer`` or the dir's tokenizer files (the checkpoints use
    ``bert-base-uncased``; copy its ``vocab.txt``/``tokenizer.json`` beside the weights).
    A leading ``model.`` prefix (composer checkpoints) is removed as the official loader does.
    Raises ``CheckpointKeyError`` naming missing/unexpected keys, ``FileNotFoundError`` for
    missing files.
    """
    path = Path(path)
    cfg = M2BertConfig.from_dict(read_config(path))
    model = M2BertForRetrieval(cfg)
    sd = read_state_dict(path)
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model.") :]: v for k, v in sd.items()}
    load_strict(model, sd, f"M2-BERT checkpoint in {path}")
    if tokenizer is None:
        from transformers import AutoTokenizer

        if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
            raise FileNotFoundError(
                f"{path} has no tokenizer files; M2-BERT uses bert-base-uncased: put its vocab.txt or tokenizer.json there"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(path), model_max_length=cfg.max_position_embeddings)
    return M2BertEncoder(model, tokenizer, name=path.name, padding=padding, device=device)


def save_m2bert_dir(model: M2BertForRetrieval, path: str | Path, tokenizer: Any = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer) so :func:`load_m2bert` reads it back."""
    import json

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    # safetensors refuses shared storage: the filter MLPs share one Sin frequency, so clone.
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path / "model.safetensors"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path
