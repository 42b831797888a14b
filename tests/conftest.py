"""Shared pytest fixtures: tiny in-process models (built once per session) and a model hub.

Tests that change a model directory must copy it first (``shutil.copytree``): the session
directories are shared by every test.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-architecture causal LM in HF format (see ``longread.testing``)."""
    from longread.testing import tiny_causal_lm_dir

    return tiny_causal_lm_dir(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT encoder with a WordPiece tokenizer in HF format."""
    from longread.testing import tiny_encoder_dir as build

    return build(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory):
    """A ``ModelHub`` on a temporary cache dir (fp32, so tiny-model results are exact)."""
    from longread.models.hub import ModelHub

    return ModelHub(cache_dir=tmp_path_factory.mktemp("model-cache"), dtype="float32")


@pytest.fixture(scope="session", autouse=True)
def _private_kv_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the tests' page KV out of the user's KV cache (models still come from the shared one)."""
    import os

    old = os.environ.get("LONGREAD_KV_DIR")
    os.environ["LONGREAD_KV_DIR"] = str(tmp_path_factory.mktemp("kv-cache"))
    yield
    if old is None:
        os.environ.pop("LONGREAD_KV_DIR", None)
    else:
        os.environ["LONGREAD_KV_DIR"] = old


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    """A real llama.cpp server (``llama_cpp.server``, the ``llamacpp`` extra) on 127.0.0.1 serving
    the SmolLM2 pack's GGUF; stopped at the end of the session. See ``longread.testing.LlamaServer``."""
    from longread.models.packs import gguf_path
    from longread.testing import LlamaServer

    # One thread: on a shared machine a second llama.cpp thread waiting for a busy core costs more
    # than it gives, and a 135M model is fast enough on one.
    with LlamaServer(gguf_path("smollm2-135m-instruct", progress=False), n_ctx=4096, n_threads=1,
                     log_dir=tmp_path_factory.mktemp("llama-server")) as server:
        yield server


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (real models, Ray)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device here")
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
