"""The llamacpp, openai and vllm backends, against real components.

The openai backend talks to a real llama.cpp server (``llama_server`` fixture: llama-cpp-python's
server on 127.0.0.1 serving the SmolLM2 pack's GGUF). Faults are injected by a small HTTP proxy on
127.0.0.1 in front of that server (429 once, delays, a kill of the server behind it, an error page
echoing the request's headers); the backend itself is never patched. The llamacpp backend runs the
same GGUF in-process. vLLM cannot run here (no GPU): its import error and its request mapping are
tested.

Tests that start a server or load a real model are ``slow`` (``pytest --runslow``, as CI runs).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from longread.llm import GenRequest, LLMSpec
from longread.llm.errors import BackendUnavailableError, ServerUnreachableError
from longread.models import packs
from longread.testing import LlamaServer, free_port

SMOLLM2 = "smollm2-135m-instruct"


# Made-up capitals (no model knows them). SmolLM2-135M answers each of these pairs correctly when
# greedy; some other pairings of the same names it gets wrong, so tests use these as they are.
PLACES = [("Quibbleton", "Kestland"), ("Fennick", "Ombria"), ("Oskarby", "Tarsin"), ("Tellurine", "Lumeria"),
          ("Brambleford", "Drovia"), ("Dunmore", "Essara"), ("Halvik", "Norwend"), ("Corvenna", "Quessa")]


def planted(i: int = 0) -> list[dict[str, str]]:
    """A question whose answer (``PLACES[i][0]``) is a made-up fact given in the passage."""
    city, land = PLACES[i]
    return [{"role": "user", "content": (
        "Answer the question using the passages below. Reply with only the answer, as a short phrase.\n\n"
        f"[1] The capital of {land} is {city}, a city of glass towers.\n\n"
        f"Question: What is the capital of {land}?\nAnswer:")}]


# --- a fault-injecting proxy in front of the real server -----------------------------------------


class Proxy:
    """HTTP proxy on 127.0.0.1 forwarding to ``upstream`` (host, port), streaming answers through.

    ``before(n, handler, body)`` runs for the n-th POST (1-based) before it is forwarded and may
    answer itself (return True). ``first_byte_delay`` / ``line_delay`` slow the POST answers down. Records the
    headers of every POST and the most POSTs in flight at once. When the upstream is down, the
    client's connection is dropped without an answer, as a dead server's would be.
    """

    def __init__(self, upstream_port: int, *, before: Callable[[int, BaseHTTPRequestHandler, bytes], bool] | None = None,
                 first_byte_delay: float = 0.0, line_delay: float = 0.0) -> None:
        self.upstream_port, self.before = upstream_port, before
        self.first_byte_delay, self.line_delay = first_byte_delay, line_delay
        self.posts = 0
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy._forward(self, None, slow=False)  # /models: the backend's start-up check

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    proxy.posts += 1
                    n = proxy.posts
                    proxy.headers.append(dict(self.headers))
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                self.counted = True
                try:
                    if proxy.before is None or not proxy.before(n, self, body):
                        proxy._forward(self, body)
                finally:
                    proxy._done(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _done(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            if getattr(h, "counted", False):
                h.counted = False  # type: ignore[attr-defined]
                self.in_flight -= 1

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes | None, slow: bool = True) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
        except OSError:
            h.close_connection = True  # upstream dead: drop the client without an answer
            return
        try:
            time.sleep(self.first_byte_delay if slow else 0)
            h.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                    h.send_header(k, v)
            h.end_headers()
            while line := resp.readline():
                if line.startswith(b"data: [DONE]"):
                    self._done(h)  # the client's request ends here; it may send the next one at once
                h.wfile.write(line)
                h.wfile.flush()
                if slow and self.line_delay and line.strip():
                    time.sleep(self.line_delay)
        except OSError:
            pass  # the client gave up (timeouts) or the upstream died mid-answer
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer(h: BaseHTTPRequestHandler, status: int, body: dict, headers: dict[str, str] | None = None) -> bool:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
    return True


def openai_spec(base_url: str, **kw) -> LLMSpec:
    return LLMSpec(backend="openai", model=SMOLLM2, base_url=base_url, **kw)


@pytest.fixture
def proxy_factory(llama_server: LlamaServer):
    made: list[Proxy] = []

    def make(**kw) -> Proxy:
        p = Proxy(llama_server.port, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# --- openai backend against the real server ------------------------------------------------------


@pytest.mark.slow
def test_openai_answers_planted_fact_through_real_server(llama_server: LlamaServer) -> None:
    from longread.llm.openai import OpenAIBackend

    b = OpenAIBackend(openai_spec(llama_server.base_url))
    chat = GenRequest(messages=planted(), max_new_tokens=16)
    g = b.generate([chat])[0]
    assert g.error is None and g.finish_reason == "stop"
    assert "Quibbleton" in g.text
    assert g.prompt_tokens == b.prompt_tokens(chat) > 20 and g.new_tokens >= 1
    assert 0 < g.ttft_s <= g.seconds
    # /completions with the prompt rendered here: the server's template is the one we count with.
    raw = b.generate([GenRequest(prompt=b.render(planted()), max_new_tokens=16)])[0]
    assert raw.text == g.text


@pytest.mark.slow
def test_a_verbose_server_logs_llama_cpps_own_time_per_request(tmp_path: Path) -> None:
    from longread.llm.openai import OpenAIBackend

    with LlamaServer(packs.gguf_path(SMOLLM2, progress=False), n_ctx=2048, n_threads=1, log_dir=tmp_path,
                     verbose=True) as server:
        b = OpenAIBackend(openai_spec(server.base_url))
        mark = server.log_size()
        t0 = time.perf_counter()
        gens = b.generate([GenRequest(messages=planted(i), max_new_tokens=8) for i in range(2)])
        wall = time.perf_counter() - t0
        seconds, n = server.engine_seconds(mark)
    assert all(g.error is None for g in gens) and n == 2
    assert 0 < seconds < wall  # the engine's share of what the client waited


@pytest.mark.slow
def test_openai_batch_keeps_order_and_bounds_concurrency(proxy_factory) -> None:
    from longread.llm.openai import OpenAIBackend

    proxy = proxy_factory()
    b = OpenAIBackend(openai_spec(proxy.base_url, concurrency=2))
    gens = b.generate([GenRequest(messages=planted(i), max_new_tokens=16) for i in range(4)])
    assert [PLACES[i][0] in g.text for i, g in enumerate(gens)] == [True] * 4, [g.text for g in gens]
    assert proxy.max_in_flight == 2


@pytest.mark.slow
def test_openai_stop_strings_beyond_the_apis_four_are_applied(llama_server: LlamaServer) -> None:
    from longread.llm.openai import OpenAIBackend

    b = OpenAIBackend(openai_spec(llama_server.base_url))
    stops = ("@@1", "@@2", "@@3", "@@4", "bble")  # the fifth is not sent to the server
    g = b.generate([GenRequest(messages=planted(), max_new_tokens=16, stop=stops)])[0]
    assert g.finish_reason == "stop" and PLACES[0][0] not in g.text and g.text.endswith("Qui")


@contextlib.contextmanager
def server_killed_at_third_request(log_dir: Path) -> Iterator[tuple[LlamaServer, Proxy]]:
    """A real server behind a proxy that kills it when the third POST arrives (``server.start()``
    brings it back on the same port); both stopped on exit."""
    server = LlamaServer(packs.gguf_path(SMOLLM2, progress=False), n_ctx=2048, n_threads=1, log_dir=log_dir).start()
    proxy = None
    try:
        def kill_at_third(n: int, h: BaseHTTPRequestHandler, body: bytes) -> bool:
            if n == 3:
                server.kill()
            return False

        proxy = Proxy(server.port, before=kill_at_third)
        yield server, proxy
    finally:
        if proxy is not None:
            proxy.close()
        server.stop()


@pytest.mark.slow
def test_openai_server_killed_mid_batch_fails_only_those_and_answers_after_restart(tmp_path: Path) -> None:
    from longread.llm.openai import OpenAIBackend

    with server_killed_at_third_request(tmp_path) as (server, proxy):
        b = OpenAIBackend(openai_spec(proxy.base_url, concurrency=1, max_retries=1))
        direct = OpenAIBackend(openai_spec(server.base_url, max_retries=0))
        reqs = [GenRequest(messages=planted(i), max_new_tokens=16) for i in range(3)]
        first, second, third = b.generate(reqs)
        assert PLACES[0][0] in first.text and PLACES[1][0] in second.text
        assert third.finish_reason == "error" and third.text == ""
        assert proxy.base_url + "/chat/completions" in third.error and "gave up after 2 attempts" in third.error
        dead = direct.generate([reqs[0]])[0]  # straight at the dead port: connection refused
        assert dead.finish_reason == "error" and server.base_url in dead.error and "ConnectError" in dead.error
        server.start()  # same port
        again = b.generate([reqs[2]])[0]
        assert again.error is None and PLACES[2][0] in again.text


@pytest.mark.slow
def test_run_on_the_openai_backend_survives_a_killed_server_and_resume_answers_what_failed(tmp_path: Path) -> None:
    """``longread run`` through a real server killed mid-run: the questions it was answering carry
    errors, the others are kept, and ``--resume`` after a restart answers exactly the failed ones."""
    from longread.pipelines.pipeline import Pipeline
    from longread.pipelines.runner import read_predictions, run
    from longread.types import Document, Question

    with server_killed_at_third_request(tmp_path) as (server, proxy):
        docs = [Document(id=f"d{i}", text=f"The capital of {land} is {city}, a city of glass towers.")
                for i, (city, land) in enumerate(PLACES[:4])]
        qs = [Question(id=f"q{i}", question=f"What is the capital of {land}?", answers=[city])
              for i, (city, land) in enumerate(PLACES[:4])]
        llm = {"backend": "openai", "model": SMOLLM2, "base_url": proxy.base_url, "concurrency": 1, "max_retries": 0}
        pipe = Pipeline.from_config({
            "name": "openai-run",
            "chunker": {"kind": "whole"},
            "stages": [{"key": "retriever.bm25", "params": {"top_k": 1}},
                       {"key": "reader.hf", "params": {"llm": llm, "max_new_tokens": 16}, "resources": {"batch_size": 1}}],
        })
        out = tmp_path / "run"
        run(pipe, docs, qs, out, show_progress=False)
        first = {p.id: p for p in read_predictions(out / "predictions.jsonl")}
        assert [first[f"q{i}"].error is None for i in range(4)] == [True, True, False, False]
        assert proxy.base_url in (first["q2"].error or "")

        server.start()  # same port, behind the same proxy: the config is unchanged
        again = run(pipe, docs, qs, out, resume=True, show_progress=False)
        preds = read_predictions(out / "predictions.jsonl")
        assert again.n_answered_now == 2 and sorted(p.id for p in preds) == ["q0", "q1", "q2", "q3"]
        assert all(p.error is None and p.answer for p in preds)
        kept = {p.id: p.answer for p in preds if p.id in ("q0", "q1")}
        assert kept == {"q0": first["q0"].answer, "q1": first["q1"].answer}


@pytest.mark.slow
@pytest.mark.parametrize("delay", ["first_byte", "trickle"])
def test_openai_slower_than_timeout_is_a_clear_error(proxy_factory, delay: str) -> None:
    from longread.llm.openai import OpenAIBackend

    proxy = proxy_factory(**({"first_byte_delay": 3.0} if delay == "first_byte" else {"line_delay": 0.4}))
    b = OpenAIBackend(openai_spec(proxy.base_url, timeout_s=1.0))
    t0 = time.perf_counter()
    g = b.generate([GenRequest(messages=planted(), max_new_tokens=64)])[0]
    assert time.perf_counter() - t0 < 2.5
    assert g.finish_reason == "error" and "timeout_s=1s" in g.error and proxy.base_url in g.error
    assert proxy.posts == 1  # a timeout is not retried: a slow server does not get faster


@pytest.mark.slow
def test_openai_429_is_retried_after_retry_after(proxy_factory) -> None:
    from longread.llm.openai import OpenAIBackend

    def once_429(n: int, h: BaseHTTPRequestHandler, body: bytes) -> bool:
        return n == 1 and answer(h, 429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})

    proxy = proxy_factory(before=once_429)
    b = OpenAIBackend(openai_spec(proxy.base_url))
    t0 = time.perf_counter()
    g = b.generate([GenRequest(messages=planted(), max_new_tokens=16)])[0]
    assert g.error is None and "Quibbleton" in g.text
    assert proxy.posts == 2 and time.perf_counter() - t0 >= 1.0


@pytest.mark.slow
def test_openai_5xx_after_retries_fails_that_request_only(proxy_factory) -> None:
    from longread.llm.openai import OpenAIBackend

    def overloaded_for_fennick(n: int, h: BaseHTTPRequestHandler, body: bytes) -> bool:
        return b"Fennick" in body and answer(h, 503, {"error": "overloaded"}, {"Retry-After": "0"})

    proxy = proxy_factory(before=overloaded_for_fennick)
    b = OpenAIBackend(openai_spec(proxy.base_url, concurrency=2, max_retries=2))
    ok, bad = b.generate([GenRequest(messages=planted(0), max_new_tokens=16),
                          GenRequest(messages=planted(1), max_new_tokens=16)])
    assert ok.error is None and "Quibbleton" in ok.text
    assert bad.finish_reason == "error" and "HTTP 503" in bad.error and "gave up after 3 attempts" in bad.error
    assert proxy.posts == 4


@pytest.mark.slow
def test_openai_counts_tokens_with_the_packs_gguf_tokenizer_when_unprepared(llama_server, llamacpp,
                                                                            tmp_path: Path) -> None:
    from longread.llm.openai import OpenAIBackend
    from longread.models.hub import ModelHub
    from longread.stage import RunContext

    ctx = RunContext(models=ModelHub(cache_dir=tmp_path))  # an empty cache: the pack is not prepared
    b = OpenAIBackend(openai_spec(llama_server.base_url), ctx)
    text = "The capital of Kestland is Quibbleton, a city of glass towers. <|im_end|>"
    assert b.encode(text) == llamacpp.encode(text)  # transformers read the tokenizer from the GGUF
    assert b.render(planted()) == llamacpp.render(planted())
    assert b.window == 8192  # SmolLM2's model_max_length


@pytest.mark.slow
def test_openai_without_a_tokenizer_estimates_tokens(llama_server) -> None:
    from longread.llm.openai import EstimateTokenizer, OpenAIBackend

    b = OpenAIBackend(LLMSpec(backend="openai", model="whatever-the-server-serves", base_url=llama_server.base_url))
    assert b.tokenizer is None and b.window == 8192
    req = GenRequest(messages=planted(), max_new_tokens=16)
    g = b.generate([req])[0]
    assert PLACES[0][0] in g.text  # llama-cpp-python serves its one model under any name
    # That server sends no usage: the counts are the estimate's.
    est = EstimateTokenizer()
    assert g.prompt_tokens == len(est.encode("\n\n".join(m["content"] for m in planted())))
    assert g.new_tokens == len(est.encode(g.text))


def test_openai_unreachable_server_is_one_error_naming_the_url() -> None:
    from longread.llm.openai import OpenAIBackend

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerUnreachableError) as e:
        OpenAIBackend(openai_spec(url))
    assert url in str(e.value) and isinstance(e.value, ValueError)  # the CLI's one-line user error


@pytest.mark.slow
def test_openai_api_key_is_sent_as_bearer_and_never_shown(tmp_path: Path, monkeypatch, caplog) -> None:
    from longread.llm.openai import OpenAIBackend

    secret = "sk-test-" + os.urandom(8).hex()
    monkeypatch.setenv("LONGREAD_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    server = LlamaServer(packs.gguf_path(SMOLLM2, progress=False), n_ctx=2048, n_threads=1, api_key=secret,
                         log_dir=tmp_path)
    with server:
        echoes = {"on": False}

        def echo_headers(n: int, h: BaseHTTPRequestHandler, body: bytes) -> bool:
            return echoes["on"] and answer(h, 500, {"error": dict(h.headers)})

        proxy = Proxy(server.port, before=echo_headers)
        try:
            spec = openai_spec(proxy.base_url, api_key_env="LONGREAD_TEST_KEY", max_retries=0)
            b = OpenAIBackend(spec)
            g = b.generate([GenRequest(messages=planted(), max_new_tokens=16)])[0]
            assert "Quibbleton" in g.text
            assert proxy.headers[-1]["Authorization"] == f"Bearer {secret}"
            echoes["on"] = True  # a server error page that echoes the request headers
            bad = b.generate([GenRequest(messages=planted(), max_new_tokens=16)])[0]
            assert bad.finish_reason == "error" and "HTTP 500" in bad.error and "Bearer ***" in bad.error
            for text in (bad.error, repr(b), repr(spec), spec.model_dump_json(), caplog.text):
                assert secret not in text
            monkeypatch.setenv("LONGREAD_TEST_KEY", "sk-wrong-key")
            with pytest.raises(ValueError, match="LONGREAD_TEST_KEY") as e:
                OpenAIBackend(openai_spec(server.base_url, api_key_env="LONGREAD_TEST_KEY"))
            assert "sk-wrong-key" not in str(e.value) and "401" in str(e.value)
            monkeypatch.delenv("LONGREAD_TEST_KEY")
            with pytest.raises(ValueError, match="LONGREAD_TEST_KEY.*not set"):
                OpenAIBackend(openai_spec(server.base_url, api_key_env="LONGREAD_TEST_KEY"))
        finally:
            proxy.close()


# --- llamacpp backend in-process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def llamacpp():
    from longread.llm.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(LLMSpec(backend="llamacpp", model=SMOLLM2, n_ctx=2048, n_threads=1))
    yield b
    b.close()


@pytest.mark.slow
def test_llamacpp_greedy_answers_planted_fact(llamacpp) -> None:
    g = llamacpp.generate([GenRequest(messages=planted(), max_new_tokens=16)])[0]
    assert g.finish_reason == "stop" and "Quibbleton" in g.text
    assert g.new_tokens == len(g.token_ids) + 1  # the end-of-turn token counts, as in hf
    assert llamacpp.decode(g.token_ids) == g.text
    assert g.prompt_tokens == len(llamacpp.encode(llamacpp.render(planted())))
    assert 0 < g.ttft_s <= g.seconds


@pytest.mark.slow
def test_llamacpp_stop_strings_and_length(llamacpp) -> None:
    full = llamacpp.generate([GenRequest(messages=planted(), max_new_tokens=16)])[0].text
    cut = llamacpp.generate([GenRequest(messages=planted(), max_new_tokens=16, stop=("bble",))])[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index("bble")]
    short = llamacpp.generate([GenRequest(messages=planted(), max_new_tokens=2)])[0]
    assert short.finish_reason == "length" and short.new_tokens == 2 and full.startswith(short.text)


@pytest.mark.slow
def test_llamacpp_sampling_is_seeded(llamacpp) -> None:
    req = GenRequest(messages=[{"role": "user", "content": "Write a poem about the sea."}], max_new_tokens=24,
                     temperature=1.0, seed=7)
    a, b = llamacpp.generate([req, req])
    assert a.text == b.text and a.token_ids == b.token_ids


@pytest.mark.slow
def test_llamacpp_next_token_logits_argmax_is_greedy_first_token(llamacpp) -> None:
    import numpy as np

    prompts = [llamacpp.render(planted(0)), llamacpp.render(planted(1))]
    logits = llamacpp.next_token_logits(prompts)
    assert logits.shape == (2, llamacpp.llm.n_vocab()) and logits.dtype == np.float32
    for p, row in zip(prompts, logits):
        first = llamacpp.generate([GenRequest(prompt=p, max_new_tokens=1)])[0].token_ids[0]
        assert int(row.argmax()) == first


@pytest.mark.slow
def test_llamacpp_prompt_longer_than_window_fails_alone(llamacpp) -> None:
    long = GenRequest(prompt="word " * 3000, max_new_tokens=4)
    ok, bad = llamacpp.generate([GenRequest(messages=planted(), max_new_tokens=16), long])
    assert "Quibbleton" in ok.text
    assert bad.finish_reason == "error" and "context window is 2048" in bad.error


@pytest.mark.slow
@pytest.mark.parametrize("pack", [SMOLLM2, "qwen2.5-0.5b-instruct"])
def test_llamacpp_renders_what_transformers_renders(pack: str) -> None:
    from transformers import AutoTokenizer

    from longread.llm.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(LLMSpec(backend="llamacpp", model=pack, n_ctx=512))
    try:
        status = packs.pack_status(pack)
        if status.prepared:  # the hf backend's tokenizer: saved from the GGUF at preparation
            tok = AutoTokenizer.from_pretrained(status.path)
        else:
            gguf = packs.gguf_path(pack, progress=False)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        for messages in (planted(), [{"role": "system", "content": "Be brief."}] + planted()):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert b.render(messages) == text
            assert b.encode(text) == tok(text, add_special_tokens=False)["input_ids"]
    finally:
        b.close()


def test_llamacpp_without_llama_cpp_names_the_extra(monkeypatch) -> None:
    import sys

    from longread.llm.llamacpp import LlamaCppBackend

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if the extra were not installed
    with pytest.raises(BackendUnavailableError, match=r"longread\[llamacpp\]"):
        LlamaCppBackend(LLMSpec(backend="llamacpp", model=SMOLLM2))


def test_llamacpp_model_must_be_gguf_or_gguf_pack(tmp_path: Path) -> None:
    from longread.llm.llamacpp import resolve_gguf

    with pytest.raises(ValueError, match="GGUF pack"):
        resolve_gguf("all-minilm-l6-v2")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        resolve_gguf(str(tmp_path / "missing.gguf"))


def test_gguf_context_length_reads_the_header() -> None:
    from longread.llm.llamacpp import gguf_context_length

    assert gguf_context_length(packs.gguf_path(SMOLLM2, progress=False)) == 8192


# --- GGUF resolution of packs --------------------------------------------------------------------


def _pack(name: str, files: list[Path], sha: str) -> packs.Pack:
    return packs.Pack(name=name, kind="causal_lm", fmt="gguf", sources=tuple(packs.LocalFile(f) for f in files),
                      sha256=sha, pip="pip install nothing", licence="-", provenance="test")


def test_gguf_path_verifies_once_per_file_state(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"a" * 1000)
    pack = _pack("one", [f], hashlib.sha256(f.read_bytes()).hexdigest())
    cache = tmp_path / "cache"
    assert packs.gguf_path(pack, cache, progress=False) == f.resolve()
    st = f.stat()
    f.write_bytes(b"GGUF" + b"b" * 1000)  # same size; mtime put back: the record still matches
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert packs.gguf_path(pack, cache, progress=False) == f.resolve()  # not rehashed
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again, refused
    with pytest.raises(packs.ChecksumMismatchError, match="refused"):
        packs.gguf_path(pack, cache, progress=False)


def test_gguf_path_concatenates_split_packs_once(tmp_path: Path) -> None:
    import hashlib

    parts = [tmp_path / f"part{i}" for i in range(3)]
    for i, p in enumerate(parts):
        p.write_bytes(bytes([65 + i]) * (1000 + i))
    whole = b"".join(p.read_bytes() for p in parts)
    cache = tmp_path / "cache"
    bad = _pack("split", parts, "0" * 64)
    with pytest.raises(packs.ChecksumMismatchError):
        packs.gguf_path(bad, cache, progress=False)
    assert not list((cache / "models").glob("split-*-gguf"))  # nothing half-written left
    pack = _pack("split", parts, hashlib.sha256(whole).hexdigest())
    out = packs.gguf_path(pack, cache, progress=False)
    assert out.read_bytes() == whole and out.parent.name == f"{pack.dir_name()}-gguf"
    mtime = out.stat().st_mtime_ns
    assert packs.gguf_path(pack, cache, progress=False) == out and out.stat().st_mtime_ns == mtime


def test_gguf_path_refuses_non_gguf_packs() -> None:
    with pytest.raises(packs.PackError, match="not a GGUF causal LM"):
        packs.gguf_path("all-minilm-l6-v2")


# --- estimates and headers -----------------------------------------------------------------------


@pytest.mark.slow
def test_estimate_tokenizer_round_trips_and_overcounts_bpe(llamacpp) -> None:
    from longread.data import demo_paths
    from longread.llm.openai import EstimateTokenizer

    est = EstimateTokenizer()
    text = "\n".join(json.loads(line)["text"] for line in demo_paths()[0].read_text().splitlines()[:20])
    assert est.decode(est.encode(text)) == text
    ratio = len(est.encode(text)) / len(llamacpp.encode(text))
    assert 1.0 <= ratio <= 1.5, ratio


def test_parse_retry_after() -> None:
    from email.utils import formatdate

    from longread.llm.openai import MAX_RETRY_AFTER_S, parse_retry_after

    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("100000") == MAX_RETRY_AFTER_S
    now = time.time()
    assert 9 <= parse_retry_after(formatdate(now + 10, usegmt=True), now=now) <= 10


# --- vllm (no GPU here: what can be checked without the engine) ----------------------------------


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_without_vllm_names_the_extra() -> None:
    from longread.llm.vllm import VLLMBackend

    with pytest.raises(BackendUnavailableError, match=r"longread\[vllm\]") as e:
        VLLMBackend(LLMSpec(backend="vllm", model=SMOLLM2))
    assert isinstance(e.value, ImportError) and isinstance(e.value, ValueError)


def test_vllm_sampling_params_mapping() -> None:
    from longread.llm.vllm import sampling_kwargs

    greedy = sampling_kwargs(GenRequest(prompt="x", max_new_tokens=32, stop=("\n",), top_p=0.5), 3, {7, 2}, 100)
    assert greedy == {"n": 1, "max_tokens": 32, "temperature": 0.0, "top_p": 1.0, "stop": ["\n"],
                      "stop_token_ids": [2, 7], "skip_special_tokens": True, "include_stop_str_in_output": False}
    sampled = sampling_kwargs(GenRequest(prompt="x", max_new_tokens=32, temperature=0.7, top_p=0.9), 3, [], 100, room=10)
    assert sampled["seed"] == 103 and sampled["max_tokens"] == 10 and sampled["top_p"] == 0.9
    seeded = sampling_kwargs(GenRequest(prompt="x", temperature=0.7, seed=5), 3, [], 100)
    assert seeded["seed"] == 5
