"""Test fakes for longread and for users' own tests.

Tiny random models built in-process (no downloads), deterministic for a fixed seed and
saved in Hugging Face format, so they load through exactly the same code paths as real
models (``ModelHub.resolve`` treats them as local directories):

- :func:`tiny_causal_lm_dir` — a 2-layer Qwen2-architecture causal LM (rotary positions,
  grouped-query attention) with a byte-level BPE tokenizer trained on embedded text,
  ChatML special tokens and a ChatML chat template.
- :func:`tiny_encoder_dir` — a 2-layer BERT with a WordPiece tokenizer and a
  sentence-transformers style mean-pooling config.

Their outputs are meaningless; they exist to exercise mechanics (padding, truncation,
batching, caching, persistence) quickly. Each builds in well under two seconds.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

__all__ = ["TINY_TEXT", "CHATML_TEMPLATE", "tiny_causal_lm_dir", "tiny_encoder_dir"]

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
    whenever another request waits, which concurrent clients always cause.
    """

    def __init__(self, model: str | Path, *, port: int | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, api_key: str | None = None, log_dir: str | Path | None = None,
                 startup_timeout_s: float = 120.0) -> None:
        self.model = Path(model)
        if not self.model.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.model}")
        self.port = port or free_port()
        self.n_ctx, self.n_threads, self.api_key = n_ctx, n_threads, api_key
        self.startup_timeout_s = startup_timeout_s
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
               "--n_threads", str(self.n_threads or default_threads()), "--verbose", "False",
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
