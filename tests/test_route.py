"""reader.route: RAG first, long-context fallback where RAG says the passages are not enough."""

from __future__ import annotations

from pathlib import Path

import pytest

from longread.config import ConfigError, parse_config
from longread.models.hub import ModelHub
from longread.pipelines.store import CorpusStore
from longread.readers.route import RouteReader, answer_support, needs_fallback
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


def test_answer_support_counts_answer_words_found_in_the_passages() -> None:
    ctx = "[1] The capital of Freedonia is Zorbatown. It was founded in 1,742."
    assert answer_support("Zorbatown", ctx) == 1.0
    assert answer_support("the city of Zorbatown!", ctx) == pytest.approx(2 / 3)  # "city" is made up
    assert answer_support("1742", ctx) == 1.0  # SQuAD normalisation drops the comma on both sides
    assert answer_support("Paris", ctx) == 0.0
    assert answer_support("", ctx) == 0.0 and answer_support(None, ctx) == 0.0
    assert answer_support("Zorbatown", "") == 0.0


def test_ungrounded_route_falls_back_exactly_below_min_support(tmp_path: Path, tiny_lm_dir: Path) -> None:
    m = str(tiny_lm_dir)
    st = RouteReader({"rag": {"model": m, "max_new_tokens": 4}, "fallback_params": {"model": m, "max_new_tokens": 4},
                      "when": "ungrounded"})
    st.setup(_ctx(tmp_path))
    # No Self-Route clause in this mode: the RAG step is the plain reader.
    assert "unanswerable" not in st.rag._messages("C", "Q?")[0]["content"]
    rag = st.rag(_states(1))[0]
    support = answer_support(rag.answer, rag.context)
    for min_support, route in ((1.0, "fallback" if support < 1.0 else "rag"), (support or 1e-9, "rag" if support else "fallback")):
        st.params.min_support = min_support
        out = st(_states(1))[0]
        assert out.trace["route"] == route
        if route == "fallback":
            assert out.trace["rag_answer"] == rag.answer and {u.part for u in out.usage} == {"rag", "fallback"}
        else:
            assert out.trace["rag_support"] == round(support, 3) and out.answer == rag.answer


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
        # Both steps are parts of this stage's usage; only the step that ran is there.
        assert [(u.stage, u.part, u.calls) for u in s.usage] == [("reader.route", route, 1)]
        assert s.usage[0].prompt_tokens > 0 and s.usage[0].seconds > 0


def test_self_route_adds_the_unanswerable_clause_to_the_chosen_style(tiny_lm_dir: Path) -> None:
    m = str(tiny_lm_dir)
    short = RouteReader({"rag": {"model": m}}).rag._messages("CTX", "Q?")[0]["content"]
    assert short.startswith(
        "Answer the question using the passages below. Reply with only the answer, as a short phrase of a few words, "
        "with no explanation. If the passages do not contain the answer, reply exactly: unanswerable\n\nCTX"
    )
    free = RouteReader({"rag": {"model": m, "prompt": "free"}}).rag._messages("CTX", "Q?")[0]["content"]
    assert "a few sentences" in free and "reply exactly: unanswerable" in free
    tpl = "{context}\n{question}\nSay unanswerable if unsure."
    assert RouteReader({"rag": {"model": m, "prompt": tpl}}).rag._messages("C", "Q")[0]["content"] == "C\nQ\nSay unanswerable if unsure."


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
        parts = {u.part: u for u in s.usage}
        assert set(parts) == {"rag", "fallback"} and all(u.stage == "reader.route" for u in s.usage)
        assert parts["rag"].calls == parts["fallback"].calls == 1
        # The fallback read the whole document, RAG one short passage.
        assert parts["fallback"].prompt_tokens > 0 and parts["rag"].prompt_tokens > 0


def test_route_params_are_validated_at_config_time() -> None:
    with pytest.raises(ConfigError, match="max_new_tokens"):
        parse_config({"name": "r", "stages": [{"key": "reader.route", "params": {"rag": {"max_new_tokens": 0}}}]})
    with pytest.raises(ConfigError, match="fallback"):
        parse_config({"name": "r", "stages": [{"key": "reader.route", "params": {"fallback": "reader.hf"}}]})
    with pytest.raises(ConfigError, match="template must tell the model to reply 'unanswerable'"):
        parse_config({"name": "r", "stages": [{"key": "reader.route", "params": {"rag": {"prompt": "{context} {question}"}}}]})
    with pytest.raises(ConfigError, match="cannot 'cite'"):
        parse_config({"name": "r", "stages": [{"key": "reader.route", "params": {"fallback_params": {"prompt": "cite"}}}]})
