"""``ModelHub``: model name → weights on disk → loaded model, cached per hub.

Name resolution, in order:

1. an existing local directory → used as is (any HF-format model directory);
2. a registry pack name (``longread.models.packs.PACKS``) → verified and prepared into the
   cache dir on first use;
3. something shaped like a Hugging Face id (``org/name``) → ``huggingface_hub`` snapshot,
   which needs hub access (or a warm HF cache); offline it fails with an error that lists the
   packs and says how to pass a local directory instead.

Loaded models are cached on the hub instance (no module-level state), so one hub per worker
loads each model once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import packs as _packs

if TYPE_CHECKING:  # pragma: no cover
    from ..encoders.base import Encoder

__all__ = ["ModelHub", "ModelNotFoundError", "resolve_dtype", "cpu_has_fast_bf16"]

_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither a local directory, a pack, nor a reachable HF id."""


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX), per torch."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


def resolve_dtype(dtype: str, kind: str, device: str) -> str:
    """The torch dtype name to load a ``kind`` ("causal_lm" or "encoder") model with.

    ``"auto"`` picks what is fastest where it runs (``benchmarks/models.py`` measures it):

    - CUDA: bfloat16 for causal LMs, float32 for encoders (small, and retrieval scores keep
      full precision);
    - CPU with native bf16 (AVX512-BF16 / AMX): bfloat16 for causal LMs, float32 for encoders;
    - other CPUs (AVX2 only): float32 for everything. There bf16 matmuls are emulated:
      prefill was ~4x slower than fp32 for SmolLM2 (591-token prompt) and MiniLM encoding
      ~3x slower, while bf16 decoding was at best equal per token, so for RAG prompts
      (long prefill, short answers) fp32 wins.

    Raises ``ValueError`` for an unknown dtype.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if kind != "causal_lm":
        return "float32"
    if device.startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if device == "cpu" and cpu_has_fast_bf16() else "float32"


class ModelHub:
    """Resolves model names to directories and loads models once per hub.

    Takes ``cache_dir`` (default ``$LONGREAD_CACHE`` or ``~/.cache/longread``), ``device``
    (``"cpu"``, ``"cuda"``, ``"cuda:0"``...), ``dtype`` (``"auto"``, ``"float32"``,
    ``"bfloat16"``, ``"float16"``; see :func:`resolve_dtype`) and ``offline`` (never contact
    the HF hub; default from ``HF_HUB_OFFLINE``). Raises ``ValueError`` for a bad dtype.
    """

    def __init__(self, cache_dir: str | Path | None = None, device: str = "cpu", dtype: str = "auto",
                 offline: bool | None = None) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _packs.default_cache_dir()
        self.device = device
        self.dtype = dtype
        if offline is None:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
        self.offline = offline
        self._paths: dict[str, Path] = {}
        self._loaded: dict[tuple[str, str], Any] = {}

    def __repr__(self) -> str:
        return f"ModelHub(cache_dir={str(self.cache_dir)!r}, device={self.device!r}, dtype={self.dtype!r})"

    # --- names → directories --------------------------------------------------------------

    def resolve(self, name: str | Path) -> Path:
        """Local HF-format directory for ``name``; packs are prepared on first use.

        Raises ``ModelNotFoundError`` (listing the packs and how to pass a path) when the name
        is none of the accepted forms or the hub cannot be reached, and the pack errors of
        :func:`longread.models.packs.prepare_pack` (missing pip package, checksum mismatch).
        """
        key = str(name)
        if key in self._paths:
            return self._paths[key]
        path = self._resolve(key)
        self._paths[key] = path
        return path

    def _resolve(self, name: str) -> Path:
        if not name or not name.strip():
            raise ModelNotFoundError(f"model name must be non-empty, got {name!r}; {self._choices()}")
        p = Path(name).expanduser()
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise ModelNotFoundError(f"model directory {str(p)!r} has no config.json; it is not an HF-format model")
            return p.resolve()
        if name in _packs.PACKS:
            return _packs.prepare_pack(_packs.PACKS[name], self.cache_dir).path
        looks_like_path = name.startswith((".", "/", "~")) or os.sep in name and not _HF_ID.match(name)
        if looks_like_path or p.exists():
            raise ModelNotFoundError(f"model directory {name!r} does not exist; {self._choices()}")
        if _HF_ID.match(name):
            return self._from_hf_hub(name)
        raise ModelNotFoundError(f"unknown model {name!r}; {self._choices()}")

    def _from_hf_hub(self, repo_id: str) -> Path:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id, local_files_only=self.offline))
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear error
            how = "offline mode is on" if self.offline else "the Hugging Face hub could not be reached"
            raise ModelNotFoundError(
                f"model {repo_id!r} looks like a Hugging Face id but {how} ({type(e).__name__}: {e}); "
                f"{self._choices()}"
            ) from None

    def provenance(self) -> dict[str, dict[str, str | None]]:
        """Every model name this hub resolved: its directory and, for packs, the pinned sha256.

        Recorded in a run dir's ``run.json`` so a run can be repeated with the same weights.
        """
        out: dict[str, dict[str, str | None]] = {}
        for name, path in self._paths.items():
            pack = _packs.PACKS.get(name)
            out[name] = {"path": str(path), "sha256": pack.sha256 if pack else None}
        return out

    def _choices(self) -> str:
        return (f"valid names are a local HF-format model directory, an HF id 'org/name' (needs hub access), "
                f"or a registry pack: {', '.join(sorted(_packs.PACKS))}")

    # --- loading ------------------------------------------------------------------------------

    def _torch_dtype(self, kind: str):
        import torch

        return getattr(torch, resolve_dtype(self.dtype, kind, self.device))

    def tokenizer(self, name: str | Path):
        """The tokenizer of model ``name`` (cached), left-padding with a pad token set."""
        path = self.resolve(name)
        key = ("tokenizer", str(path))
        if key not in self._loaded:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(path)
            # Decoder-only batches must be left-padded so every prompt ends where generation starts.
            tok.padding_side = "left"
            if tok.pad_token is None:
                if tok.eos_token is None:
                    raise ValueError(f"tokenizer of {name!r} has neither a pad nor an eos token")
                tok.pad_token = tok.eos_token
            self._loaded[key] = tok
        return self._loaded[key]

    def causal_lm(self, name: str | Path, dtype: str | None = None) -> tuple[Any, Any]:
        """``(model, tokenizer)`` for causal LM ``name``, loaded once, in eval mode on the hub's device.

        ``dtype`` overrides the hub's (``"auto"``: see :func:`resolve_dtype`); raises ``ValueError``
        for an unknown one.
        """
        path = self.resolve(name)
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        resolved = resolve_dtype(dtype or self.dtype, "causal_lm", self.device)
        key = ("causal_lm", str(path)) if resolved == resolve_dtype(self.dtype, "causal_lm", self.device) else (
            "causal_lm", str(path), resolved)
        if key not in self._loaded:
            import torch
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, resolved))
            model.to(self.device)
            model.eval()
            tok = self.tokenizer(name)
            if model.generation_config is not None and model.generation_config.pad_token_id is None:
                model.generation_config.pad_token_id = tok.pad_token_id
            self._loaded[key] = model
        return self._loaded[key], self.tokenizer(name)

    def backend(self, spec: Any, ctx: Any = None) -> Any:
        """The generation backend for ``spec`` (a :class:`longread.llm.LLMSpec`), loaded once per hub:
        stages naming the same spec share it (an ``hf`` model is shared by name anyway)."""
        key = ("backend", spec.cache_key())
        if key not in self._loaded:
            from ..llm.base import backend_class

            self._loaded[key] = backend_class(spec.backend)(spec, ctx)
        return self._loaded[key]

    def encoder(self, name: str | Path) -> "Encoder":
        """The sentence encoder ``name`` (cached), via ``longread.encoders.load_encoder``."""
        path = self.resolve(name)
        key = ("encoder", str(path))
        if key not in self._loaded:
            from ..encoders import load_encoder

            self._loaded[key] = load_encoder(path, device=self.device)
        return self._loaded[key]
