"""reader.route: RAG first, long-context fallback where RAG says the passages are not enough."""

from __future__ import annotations

from pathlib import Path

import pytest

from longread.config import ConfigError, parse_config
from longread.models.hub import ModelHub
from longread.pipelines.store import CorpusStore
from longread.readers.route import RouteReader, needs_fallback
from longread.stage import RunContext
from longread.types import Chunk, Document, Passage, QAState, Question

DOC = Document(id="d1", text="The capital of Freedonia is Zorbatown. It was founded in 1742.")


def _states(n: int = 3) -> list[QAState]:
    c = Chunk(id="d1#0", doc_id="d1", text=DOC.text[:38], start=0, end=38)
    return [
        QAState(question=Question(id=f"q{i}", question="What is the capital of Freedonia?", doc_ids=["d1"]), passages=[Passage(chunk=c, score=1.0)])
        for i in range(n)
    ]


def test_needs_fallback_on_strings() -> None:
    assert needs_fallback("unanswerable")
    assert needs_fallback("  Unanswerable.")
    assert needs_fallback("")
    assert needs_fallback(None)
    assert not needs_fallback("Zorbatown")
    assert needs_fallback("no idea", marker="no idea")


def _ctx(tmp_path: Path) -> RunContext:
    return RunContext(models=ModelHub(cache_dir=tmp_path, dtype="float32"), store=CorpusStore([DOC], []))


@pytest.mark.parametrize("when,route", [("always", "fallback"), ("never", "rag")])
def test_route_modes_on_the_tiny_lm(tmp_path: Path, tiny_lm_dir: Path, when: str, route: str) -> None:
    m = str(tiny_lm_dir)
    st = RouteReader({"rag": {"model": m, "max_new_tokens": 4}, "fallback_params": {"model": m, "max_new_tokens": 4}, "when": when})
    st.setup(_ctx(tmp_path))
    out = st(_states())
    assert [s.trace["route"] for s in out] == [route] * 3
    for s in out:
        assert s.answer is not None
        calls = s.trace["llm_calls"]
        if route == "fallback":
            assert calls == {"reader.long_context": 1} and s.trace["route_rag_tokens"] == 0
        else:
            assert calls == {"reader.hf": 1}


def test_self_route_sends_only_unanswerable_to_the_fallback(tmp_path: Path, tiny_lm_dir: Path) -> None:
    m = str(tiny_lm_dir)
    st = RouteReader({"rag": {"model": m, "max_new_tokens": 4}, "fallback_params": {"model": m, "max_new_tokens": 4}})
    st.setup(_ctx(tmp_path))
    # The tiny LM's RAG answers are deterministic garbage: make the marker one of them, so that
    # exactly the questions whose RAG answer contains it go to the fallback.
    plain = st.rag(_states(1))[0].answer
    assert plain
    st.params.marker = plain
    out = st(_states(2))
    assert all(s.trace["route"] == "fallback" for s in out)
    for s in out:
        assert s.trace["rag_answer"] == plain
        assert s.trace["reader_tokens"] > s.trace["route_rag_tokens"] > 0
        assert set(s.trace["llm_calls"]) == {"reader.hf", "reader.long_context"}


def test_route_params_are_validated_at_config_time() -> None:
    with pytest.raises(ConfigError, match="max_new_tokens"):
        parse_config({"name": "r", "stages": [{"key": "reader.route", "params": {"rag": {"max_new_tokens": 0}}}]})
    with pytest.raises(ConfigError, match="fallback"):
        parse_config({"name": "r", "stages": [{"key": "reader.route", "params": {"fallback": "reader.hf"}}]})
