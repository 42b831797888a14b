"""Sentence-transformers-style encoders: an HF ``AutoModel`` + pooling + L2 normalisation.

Reads a sentence-transformers model dir's own config when present:
``modules.json`` (which modules; only Transformer, Pooling and Normalize are supported),
``1_Pooling/config.json`` (pooling mode), ``sentence_bert_config.json`` (``max_seq_length``,
``do_lower_case``) and ``config_sentence_transformers.json`` (``prompts`` for queries and
documents). A plain HF encoder dir gets mean pooling. Output is always L2-normalised, as the
``Encoder`` contract requires, so inner product equals cosine similarity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .base import EncodeKind, check_kind

__all__ = ["SentenceEncoder", "load_sentence_encoder", "POOLING_MODES"]

PoolingMode = Literal["mean", "cls", "max", "mean_sqrt_len", "lasttoken"]
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len", "lasttoken")

_ST_POOL_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "lasttoken",
}
_ST_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
# Tokenizers without a real limit report a huge sentinel model_max_length.
_NO_LIMIT = 1_000_000


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_st_settings(path: Path) -> dict[str, Any]:
    """Pooling mode, max length, lower-casing and prompts from a sentence-transformers dir.

    Returns a dict with keys ``pooling`` (one of ``POOLING_MODES``), ``max_seq_length``
    (int or None), ``do_lower_case`` (bool) and ``prompts`` (dict kind -> prefix).
    Raises ``ValueError`` for modules this loader cannot reproduce (e.g. a Dense layer)
    or a pooling config that selects no mode or several.
    """
    out: dict[str, Any] = {"pooling": "mean", "max_seq_length": None, "do_lower_case": False, "prompts": {}}
    pool_dir = path / "1_Pooling"
    modules_file = path / "modules.json"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        for m in modules:
            kind = str(m.get("type", "")).rsplit(".", 1)[-1]
            if kind not in _ST_SUPPORTED_MODULES:
                raise ValueError(
                    f"{path}: sentence-transformers module {m.get('type')!r} is not supported; "
                    f"supported: {', '.join(_ST_SUPPORTED_MODULES)}"
                )
            if kind == "Pooling":
                pool_dir = path / m.get("path", "1_Pooling")
    pool_cfg = pool_dir / "config.json"
    if pool_cfg.is_file():
        cfg = _read_json(pool_cfg)
        modes = [mode for key, mode in _ST_POOL_KEYS.items() if cfg.get(key)]
        if len(modes) != 1:
            raise ValueError(f"{pool_cfg}: expected exactly one pooling mode, got {modes or 'none'}")
        out["pooling"] = modes[0]
    sb = path / "sentence_bert_config.json"
    if sb.is_file():
        cfg = _read_json(sb)
        out["max_seq_length"] = cfg.get("max_seq_length")
        out["do_lower_case"] = bool(cfg.get("do_lower_case", False))
    st = path / "config_sentence_transformers.json"
    if st.is_file():
        prompts = _read_json(st).get("prompts") or {}
        out["prompts"] = {k: v for k, v in prompts.items() if k in ("query", "document") and v}
    return out


class SentenceEncoder:
    """An HF encoder model with pooling; see the module docstring.

    Build it with :func:`load_sentence_encoder`.
    """

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        *,
        pooling: PoolingMode = "mean",
        max_tokens: int = 512,
        do_lower_case: bool = False,
        prompts: dict[str, str] | None = None,
        device: str = "cpu",
    ) -> None:
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {pooling!r}")
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_tokens = int(max_tokens)
        self.do_lower_case = do_lower_case
        self.prompts = dict(prompts or {})
        self.device = device
        self.dim = int(model.config.hidden_size)

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r}, dim={self.dim}, pooling={self.pooling!r}, max_tokens={self.max_tokens})"

    def _pool(self, hidden: Any, mask: Any) -> Any:
        import torch

        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "max":
            return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        if self.pooling == "lasttoken":
            # Right padding: the last real token sits at length-1.
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        summed = (hidden * m).sum(dim=1)
        counts = m.sum(dim=1).clamp(min=1e-9)
        if self.pooling == "mean_sqrt_len":
            return summed / counts.sqrt()
        return summed / counts

    def encode(
        self,
        texts: list[str],
        *,
        kind: EncodeKind = "document",
        batch_size: int = 32,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Encode ``texts`` into float32 unit vectors, shape ``(len(texts), dim)``.

        ``kind`` picks the model's query or document prompt if it has any. Inputs longer
        than ``max_tokens`` are truncated. Raises ``ValueError`` for a bad kind or batch size.
        """
        import torch

        check_kind(kind)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, got a single str")
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        prefix = self.prompts.get(kind, "")
        prepared = [prefix + t for t in texts]
        if self.do_lower_case:
            prepared = [t.lower() for t in prepared]
        # Batches of similar length waste less compute on padding; results go back in input order.
        order = sorted(range(n), key=lambda i: len(prepared[i]), reverse=True)
        starts = range(0, n, batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"encoding ({kind})", unit="batch")
        with torch.inference_mode():
            for s in starts:
                idx = order[s : s + batch_size]
                enc = self.tokenizer(
                    [prepared[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                hidden = self.model(**enc).last_hidden_state
                pooled = self._pool(hidden, enc["attention_mask"]).float()
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                out[idx] = pooled.cpu().numpy()
        return out


def load_sentence_encoder(path: str | Path, *, device: str = "cpu") -> SentenceEncoder:
    """Load an encoder dir (sentence-transformers layout or plain HF) as a :class:`SentenceEncoder`.

    Raises ``FileNotFoundError`` when ``path`` is not a directory with a ``config.json``.
    """
    from transformers import AutoModel, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"encoder dir {str(path)!r} has no config.json")
    st = read_st_settings(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype="float32")
    model.to(device).eval()
    max_tokens = st["max_seq_length"]
    if not max_tokens:
        tml = getattr(tokenizer, "model_max_length", None)
        max_tokens = tml if tml and tml < _NO_LIMIT else getattr(model.config, "max_position_embeddings", 512)
    # Never past the position table, whatever the tokenizer claims.
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos:
        max_tokens = min(int(max_tokens), int(max_pos))
    return SentenceEncoder(
        name=str(path),
        model=model,
        tokenizer=tokenizer,
        pooling=st["pooling"],
        max_tokens=int(max_tokens),
        do_lower_case=st["do_lower_case"],
        prompts=st["prompts"],
        device=device,
    )
