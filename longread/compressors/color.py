"""``compressor.color``: abstractive passage compression with CoLoR's summarisation prompt.

CoLoR ("Efficient Long Context Language Model Retrieval with Compression", repo going-doer/CoLoR)
compresses every passage independently, *without the query*: the passage is sent as one user turn
``"Summarize the following content. \\nContent:\\n{passage}\\n Summary:"`` through the model's chat
template and the model's greedy continuation is the compression (repo: ``codes/utils.py::
lclm_summarize``; the same prompt is the ``prompt`` of the ORPO preference pairs). Because the prompt
is query-agnostic, a compression could be cached per chunk; this stage compresses at query time so
that it composes with any retriever.

Generation goes through the generation layer (``llm:``; any backend, ``hf`` when an ``adapter``
is merged in). Only ``passage.text`` is replaced: the passage's chunk (id, doc id, character
offsets, provenance and text) stays the indexed one, so citations still point at the source. What the stage did is recorded per question in
``trace["compression"]["compressor.color"]`` (tokens in/out, ratio, how many passages were skipped
or fell back, and per passage the original length), and its LLM calls and tokens in the stage's
:class:`~longread.types.Usage` record.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Sequence

from pydantic import field_validator, model_validator

from ..llm import GenRequest, load_backend
from ..llm.params import LLMParams
from ..llm.usage import record, record_error
from ..registry import register
from ..stage import Params, RunContext, Stage, timed
from ..types import QAState

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..llm import Backend

__all__ = [
    "COLOR_PROMPT",
    "ColorCompressor",
    "Summary",
    "check_adapter_base",
    "clean_summary",
    "color_messages",
    "summarize",
    "truncate_tokens",
]

COLOR_PROMPT = "Summarize the following content. \nContent:\n{passage}\n Summary:"
"""The CoLoR summarisation prompt, verbatim from the official repo (one user turn)."""

_BROKEN = re.compile("[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LABEL = re.compile(r"^\s*(?:\*\*)?\s*summary\s*(?::\s*\*\*|\*\*\s*:|:)\s*", re.IGNORECASE)


def color_messages(passage: str) -> list[dict[str, str]]:
    """The chat conversation CoLoR sends for one passage: a single user message."""
    return [{"role": "user", "content": COLOR_PROMPT.format(passage=passage)}]


def clean_summary(text: str, original: str) -> str | None:
    """Return a usable compression of ``original`` from raw model output, or None.

    Strips whitespace and a leading "Summary:" label (the prompt invites one). Returns None when
    nothing is left, when no letter or digit is left, when it holds broken bytes (U+FFFD) or
    control characters, when it is a degenerate loop (one word is more than half of 8+ words) or
    when it is not shorter than the original — such output is not a compression and the caller
    applies its fallback.
    """
    t = _LABEL.sub("", text.strip()).strip()
    if not t or not any(ch.isalnum() for ch in t):
        return None
    if _BROKEN.search(t):
        return None
    words = t.split()
    if len(words) >= 8 and Counter(w.lower() for w in words).most_common(1)[0][1] > len(words) / 2:
        return None
    if len(t) >= len(original.strip()):
        return None
    return t


def truncate_tokens(text: str, budget: int, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]) -> str:
    """``text`` cut to at most ``budget`` tokens of the tokenizer behind ``encode``/``decode``
    (a backend's, or a Hugging Face tokenizer's without special tokens)."""
    # Decoding then re-encoding a byte-level BPE sequence can change the count; iterate a few
    # times so the returned text measures <= budget with the same tokenizer.
    for _ in range(3):
        ids = encode(text)
        if len(ids) <= budget:
            return text
        text = decode(ids[:budget])
    ids = encode(text)
    return text if len(ids) <= budget else decode(ids[: max(0, budget - 1)])


@dataclass
class Summary:
    """One model compression: raw ``text``, ``prompt_tokens`` fed and ``new_tokens`` generated;
    ``error`` when the call failed (``text`` is then empty)."""

    text: str
    prompt_tokens: int
    new_tokens: int
    error: str | None = None


def summarize(
    backend: "Backend",
    passages: Sequence[str],
    *,
    max_new_tokens: int | Sequence[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    max_input_tokens: int | None = None,
) -> list[Summary]:
    """Compress each passage with the CoLoR prompt on ``backend``; one ``Summary`` per passage, in order.

    The prompt goes through the model's chat template (a model without one gets the bare CoLoR
    prompt). ``max_new_tokens`` is one budget for all or one per passage. ``temperature == 0`` is
    greedy decoding, otherwise sampling with ``seed``. ``max_input_tokens`` cuts long passages
    before prompting. Raises ``ValueError`` on bad budgets.
    """
    n = len(passages)
    budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != n:
        raise ValueError(f"got {len(budgets)} max_new_tokens for {n} passages")
    if any(b < 1 for b in budgets):
        raise ValueError(f"max_new_tokens must be >= 1, got {min(budgets)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not passages:
        return []
    texts = list(passages)
    if max_input_tokens is not None:
        texts = [truncate_tokens(t, max_input_tokens, backend.encode, backend.decode) for t in texts]
    reqs = [GenRequest(messages=color_messages(t), max_new_tokens=b, temperature=temperature, top_p=top_p, seed=seed)
            for t, b in zip(texts, budgets)]
    return [
        Summary(g.text, g.prompt_tokens, g.new_tokens, (g.error or "generation failed") if g.finish_reason == "error" else None)
        for g in backend.generate(reqs)
    ]


def _norm_name(name: str) -> str:
    return Path(str(name).rstrip("/\\")).name.lower().replace("_", "-")


def check_adapter_base(adapter_dir: Path, model_name: str, model_dir: Path | None = None) -> dict[str, Any]:
    """Check that the PEFT adapter in ``adapter_dir`` was trained on ``model_name``; return its config.

    The adapter's ``base_model_name_or_path`` must name the same model as ``model_name``, the
    resolved ``model_dir`` or that dir's recorded ``_name_or_path`` (compared by last path part,
    case-insensitively). Raises ``FileNotFoundError`` when the dir or its ``adapter_config.json``
    is missing and ``ValueError`` on a base mismatch (e.g. the official Phi-3-mini CoLoR adapter
    on qwen2.5-0.5b-instruct).
    """
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"compressor.color adapter dir {str(adapter_dir)!r} does not exist")
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{str(adapter_dir)!r} is not a PEFT adapter dir: adapter_config.json is missing"
        )
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"adapter {str(adapter_dir)!r} does not record base_model_name_or_path; cannot check it")
    names = {_norm_name(model_name)}
    if model_dir is not None:
        names.add(_norm_name(str(model_dir)))
        mcfg = Path(model_dir) / "config.json"
        if mcfg.is_file():
            recorded = json.loads(mcfg.read_text(encoding="utf-8")).get("_name_or_path")
            if recorded:
                names.add(_norm_name(recorded))
    if _norm_name(base) not in names:
        raise ValueError(
            f"adapter {str(adapter_dir)!r} was trained on base model {base!r}, but compressor.color.model is "
            f"{model_name!r}; set model to that base (e.g. a local dir of it) or use an adapter trained on {model_name!r}"
        )
    return cfg


class ColorParams(LLMParams):
    """Params of ``compressor.color``.

    ``llm`` (or ``model``: hub name or local dir): the compressing LLM; ``batch_size`` is
    shorthand for ``llm.batch_size`` (passages per forward batch, ``hf``). ``adapter``: local
    PEFT/LoRA adapter dir trained on ``model`` (None: the plain model; needs backend ``hf``).
    ``max_new_tokens``: hard cap on a compression's tokens. ``ratio``: when set, each passage's
    budget is also at most ``ceil(ratio * passage_tokens)``. ``min_chars``: passages shorter than
    this are passed through unchanged. ``max_input_tokens``: passages are cut to this many tokens
    before prompting. ``fallback``: what a passage becomes when the model's output is unusable
    (empty, no alphanumerics, a loop, or not shorter than the passage): ``"original"`` keeps the
    passage, ``"empty"`` empties it.
    """

    adapter: str | None = None
    max_new_tokens: int = 128
    ratio: float | None = None
    min_chars: int = 200
    max_input_tokens: int = 1024
    fallback: Literal["original", "empty"] = "original"

    @field_validator("max_new_tokens", "max_input_tokens")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v <= 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v}")
        return v

    @field_validator("min_chars")
    @classmethod
    def _min_chars(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"min_chars must be >= 0, got {v}")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: float | None) -> float | None:
        if v is not None and not (0.0 < v <= 1.0):
            raise ValueError(f"ratio must be in (0, 1], got {v}")
        return v

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("adapter must be a path to a PEFT adapter dir or null, got ''")
        return v

    @model_validator(mode="after")
    def _adapter_backend(self) -> "ColorParams":
        if self.adapter is not None and self.llm.backend != "hf":
            raise ValueError(f"adapter needs backend 'hf' (it is merged into the torch model), got {self.llm.backend!r}")
        return self


@register
class ColorCompressor(Stage):
    """Replace each passage's text with its CoLoR compression (ids and offsets kept)."""

    key: ClassVar[str] = "compressor.color"
    Params: ClassVar[type[Params]] = ColorParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.backend: "Backend | None" = None

    def setup(self, ctx: RunContext) -> None:
        """Load the backend (with the adapter merged into a private copy of the model). Raises on a bad adapter."""
        p = self.params
        backend = load_backend(p.llm, ctx)
        if p.adapter is not None:
            model_dir = None
            try:
                model_dir = ctx.models.resolve(p.model)
            except (FileNotFoundError, KeyError, ValueError):
                model_dir = None
            check_adapter_base(Path(p.adapter), p.model, model_dir)
            from ..llm.hf import HFBackend

            backend = HFBackend.from_loaded(p.llm, _with_adapter(backend.model, Path(p.adapter)), backend.tokenizer)
        self.backend = backend

    def _truncate(self, text: str, budget: int) -> str:
        return truncate_tokens(text, budget, self.backend.encode, self.backend.decode)

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Compress every passage of every state in the batch; one generation batch over all of them."""
        if self.backend is None:
            raise RuntimeError("compressor.color: call setup(ctx) before using the stage")
        p = self.params
        count = self.backend.count_tokens
        # Work on copies: callers may keep the input states.
        batch = [st.model_copy(deep=True) for st in batch]
        with timed(batch, self.key):
            jobs: list[tuple[int, int, str, int]] = []  # (state, passage, text, budget)
            tok_in: dict[tuple[int, int], int] = {}
            for si, st in enumerate(batch):
                for pi, ps in enumerate(st.passages):
                    n_in = count(ps.text)
                    tok_in[(si, pi)] = n_in
                    if len(ps.text) < p.min_chars:
                        continue
                    budget = p.max_new_tokens
                    if p.ratio is not None:
                        budget = min(budget, max(1, math.ceil(p.ratio * n_in)))
                    jobs.append((si, pi, ps.text, budget))
            sums = summarize(self.backend, [j[2] for j in jobs], max_new_tokens=[j[3] for j in jobs],
                             max_input_tokens=p.max_input_tokens)
            done = {(j[0], j[1]): (j, s) for j, s in zip(jobs, sums)}
            out = []
            for si, st in enumerate(batch):
                rec = {"tokens_in": 0, "tokens_out": 0, "passages": len(st.passages), "compressed": 0,
                       "skipped": 0, "fallbacks": 0, "original_chars": {}, "budgets": {}}
                calls = prompt_tokens = new_tokens = 0
                error = None
                for pi, ps in enumerate(st.passages):
                    n_in = tok_in[(si, pi)]
                    rec["tokens_in"] += n_in
                    rec["original_chars"][ps.chunk.id] = len(ps.text)
                    if (si, pi) not in done:
                        rec["skipped"] += 1
                        rec["tokens_out"] += n_in
                        continue
                    job, summ = done[(si, pi)]
                    calls += 1
                    prompt_tokens += summ.prompt_tokens
                    new_tokens += summ.new_tokens
                    error = error or summ.error
                    rec["budgets"][ps.chunk.id] = job[3]
                    text = clean_summary(summ.text, ps.text)
                    if text is not None:
                        text = self._truncate(text, job[3])
                        rec["compressed"] += 1
                    else:
                        rec["fallbacks"] += 1
                        text = ps.text if p.fallback == "original" else ""
                    ps.text = text
                    rec["tokens_out"] += count(text)
                rec["ratio"] = rec["tokens_out"] / rec["tokens_in"] if rec["tokens_in"] else 1.0
                st.trace.setdefault("compression", {})[self.key] = rec
                if error is not None:
                    # A failed call must not pass for a fallback: the question fails, --resume retries it.
                    record_error(st, self.key, error, spec=p.llm)
                    calls -= 1  # record_error counted the failed call
                record(st, self.key, spec=p.llm, calls=calls, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
                out.append(st)
        return out


def _with_adapter(model: "torch.nn.Module", adapter_dir: Path) -> "torch.nn.Module":
    # The hub caches one model per name and the reader may share it; LoRA layers are injected
    # in place, so the adapter goes onto a private copy, merged for plain-speed inference.
    try:
        from peft import PeftModel
    except ImportError as e:  # pragma: no cover - peft is in the test/train extras
        raise ImportError("compressor.color with an adapter needs peft: pip install 'longread[train]'") from e
    base = copy.deepcopy(model)
    try:
        from ..peft_compat import quiet_peft

        with quiet_peft():
            peft_model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"adapter {str(adapter_dir)!r} does not fit the compressor model: {e}") from e
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged
