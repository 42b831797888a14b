"""Test fakes for longread and for users' own tests.

Tiny random models built in-process (no downloads), deterministic for a fixed seed and
saved in Hugging Face format, so they load through exactly the same code paths as real
models (``ModelHub.resolve`` treats them as local directories):

- :func:`tiny_causal_lm_dir` — a 2-layer Qwen2-architecture causal LM (rotary positions,
  grouped-query attention) with a byte-level BPE tokenizer trained on embedded text,
  ChatML special tokens and a ChatML chat template.
- :func:`tiny_encoder_dir` — a 2-layer BERT with a WordPiece tokenizer and a
  sentence-transformers style mean-pooling config.
- :class:`ScriptedBackend` — a generation backend that replies from a script, for testing what a
  stage does with known model outputs (a random tiny LM only writes byte soup).

Their outputs are meaningless; they exist to exercise mechanics (padding, truncation,
batching, caching, persistence) quickly. Each builds in well under two seconds.

:func:`write_pdf` writes a PDF with known text on known pages (or an image-only "scanned"
page, or a password) for loader tests; it needs ``fpdf2`` (the ``test`` extra).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from .llm.base import Backend
from .llm.spec import LLMSpec
from .llm.types import GenRequest, Generation

__all__ = ["TINY_TEXT", "CHATML_TEMPLATE", "tiny_causal_lm_dir", "tiny_encoder_dir", "ScriptedBackend", "write_pdf"]

# Training text for the tiny tokenizers: varied words, digits and punctuation so that any
# test string tokenizes into a sensible number of pieces (byte-level BPE covers the rest).
TINY_TEXT = """\
The capital of Freedonia is Zorbatown. It was founded in 1742 by traders who crossed the river.
Paris is the capital of France; Berlin is the capital of Germany, and Rome is the capital of Italy.
In 1969, Apollo 11 landed on the Moon. Neil Armstrong and Buzz Aldrin walked on the surface
for 2 hours and 31 minutes, while Michael Collins stayed in orbit around the Moon.
Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level. Ice melts at 0 degrees.
Question: Who wrote the essay? Answer: Paul Graham wrote it in 2005, about startups and founders.
A passage is a short piece of text; a document is a longer one. Retrieval finds passages that
answer a question, and a reader model writes the answer from them. The quick brown fox jumps
over the lazy dog! How many legs does a spider have? Eight. What is 2 + 2? It is 4.
The river Nile is about 6,650 km long, the longest in Africa. Mount Everest is 8,849 m high.
Scientists study cells, genes, proteins and diseases: cancer, diabetes, asthma, and influenza.
Patients in the trial (n = 120) received 50 mg daily; results were significant (p < 0.05).
Mary went to the kitchen. John picked up the football. Sandra travelled to the garden.
Where is the football? The football is in the garden. Daniel moved to the bathroom.
Shakespeare wrote Hamlet, Macbeth and Othello. Beethoven composed nine symphonies.
The year 2024 had 366 days; 1900 was not a leap year, but 2000 was. Numbers: 0 1 2 3 4 5 6 7 8 9.
Email: someone@example.com, website: https://example.org/page?id=42 & more - "quoted" 'text'.
Answer the question using the passages. Give a short answer. If unsure, say unknown.
System: You are a helpful assistant. User: What is the answer? Assistant: The answer is yes.
Companies, markets, prices, and growth: revenue rose 12% to $3.4 billion in the third quarter.
"""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""A ChatML chat template, the format Qwen2.5 and SmolLM2 use."""

_LM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _corpus(repeat: int = 3) -> list[str]:
    lines = [ln for ln in TINY_TEXT.splitlines() if ln.strip()]
    return lines * repeat


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for model init without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_causal_lm_dir(path: str | Path, *, seed: int = 0, vocab_size: int = 600) -> Path:
    """Build a tiny random Qwen2 causal LM + byte-level BPE tokenizer and save it at ``path``.

    Takes the target directory (created if missing), a seed for the weights and the BPE
    vocabulary size. Returns ``path`` as a ``Path`` holding ``config.json``,
    ``model.safetensors``, ``generation_config.json`` and tokenizer files; the tokenizer has
    ``<|im_start|>``/``<|im_end|>``/``<|endoftext|>`` special tokens, a ChatML
    ``chat_template``, ``eos_token=<|im_end|>`` and ``pad_token=<|endoftext|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_LM_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=2048,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    hf_tok.padding_side = "left"

    eos_id = hf_tok.convert_tokens_to_ids("<|im_end|>")
    pad_id = hf_tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        # Larger than the usual 0.02 so logits are peaked: greedy decoding then has clear
        # winners and batched-vs-single comparisons are not decided by float noise.
        initializer_range=0.2,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )
    with _seeded(seed):
        model = Qwen2ForCausalLM(config)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, bos_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def tiny_encoder_dir(path: str | Path, *, seed: int = 0, vocab_size: int = 500) -> Path:
    """Build a tiny random BERT encoder + WordPiece tokenizer and save it at ``path``.

    Takes the target directory (created if missing), a seed and the vocabulary size.
    Returns ``path`` holding ``config.json`` (``model_type="bert"``, hidden size 32, 2 layers),
    ``model.safetensors``, tokenizer files (``[CLS] ... [SEP]`` post-processing) and a
    sentence-transformers style ``1_Pooling/config.json`` asking for mean pooling.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=_BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )

    config = BertConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=hf_tok.pad_token_id,
        torch_dtype="float32",
    )
    with _seeded(seed):
        model = BertModel(config)
    model.eval()
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    pool = path / "1_Pooling"
    pool.mkdir(exist_ok=True)
    (pool / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            indent=2,
        )
        + "\n"
    )
    return path


