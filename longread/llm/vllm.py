"""The ``vllm`` backend: vLLM's offline engine (``vllm.LLM``) for GPU batch runs.

``llm.model`` is a pack name (its prepared HF directory), a local HF directory or a Hugging Face
id, resolved by the worker's model hub as for ``hf``. Prompts are rendered with the tokenizer's chat
template and tokenized here exactly as the ``hf`` backend does, then given to the engine as token
ids, so both backends see the same prompt. The whole batch goes to one ``LLM.generate`` call; the
engine schedules up to ``llm.concurrency`` sequences at once (``max_num_seqs``).

Decoding: greedy at ``temperature == 0``, else temperature + ``top_p`` with the request's seed
(default: the run's seed plus the request's index). Stops on the tokenizer's end-of-turn tokens and
the request's stop strings (cut from the text). ``ttft_s`` is the engine's first-token latency when
it reports one (vLLM records per-request metrics only with stats logging on), else the batch's wall
time.

Install with ``pip install 'longread[vllm]'`` (needs a CUDA GPU).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

from .base import Backend
from .errors import BackendUnavailableError
from .spec import LLMSpec
from .types import GenRequest, Generation

if TYPE_CHECKING:  # pragma: no cover
    from ..stage import RunContext

__all__ = ["VLLMBackend", "sampling_kwargs", "import_vllm", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'longread[vllm]' (needs a CUDA GPU)"


def import_vllm() -> Any:
    """The ``vllm`` module; :class:`BackendUnavailableError` naming the extra when it is absent."""
    try:
        import vllm
    except ImportError as e:
        raise BackendUnavailableError(f"backend 'vllm' needs the vllm package ({e}); install it with: "
                                      f"{INSTALL_HINT}") from None
    return vllm


def sampling_kwargs(req: GenRequest, index: int, stop_ids: Sequence[int], default_seed: int,
                    room: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for ``req`` (a pure function, tested without vLLM).

    ``index``: the request's place in its batch (sampled requests without a seed get
    ``default_seed + index``); ``stop_ids``: end-of-turn token ids; ``room``: tokens left in the
    window after the prompt (caps ``max_tokens``).
    """
    kw: dict[str, Any] = {
        "n": 1,
        "max_tokens": min(req.max_new_tokens, room) if room is not None else req.max_new_tokens,
        "temperature": float(req.temperature),
        "top_p": float(req.top_p) if not req.greedy else 1.0,
        "stop": list(req.stop),
        "stop_token_ids": sorted(int(i) for i in stop_ids),
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
    }
    if not req.greedy:
        kw["seed"] = int(req.seed) if req.seed is not None else default_seed + index
    return kw


def _ttft(output: Any) -> float | None:
    m = getattr(output, "metrics", None)
    if m is None:
        return None
    latency = getattr(m, "first_token_latency", None)  # vLLM v1 RequestStateStats
    if latency:
        return float(latency)
    first, arrival = getattr(m, "first_token_time", None), getattr(m, "arrival_time", None)  # v0 RequestMetrics
    if first and arrival:
        return float(first - arrival)
    return None


class VLLMBackend(Backend):
    """vLLM's offline engine on one model; ``spec.n_ctx`` sets ``max_model_len``,
    ``spec.gpu_memory_utilization`` and ``spec.dtype`` go to ``vllm.LLM``.

    Raises :class:`BackendUnavailableError` without vllm, and the model hub's errors for a bad name.
    """

    name = "vllm"

    def __init__(self, spec: LLMSpec, ctx: "RunContext | None" = None) -> None:
        super().__init__(spec, ctx)
        vllm = import_vllm()
        from .hf import render_chat, stop_token_ids

        if ctx is not None:
            hub = ctx.models
        else:
            from ..models.hub import ModelHub

            hub = ModelHub()
        self._vllm = vllm
        self._render_chat = render_chat
        self.path = hub.resolve(spec.model)
        self.seed = int(getattr(ctx, "seed", 0) or 0)
        kw: dict[str, Any] = {"model": str(self.path), "dtype": spec.dtype, "seed": self.seed,
                              "gpu_memory_utilization": spec.gpu_memory_utilization, "max_num_seqs": spec.concurrency}
        if spec.n_ctx:
            kw["max_model_len"] = spec.n_ctx
        self.llm = vllm.LLM(**kw)
        self.tokenizer = self.llm.get_tokenizer()
        self.stop_ids = stop_token_ids(None, self.tokenizer)
        engine = self.llm.llm_engine
        config = getattr(engine, "model_config", None) or engine.vllm_config.model_config
        self._window = int(config.max_model_len)

    def __repr__(self) -> str:
        return f"VLLMBackend(model={str(self.path)!r}, window={self.window})"

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat-templated prompt (assistant turn opened), as the ``hf`` backend renders it."""
        return self._render_chat(self.tokenizer, messages)

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def window(self) -> int:
        """The engine's ``max_model_len``."""
        return self._window

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """The whole batch in one engine call; a prompt that does not fit the window fails alone."""
        t0 = time.perf_counter()
        out: list[Generation | None] = [None] * len(requests)
        prompts, params, index = [], [], []
        for i, r in enumerate(requests):
            ids = self.encode(r.prompt if r.prompt is not None else self.render(r.messages or []))
            if not ids:
                raise ValueError(f"prompt {i} is empty after tokenization")
            room = self.window - len(ids)
            if room < 1:
                out[i] = Generation.failed(f"prompt has {len(ids)} tokens but the vLLM window (max_model_len) is "
                                           f"{self.window}; raise llm.n_ctx or give the stage a smaller budget")
                continue
            prompts.append({"prompt_token_ids": ids})
            params.append(self._vllm.SamplingParams(**sampling_kwargs(r, i, self.stop_ids, self.seed, room)))
            index.append(i)
        results = self.llm.generate(prompts, sampling_params=params, use_tqdm=False) if prompts else []
        seconds = time.perf_counter() - t0
        for i, prompt, res in zip(index, prompts, results):
            o, req = res.outputs[0], requests[i]
            text = o.text
            hit = min((text.find(s) for s in req.stop if s in text), default=-1)
            out[i] = Generation(
                text=text[:hit] if hit >= 0 else text,
                finish_reason="length" if o.finish_reason == "length" and hit < 0 else "stop",
                prompt_tokens=len(prompt["prompt_token_ids"]),
                new_tokens=len(o.token_ids), ttft_s=_ttft(res) or seconds, seconds=seconds,
                token_ids=list(o.token_ids),
            )
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Drop the engine and free its GPU memory."""
        if getattr(self, "llm", None) is None:
            return
        self.llm = None  # type: ignore[assignment]
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
