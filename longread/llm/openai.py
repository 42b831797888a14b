"""The ``openai`` backend: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, TGI, hosted APIs).

Chat requests go to ``{base_url}/chat/completions`` (the server applies the model's chat template),
prompt requests to ``{base_url}/completions``. Every request streams (``stream: true``), so the time
to the first token is measured, and asks for usage in the last chunk
(``stream_options.include_usage``); a server that sends no usage gets its tokens counted here.

- **Concurrency**: up to ``llm.concurrency`` requests in flight (a thread pool over one HTTP client).
- **Timeouts**: ``llm.timeout_s`` bounds each attempt, from sending it to its last token.
- **Retries**: 429, 5xx, dropped connections and streams cut short are retried up to
  ``llm.max_retries`` times, with exponential backoff and jitter, waiting what ``Retry-After`` asks
  (at most :data:`MAX_RETRY_AFTER_S`). A request that still fails, or times out, comes back as
  ``Generation.failed`` naming the URL: its question gets the error, the batch goes on.
- **Whole-backend failures raise**: a server that cannot be reached when the backend opens
  (:class:`ServerUnreachableError`, naming the URL), a refused API key (401/403) or a wrong URL or
  model (404).
- **The key** is read from the environment variable ``llm.api_key_env`` names, when each request is
  sent, and sent as ``Authorization: Bearer``; it is never stored on the backend, logged, or put in
  an error (server error text is scrubbed of it).
- **Token counts** for context budgets use ``llm.tokenizer``, else ``llm.model`` when that is a pack,
  a local tokenizer directory or a ``.gguf`` file (only the tokenizer is loaded; a pack whose HF
  directory is not prepared reads it from its GGUF), else an estimate: runs of up to 4 letters or
  digits and single punctuation marks count one token each, which over-counts BPE tokenizers by
  about 10-30% on English, so budgets err on the safe side.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .base import Backend
from .errors import ServerUnreachableError
from .spec import LLMSpec
from .types import GenRequest, Generation

if TYPE_CHECKING:  # pragma: no cover
    from ..stage import RunContext

__all__ = ["OpenAIBackend", "EstimateTokenizer", "parse_retry_after", "MAX_RETRY_AFTER_S"]

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 120.0
"""Longest ``Retry-After`` honoured; a server asking for more waits this long."""

DEFAULT_WINDOW = 8192
"""Context window assumed when neither the server nor the tokenizer says."""

_RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Failed(Exception):
    """This request failed for good (not retried)."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number or an HTTP date), capped at
    :data:`MAX_RETRY_AFTER_S`; ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class EstimateTokenizer:
    """Token estimate for servers whose tokenizer is not available here.

    A "token" is a run of up to 4 letters/digits or one other character, with the whitespace
    before it. ``decode(encode(text)) == text``; ids index pieces seen by this instance.
    """

    _PIECE = re.compile(r"\s*\w{1,4}|\s*[^\w\s]|\s+")

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """Pseudo-ids of ``text``'s pieces."""
        out = []
        with self._lock:
            for piece in self._PIECE.findall(text):
                i = self._ids.get(piece)
                if i is None:
                    i = self._ids[piece] = len(self._pieces)
                    self._pieces.append(piece)
                out.append(i)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """The text of pseudo-ids from :meth:`encode`."""
        return "".join(self._pieces[i] for i in ids)


def _local_tokenizer(spec: LLMSpec, cache_dir: Path | None) -> Any:
    """A transformers tokenizer for ``spec.tokenizer`` / ``spec.model``, or ``None`` (estimate)."""
    from ..models import packs

    name = spec.tokenizer or spec.model
    explicit = spec.tokenizer is not None
    pack = packs.PACKS.get(name)
    path = Path(name).expanduser()
    try:
        from transformers import AutoTokenizer

        if pack is not None and pack.kind == "causal_lm":
            status = packs.pack_status(pack, cache_dir)
            if status.prepared:
                return AutoTokenizer.from_pretrained(status.path)
            gguf = packs.gguf_path(pack, cache_dir, progress=False)
            return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if path.suffix.lower() == ".gguf" and path.is_file():
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        if path.is_dir():
            return AutoTokenizer.from_pretrained(path)
        if explicit or "/" in name:
            # A Hugging Face id: only a tokenizer already in the local HF cache, never a download,
            # unless the user named it explicitly as llm.tokenizer.
            return AutoTokenizer.from_pretrained(name, local_files_only=not explicit)
    except (OSError, ValueError) as e:
        if explicit:
            raise ValueError(f"llm.tokenizer {name!r} cannot be loaded ({e}); give a pack name, a local "
                             f"tokenizer directory, a .gguf file or a Hugging Face id") from None
    return None