def _unicode_font() -> Path | None:
    """A DejaVu Sans TTF if one is installed (matplotlib ships one), for non-Latin-1 text."""
    candidates = [Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    try:
        import matplotlib

        candidates.append(Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    except ImportError:
        pass
    return next((p for p in candidates if p.is_file()), None)


def write_pdf(
    path: str | Path,
    pages: list[str | None],
    *,
    title: str | None = None,
    user_password: str | None = None,
    font_size: float = 11,
) -> Path:
    """Write a PDF with one page per item of ``pages`` and return its path.

    A string becomes that page's text (``\\n`` starts a new line; long lines wrap); ``None``
    makes an image-only page with no text layer, like a scan. ``title`` goes into the PDF
    metadata; ``user_password`` encrypts the file (RC4-128, which fpdf2 writes without the optional
    ``cryptography`` package) so it cannot be opened without it.
    Text outside Latin-1 needs a DejaVu Sans font (system or matplotlib's); raises
    ``ValueError`` when there is none. Needs ``fpdf2`` (``pip install fpdf2``).
    """
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    font = _unicode_font()
    needs_unicode = any(t is not None and any(ord(c) > 255 for c in t) for t in pages)
    if font is not None:
        pdf.add_font("DejaVu", fname=str(font))
        family = "DejaVu"
    elif needs_unicode:
        raise ValueError("text outside Latin-1 needs DejaVuSans.ttf (install matplotlib or fonts-dejavu)")
    else:
        family = "Helvetica"
    if title is not None:
        pdf.set_title(title)
    pdf.set_creator("longread.testing")
    for text in pages:
        pdf.add_page()
        if text is None:
            _draw_scan(pdf)
            continue
        pdf.set_font(family, size=font_size)
        pdf.set_xy(15, 15)
        pdf.multi_cell(w=180, h=font_size * 0.5, text=text)
    if user_password is not None:
        from fpdf.enums import EncryptionMethod

        pdf.set_encryption(owner_password=user_password + "-owner", user_password=user_password,
                           encryption_method=EncryptionMethod.RC4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path


def _draw_scan(pdf) -> None:
    """An image of grey "text lines" and no text objects: what a scanner without OCR produces."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("L", (600, 800), 255)
    draw = ImageDraw.Draw(img)
    for y in range(60, 740, 24):
        draw.rectangle([50, y, 550 - (y * 7) % 200, y + 10], fill=90)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    pdf.image(buf, x=10, y=10, w=190)


class ScriptedBackend(Backend):
    """A backend whose reply to a request is ``replies[key]`` for the first ``key`` found in the
    rendered prompt (else ``default``), cut at the request's stop strings and ``max_new_tokens``.

    Tokens come from ``tokenizer`` (a Hugging Face tokenizer: its chat template renders messages,
    counts match a real model's) or, without one, one token per character. ``prompts`` records
    every rendered prompt it was sent, in order. It has no logits and no KV access.
    """

    name = "scripted"

    def __init__(
        self,
        replies: dict[str, str] | None = None,
        default: str = "",
        *,
        tokenizer: Any = None,
        window: int = 4096,
        spec: LLMSpec | None = None,
    ) -> None:
        super().__init__(spec or LLMSpec(model="scripted"), None)
        self.replies = dict(replies or {})
        self.default = default
        self.tokenizer = tokenizer
        self._window = window
        self.prompts: list[str] = []

    @property
    def capabilities(self) -> frozenset[str]:
        """None: text only."""
        return frozenset()

    def render(self, messages: list[dict[str, str]]) -> str:
        """The tokenizer's chat template, or the contents joined by blank lines."""
        from .llm.hf import render_chat

        if self.tokenizer is not None:
            return render_chat(self.tokenizer, messages)
        return "\n\n".join(m["content"] for m in messages)

    def encode(self, text: str) -> list[int]:
        """Token ids (the tokenizer's, no special tokens; else code points)."""
        if self.tokenizer is not None:
            return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        if self.tokenizer is not None:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return "".join(chr(i) for i in ids)

    @property
    def window(self) -> int:
        """The ``window`` given (default 4096)."""
        return self._window

    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """The scripted reply of each request."""
        out = []
        for r in requests:
            prompt = r.prompt if r.prompt is not None else self.render(r.messages or [])
            self.prompts.append(prompt)
            reply = next((v for k, v in self.replies.items() if k in prompt), self.default)
            reason = "stop"
            cut = min((reply.find(s) for s in r.stop if s in reply), default=-1)
            if cut >= 0:
                reply = reply[:cut]
            ids = self.encode(reply)
            if len(ids) > r.max_new_tokens:
                ids, reason = ids[: r.max_new_tokens], "length"
            out.append(Generation(text=self.decode(ids), finish_reason=reason, prompt_tokens=len(self.encode(prompt)),  # type: ignore[arg-type]
                                  new_tokens=len(ids) + (reason == "stop"), ttft_s=0.0, seconds=0.0, token_ids=ids))
        return out


# --- a real llama.cpp server for tests -------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """A real OpenAI-compatible llama.cpp server (``python -m llama_cpp.server``, from the
    ``llamacpp`` extra) on 127.0.0.1, for tests of the ``openai`` backend and of users' own code.

    ``model``: a GGUF file (e.g. ``longread.models.packs.gguf_path("smollm2-135m-instruct")``).
    ``port``: default a free one, kept across :meth:`kill` / :meth:`start` so a test can restart
    the server where clients expect it. ``api_key``: the key the server demands as
    ``Authorization: Bearer``. The server's log goes to ``log_dir/llama-server.log`` (default: a
    temp dir) and its tail is in the error when it fails to start.

    Use as a context manager (started on entry, stopped on exit)::

        with LlamaServer(gguf) as server:
            spec = LLMSpec(backend="openai", model="smollm2", base_url=server.base_url)

    ``interrupt_requests`` is off: llama-cpp-python otherwise cuts a streaming answer short
    whenever another request waits, which concurrent clients always cause. ``verbose`` makes the
    server log llama.cpp's timings per request (:meth:`engine_seconds` sums them).
    """

    def __init__(self, model: str | Path, *, port: int | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, api_key: str | None = None, log_dir: str | Path | None = None,
                 startup_timeout_s: float = 120.0, verbose: bool = False) -> None:
        self.model = Path(model)
        if not self.model.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.model}")
        self.port = port or free_port()
        self.n_ctx, self.n_threads, self.api_key = n_ctx, n_threads, api_key
        self.startup_timeout_s, self.verbose = startup_timeout_s, verbose
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._tmp = None
        self.proc = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what ``llm.base_url`` takes."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        if self._log_dir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="llama-server-")
            self._log_dir = Path(self._tmp.name)
        return self._log_dir / "llama-server.log"

    def start(self) -> "LlamaServer":
        """Start the server and wait until it answers ``GET /v1/models``; returns ``self``.

        Raises ``RuntimeError`` (with the log's tail) when it exits or does not answer in time.
        """
        import subprocess
        import sys
        import time
        import urllib.error
        import urllib.request

        from .llm.llamacpp import default_threads, import_llama_cpp

        import_llama_cpp()  # a clear error naming the extra, before a subprocess fails obscurely
        if self.proc is not None and self.proc.poll() is None:
            return self
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(self.n_threads or default_threads()), "--verbose", str(self.verbose),
               "--interrupt_requests", "False"]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with code {self.proc.returncode} on start; "
                                   f"log {self.log_path}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers (401 without the key)
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama.cpp server did not answer within {self.startup_timeout_s:g}s; "
                           f"log {self.log_path}:\n{self._log_tail()}")

    def engine_seconds(self, since: int = 0) -> tuple[float, int]:
        """Seconds llama.cpp itself spent on requests (its ``total time`` lines in the log, which a
        ``verbose`` server prints per request) after byte ``since`` of the log, and how many."""
        import re

        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace")
        ms = [float(m) for m in re.findall(r"llama_perf_context_print:\s+total time =\s+([\d.]+) ms", text)]
        return sum(ms) / 1000.0, len(ms)

    def log_size(self) -> int:
        """Bytes in the log so far (a mark for :meth:`engine_seconds`)."""
        return self.log_path.stat().st_size if self.log_path.is_file() else 0

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; :meth:`start` brings it back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


__all__ += ["free_port", "LlamaServer"]
