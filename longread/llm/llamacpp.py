"""The ``llamacpp`` backend: llama-cpp-python in-process on a GGUF file (no torch on this path).

``llm.model`` is a ``.gguf`` path or a GGUF pack name (resolved to the pack's verified GGUF file by
:func:`longread.models.packs.gguf_path`: nothing is converted). Chat messages are rendered with the
GGUF's own chat template through llama-cpp-python's Jinja formatter, which renders exactly what
transformers' ``apply_chat_template`` renders for the same template (tested for the SmolLM2 and
Qwen packs), and the rendered text is tokenized with special tokens parsed — so this backend and
``hf`` feed the same prompt ids to the same weights.

Decoding is llama.cpp's: greedy at ``temperature == 0``, else temperature + ``top_p`` sampling with
the request's seed (llama.cpp applies ``top_p`` before the temperature, ``hf`` after it). The stop
policy is ``hf``'s: end-of-generation tokens (EOS, ``<|im_end|>``, ... as llama.cpp's vocabulary
marks them) and the request's stop strings, cut from the text; ``new_tokens`` counts a final stop
token as ``hf`` does. Requests run one after another (llama.cpp's CPU kernels already use every
thread); a prompt that shares a prefix with the previous one reuses its KV cache.

Install with ``pip install 'longread[llamacpp]'`` (llama-cpp-python compiles llama.cpp from source).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .base import Backend
from .errors import BackendUnavailableError
from .spec import LLMSpec
from .types import GenRequest, Generation

if TYPE_CHECKING:  # pragma: no cover
    from ..stage import RunContext

__all__ = ["LlamaCppBackend", "resolve_gguf", "default_threads", "gguf_context_length", "MAX_DEFAULT_CTX"]

MAX_DEFAULT_CTX = 32768
"""Default context window cap: the KV cache is allocated up front, and 128k-token windows cost GBs."""

INSTALL_HINT = "pip install 'longread[llamacpp]' (builds llama.cpp from source, about 10 minutes on 2 cores)"


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module; :class:`BackendUnavailableError` naming the extra when it is absent."""
    try:
        import llama_cpp
    except ImportError as e:
        raise BackendUnavailableError(f"backend 'llamacpp' needs llama-cpp-python ({e}); install it with: "
                                      f"{INSTALL_HINT}") from None
    return llama_cpp


def resolve_gguf(model: str, cache_dir: str | Path | None = None) -> Path:
    """The GGUF file ``model`` names: a ``.gguf`` path, or a GGUF pack (verified, see
    :func:`longread.models.packs.gguf_path`).

    Raises ``FileNotFoundError`` for a missing ``.gguf`` file and ``ValueError`` listing the GGUF
    packs for anything else; pack errors (missing package, checksum) propagate.
    """
    from ..models import packs

    if model.lower().endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return path.resolve()
    usable = [p.name for p in packs.list_packs() if p.fmt == "gguf" and p.kind == "causal_lm"]
    if model not in usable:
        raise ValueError(f"backend 'llamacpp' needs a .gguf file or a GGUF pack ({', '.join(usable)}), got {model!r}")
    return packs.gguf_path(model, cache_dir)


def default_threads() -> int:
    """Threads torch would use: ``OMP_NUM_THREADS`` when set, else the CPUs this process may run on."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


# GGUF value types (gguf spec): fixed-size scalars by struct code; 8 = string, 9 = array.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_context_length(path: str | Path) -> int | None:
    """The training context length (``<arch>.context_length``) from a GGUF file's header, or ``None``.

    Reads only the key/value header and stops at the key, so it takes milliseconds where a full
    reader (``gguf.GGUFReader``) parses every tensor and token. Raises ``ValueError`` for a file that
    is not GGUF.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (bad magic bytes)")
        _version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))

        def string() -> bytes:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n)

        def skip(vtype: int) -> None:
            if vtype in _SCALAR:
                f.seek(struct.calcsize(_SCALAR[vtype]), 1)
            elif vtype == 8:
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(n, 1)
            elif vtype == 9:
                itype, count = struct.unpack("<IQ", f.read(12))
                if itype in _SCALAR:
                    f.seek(struct.calcsize(_SCALAR[itype]) * count, 1)
                else:
                    for _ in range(count):
                        skip(itype)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {vtype}")

        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack("<I", f.read(4))
            if key.endswith(b".context_length") and vtype in _SCALAR:
                code = _SCALAR[vtype]
                return int(struct.unpack("<" + code, f.read(struct.calcsize(code)))[0])
            skip(vtype)
    return None