class OpenAIBackend(Backend):
    """An OpenAI-compatible server at ``spec.base_url`` (see the module docstring).

    Construction checks that the server answers (``GET {base_url}/models``). Raises
    :class:`ServerUnreachableError` when it does not, ``ValueError`` when the key variable is unset
    or the key is refused, and ``ValueError`` for an ``llm.tokenizer`` that cannot be loaded.
    """

    name = "openai"

    def __init__(self, spec: LLMSpec, ctx: "RunContext | None" = None) -> None:
        super().__init__(spec, ctx)
        import httpx

        self._httpx = httpx
        self.base_url = str(spec.base_url)
        self.seed = int(getattr(ctx, "seed", 0) or 0)
        self._rng = random.Random()
        self._stream_options = True  # dropped for servers that refuse the field
        self._client = httpx.Client(
            timeout=httpx.Timeout(spec.timeout_s, connect=min(spec.timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency),
        )
        server_window = self._probe()  # before the tokenizer loads: an unreachable server fails at once
        cache_dir = getattr(getattr(ctx, "models", None), "cache_dir", None)
        self.tokenizer = _local_tokenizer(spec, cache_dir)
        self._estimate = EstimateTokenizer() if self.tokenizer is None else None
        self._window = server_window or self._tokenizer_window() or DEFAULT_WINDOW

    def __repr__(self) -> str:
        return (f"OpenAIBackend(base_url={self.base_url!r}, model={self.spec.model!r}, "
                f"concurrency={self.spec.concurrency}, api_key_env={self.spec.api_key_env!r})")

    # -- the key -----------------------------------------------------------------------------------
    def _key(self) -> str | None:
        name = self.spec.api_key_env
        if name is None:
            return None
        key = os.environ.get(name, "")
        if not key:
            raise ValueError(f"llm.api_key_env names {name}, but that environment variable is not set (or empty); "
                             f"export {name}=... before the run")
        return key

    def _headers(self) -> dict[str, str]:
        key = self._key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _scrub(self, text: str) -> str:
        name = self.spec.api_key_env
        key = os.environ.get(name, "") if name else ""
        return text.replace(key, "***") if key else text

    def _probe(self) -> int | None:
        """Check the server answers; its context window when ``/models`` reports one."""
        url = f"{self.base_url}/models"
        try:
            r = self._client.get(url, headers=self._headers())
        except self._httpx.ReadTimeout:
            raise ServerUnreachableError(
                f"the OpenAI-compatible server at {self.base_url} took the connection but did not answer "
                f"GET {url} within llm.timeout_s={self.spec.timeout_s:g}s"
            ) from None
        except self._httpx.TransportError as e:
            raise ServerUnreachableError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({type(e).__name__}: "
                f"{self._scrub(str(e)) or 'no answer'}); start it (for a GGUF file: python -m llama_cpp.server "
                f"--model FILE.gguf --port 8080) or fix llm.base_url"
            ) from None
        if r.status_code in (401, 403):
            raise ValueError(self._auth_error(r.status_code))
        window = None
        if r.status_code == 200:
            try:
                for m in r.json().get("data", []):
                    if m.get("id") == self.spec.model and m.get("max_model_len"):  # vLLM reports it
                        window = int(m["max_model_len"])
            except (ValueError, AttributeError, TypeError):
                pass
        return window

    def _tokenizer_window(self) -> int | None:
        n = int(getattr(self.tokenizer, "model_max_length", 0) or 0) if self.tokenizer is not None else 0
        return n if 0 < n < 10_000_000 else None  # "no limit" is stored as a huge number

    def _auth_error(self, status: int) -> str:
        how = (f"the key in ${self.spec.api_key_env}" if self.spec.api_key_env
               else "no key (set llm.api_key_env to the NAME of the variable holding it)")
        return f"the server at {self.base_url} refused the request (HTTP {status}) with {how}"

    # -- tokens ----------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt as the local tokenizer's chat template renders it (the server renders its own;
        this text is for counting). Without a template: contents joined by blank lines."""
        tok = self.tokenizer
        if tok is not None and getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages)

    def encode(self, text: str) -> list[int]:
        """Token ids (an estimate without a local tokenizer: see :class:`EstimateTokenizer`)."""
        if self.tokenizer is None:
            return self._estimate.encode(text)  # type: ignore[union-attr]
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids from :meth:`encode`."""
        if self.tokenizer is None:
            return self._estimate.decode(ids)  # type: ignore[union-attr]
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def window(self) -> int:
        """The server's window when ``/models`` reports it (vLLM), else the tokenizer's, else 8192."""
        return self._window

    # -- generation ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Up to ``concurrency`` requests in flight; results in request order. A request that fails
        after its retries comes back with ``finish_reason="error"``; a refused key or a 404 raises."""
        if not requests:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.spec.concurrency, len(requests)),
                                  thread_name_prefix="longread-openai")
        try:
            futures = [pool.submit(self._one, r, i) for i, r in enumerate(requests)]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _body(self, req: GenRequest, index: int) -> tuple[str, dict[str, Any]]:
        chat = req.messages is not None
        body: dict[str, Any] = {"model": self.spec.model, "max_tokens": req.max_new_tokens,
                                "temperature": req.temperature, "stream": True}
        if chat:
            body["messages"] = req.messages
        else:
            body["prompt"] = req.prompt
        if req.top_p < 1:
            body["top_p"] = req.top_p
        if not req.greedy:
            body["seed"] = req.seed if req.seed is not None else self.seed + index
        if req.stop:
            body["stop"] = list(req.stop[:4])  # the OpenAI API takes at most 4; the rest are cut here
        return f"{self.base_url}/{'chat/completions' if chat else 'completions'}", body

    def _one(self, req: GenRequest, index: int) -> Generation:
        url, body = self._body(req, index)
        t0 = time.perf_counter()
        attempt = 0
        while True:
            try:
                text, finish, usage, ttft = self._stream(url, body, req, t0)
                break
            except _Failed as e:
                return Generation.failed(f"POST {url}: {e}", time.perf_counter() - t0)
            except _Retryable as e:
                if attempt >= self.spec.max_retries:
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    return Generation.failed(f"POST {url}: {e} (gave up after {tries})", time.perf_counter() - t0)
                delay = e.retry_after if e.retry_after is not None else min(30.0, 0.5 * 2 ** attempt)
                delay *= 1 + 0.25 * self._rng.random()  # jitter: retries of a batch do not arrive together
                log.info("retrying %s in %.1fs (%s)", url, delay, e)
                time.sleep(delay)
                attempt += 1
        hit = min((text.find(s) for s in req.stop if s in text), default=-1)
        if hit >= 0:
            text, finish = text[:hit], "stop"
        prompt_tokens = usage.get("prompt_tokens") if usage else None
        new_tokens = usage.get("completion_tokens") if usage else None
        seconds = time.perf_counter() - t0
        return Generation(
            text=text, finish_reason="length" if finish == "length" else "stop",
            prompt_tokens=int(prompt_tokens) if prompt_tokens is not None else self.prompt_tokens(req),
            new_tokens=int(new_tokens) if new_tokens is not None else self.count_tokens(text),
            ttft_s=ttft if ttft is not None else seconds, seconds=seconds,
        )

    def _stream(self, url: str, body: dict[str, Any], req: GenRequest,
                t0: float) -> tuple[str, str | None, dict | None, float | None]:
        httpx = self._httpx
        sent = {**body, "stream_options": {"include_usage": True}} if self._stream_options else body
        start = time.perf_counter()
        deadline = start + self.spec.timeout_s
        parts: list[str] = []
        finish: str | None = None
        resend = False
        usage: dict | None = None
        ttft: float | None = None
        done = False
        try:
            with self._client.stream("POST", url, json=sent, headers=self._headers()) as r:
                if r.status_code != 200:
                    self._status_error(r, url)
                    resend = True  # the server refused stream_options: the same request again without it
                for line in ([] if resend else r.iter_lines()):
                    if time.perf_counter() > deadline:
                        raise _Failed(self._timeout_message())
                    if not line.startswith("data:"):
                        continue  # SSE comments and pings
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise _Retryable(f"the server reported an error mid-answer: "
                                         f"{self._scrub(json.dumps(chunk['error'])[:300])}")
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                        if piece:
                            if ttft is None:
                                ttft = time.perf_counter() - t0
                            parts.append(piece)
                        finish = choice.get("finish_reason") or finish
                    if req.stop and len(req.stop) > 4 and any(s in "".join(parts) for s in req.stop[4:]):
                        finish, done = "stop", True  # a stop string the server was not told about
                        break
        except httpx.TimeoutException as e:
            if isinstance(e, (httpx.ConnectTimeout, httpx.PoolTimeout)):
                raise _Retryable(f"connecting timed out ({type(e).__name__})") from None
            raise _Failed(self._timeout_message()) from None
        except httpx.TransportError as e:
            raise _Retryable(f"connection failed ({type(e).__name__}: {self._scrub(str(e)) or 'closed'})") from None
        except json.JSONDecodeError as e:
            raise _Retryable(f"unreadable stream chunk ({e})") from None
        if resend:
            return self._stream(url, body, req, t0)
        if finish is None and not (done and usage):
            # llama.cpp's Python server, for one, ends a stream it interrupts with [DONE] and no reason.
            raise _Retryable("the stream ended before the answer finished")
        return "".join(parts), finish, usage, ttft

    def _timeout_message(self) -> str:
        return (f"no complete answer within llm.timeout_s={self.spec.timeout_s:g}s; the server is slower than "
                f"that: raise timeout_s, or lower max_new_tokens or concurrency")

    def _status_error(self, r: Any, url: str) -> None:
        """Raise what a non-200 answer means; returns only when the request should be resent as is."""
        r.read()
        detail = self._scrub(r.text.strip().replace("\n", " ")[:300])
        status = r.status_code
        if status in (400, 422) and self._stream_options and "stream_options" in r.text:
            self._stream_options = False
            return
        if status in (401, 403):
            raise ValueError(self._auth_error(status))
        if status == 404:
            raise ValueError(f"POST {url} answered 404 ({detail}); check llm.base_url (most servers want it to end "
                             f"in /v1) and that the server serves model {self.spec.model!r}")
        if status in _RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status} {detail}".strip(), parse_retry_after(r.headers.get("retry-after")))
        raise _Failed(f"the server refused the request (HTTP {status}: {detail})")

    def close(self) -> None:
        """Close the HTTP connections (the server keeps running)."""
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