class LlamaCppBackend(Backend):
    """llama-cpp-python on a GGUF file: text generation and next-token logits.

    ``spec.n_threads`` defaults to :func:`default_threads`, ``spec.n_ctx`` to the model's training
    context capped at :data:`MAX_DEFAULT_CTX`, ``spec.n_gpu_layers`` to 0 (CPU). llama.cpp's own
    logging is off. Raises :class:`BackendUnavailableError` without llama-cpp-python, and the
    errors of :func:`resolve_gguf`.
    """

    name = "llamacpp"

    def __init__(self, spec: LLMSpec, ctx: "RunContext | None" = None) -> None:
        super().__init__(spec, ctx)
        self._llama_cpp = llama_cpp = import_llama_cpp()
        cache_dir = getattr(getattr(ctx, "models", None), "cache_dir", None)
        self.path = resolve_gguf(spec.model, cache_dir)
        self.n_threads = spec.n_threads or default_threads()
        n_ctx = spec.n_ctx or min(gguf_context_length(self.path) or 4096, MAX_DEFAULT_CTX)
        self.seed = int(getattr(ctx, "seed", 0) or 0)
        self.llm = llama_cpp.Llama(
            model_path=str(self.path), n_ctx=n_ctx, n_threads=self.n_threads, n_threads_batch=self.n_threads,
            n_gpu_layers=spec.n_gpu_layers, seed=self.seed, logits_all=False, verbose=False,
        )
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._lock = threading.Lock()  # one llama.cpp context: one caller at a time
        self._formatter = None
        template = self.llm.metadata.get("tokenizer.chat_template")
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            def text(tok: int) -> str:  # a special token's text, as transformers passes it to templates
                return self.llm.detokenize([tok], special=True).decode("utf-8", errors="replace") if tok >= 0 else ""

            self._formatter = Jinja2ChatFormatter(template, eos_token=text(self.llm.token_eos()),
                                                  bos_token=text(self.llm.token_bos()))

    def __repr__(self) -> str:
        return f"LlamaCppBackend(model={str(self.path)!r}, n_ctx={self.window}, n_threads={self.n_threads})"

    # -- tokens ----------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, str]]) -> str:
        """``messages`` through the GGUF's chat template, assistant turn opened (no template: the
        contents joined by blank lines)."""
        if self._formatter is None:
            return "\n\n".join(m["content"] for m in messages)
        return self._formatter(messages=messages).prompt

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no BOS added; special-token text (``<|im_start|>``) becomes the special
        token, as in transformers."""
        if not text:
            return []
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return self.llm.detokenize(list(ids), special=False).decode("utf-8", errors="replace")

    @property
    def window(self) -> int:
        """The context window llama.cpp was opened with (``n_ctx``)."""
        return int(self.llm.n_ctx())

    # -- generation ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """One request after another. A prompt longer than the window fails alone (``error`` names
        both sizes). Raises ``ValueError`` for a prompt that tokenizes to nothing."""
        with self._lock:
            return [self._one(r, i) for i, r in enumerate(requests)]

    def _one(self, req: GenRequest, index: int) -> Generation:
        t0 = time.perf_counter()
        ids = self.encode(req.prompt if req.prompt is not None else self.render(req.messages or []))
        if not ids:
            raise ValueError(f"prompt {index} is empty after tokenization")
        room = self.window - len(ids)
        if room < 1:
            return Generation.failed(f"prompt has {len(ids)} tokens but the llama.cpp context window is "
                                     f"{self.window}; raise llm.n_ctx or give the stage a smaller budget",
                                     time.perf_counter() - t0)
        limit = min(req.max_new_tokens, room)
        self.llm.set_seed(req.seed if req.seed is not None else self.seed + index)
        out: list[int] = []
        steps, reason, cut, ttft = 0, "length", None, None
        # top_k=0 / min_p=0 / typical_p=1 switch llama.cpp's extra filters off: temperature and top_p
        # are the only knobs, as in GenRequest.
        tokens = self.llm.generate(ids, temp=req.temperature, top_p=req.top_p, top_k=0, min_p=0.0,
                                   typical_p=1.0, repeat_penalty=1.0)
        for tok in tokens:
            if ttft is None:
                ttft = time.perf_counter() - t0
            steps += 1
            if self._llama_cpp.llama_vocab_is_eog(self._vocab, tok):
                reason = "stop"
                break
            out.append(int(tok))
            if req.stop:
                text = self.decode(out)
                hit = min((text.find(s) for s in req.stop if s in text), default=-1)
                if hit >= 0:
                    reason, cut = "stop", text[:hit]
                    break
            if len(out) >= limit:
                break
        tokens.close()
        seconds = time.perf_counter() - t0
        return Generation(text=cut if cut is not None else self.decode(out), finish_reason=reason,  # type: ignore[arg-type]
                          prompt_tokens=len(ids), new_tokens=steps, ttft_s=ttft if ttft is not None else seconds,
                          seconds=seconds, token_ids=out)

    # -- logits ----------------------------------------------------------------------------------
    def next_token_logits(self, prompts: Sequence[str]) -> Any:
        """Float32 next-token logits after each finished prompt string: numpy ``[n, vocab]``.

        Raises ``ValueError`` for an empty prompt or one that does not fit the window.
        """
        import numpy as np

        n_vocab = int(self.llm.n_vocab())
        rows = np.empty((len(prompts), n_vocab), dtype=np.float32)
        with self._lock:
            for i, p in enumerate(prompts):
                ids = self.encode(p)
                if not ids or len(ids) >= self.window:
                    raise ValueError(f"prompt {i} has {len(ids)} tokens; it must have 1..{self.window - 1}")
                self.llm.reset()
                self.llm.eval(ids)
                # Only the last position has logits (logits_all=False); -1 addresses it.
                ptr = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
                rows[i] = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
        return rows

    def close(self) -> None:
        """Free the model and its context."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None  # type: ignore[assignment]
