"""LLM specs, stage params shorthand, answer styles, templates and citation parsing (no model)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from longread.llm.params import LLMParams, ReaderLLMParams
from longread.llm.prompts import STYLES, clean_answer, clean_free, parse_citations, resolve_prompt, strip_citations
from longread.llm.spec import LLMSpec


def test_model_shorthand_is_hf():
    p = ReaderLLMParams.model_validate({"model": "smollm2-135m-instruct"})
    assert (p.llm.backend, p.llm.model, p.model) == ("hf", "smollm2-135m-instruct", "smollm2-135m-instruct")
    assert ReaderLLMParams.model_validate({}).model == "qwen2.5-0.5b-instruct"


def test_model_and_llm_must_agree():
    ok = ReaderLLMParams.model_validate({"model": "a", "llm": {"backend": "llamacpp"}})
    assert (ok.llm.backend, ok.llm.model) == ("llamacpp", "a")
    with pytest.raises(ValidationError, match="disagree"):
        ReaderLLMParams.model_validate({"model": "a", "llm": {"backend": "hf", "model": "b"}})


@pytest.mark.parametrize(
    "llm, match",
    [
        ({"backend": "openai", "model": "m"}, "needs base_url"),
        ({"backend": "hf", "model": "m", "base_url": "http://127.0.0.1:1/v1"}, "only by backend openai"),
        ({"backend": "openai", "model": "m", "base_url": "127.0.0.1:8080"}, "http"),
        ({"backend": "openai", "model": "m", "base_url": "http://h/v1", "api_key_env": "sk-abc123"}, "NAME"),
        ({"backend": "llamacpp", "model": "m", "batch_size": 2}, "only by backend hf"),
        ({"backend": "grpc", "model": "m"}, "backend"),
        ({"backend": "hf", "model": " "}, "non-empty"),
    ],
)
def test_bad_specs(llm, match):
    with pytest.raises(ValidationError, match=match):
        ReaderLLMParams.model_validate({"llm": llm})


def test_api_key_value_is_not_echoed():
    with pytest.raises(ValidationError) as e:
        LLMSpec(backend="openai", model="m", base_url="http://h/v1", api_key_env="sk-secretvalue")
    assert "secretvalue" not in str(e.value).split("input_value")[0]


def test_capabilities_refused_at_load():
    class NeedsLogits(LLMParams):
        needs = frozenset({"logits"})

    class NeedsKV(LLMParams):
        needs = frozenset({"kv"})

    NeedsLogits.model_validate({"llm": {"backend": "llamacpp", "model": "x.gguf"}})
    with pytest.raises(ValidationError, match="needs logits.*'openai'.*'hf' or 'llamacpp'"):
        NeedsLogits.model_validate({"llm": {"backend": "openai", "model": "m", "base_url": "http://h/v1"}})
    with pytest.raises(ValidationError, match="needs kv.*'llamacpp'.*use backend 'hf'"):
        NeedsKV.model_validate({"llm": {"backend": "llamacpp", "model": "x.gguf"}})


def test_styles_and_defaults():
    for name, style in STYLES.items():
        p = ReaderLLMParams.model_validate({"prompt": name})
        assert p.answer_tokens == style.max_new_tokens
    assert ReaderLLMParams.model_validate({"prompt": "free", "max_new_tokens": 40}).answer_tokens == 40
    msg = resolve_prompt("short").message("CTX", "Q?", source="document")
    assert "document below" in msg and msg.endswith("Question: Q?\nAnswer:") and "CTX" in msg


def test_templates_checked():
    t = resolve_prompt("Context:\n{context}\nQ: {question}\nA (braces: {{x}}):")
    assert t.message("c", "q") == "Context:\nc\nQ: q\nA (braces: {x}):"
    assert t.cleaner == "free" and t.default_max_new_tokens == 256
    for bad, match in [("{context} {question} {title}", "unknown placeholder"), ("{question} only", "must contain"),
                       ("{context} {question} {0}", "unknown placeholder"), ("{context {question}", "malformed"),
                       ("no placeholders", "style")]:
        with pytest.raises(ValueError, match=match):
            resolve_prompt(bad)


def test_cleaners():
    assert clean_answer('  Answer: "Zorbatown."\nmore') == "Zorbatown"
    assert clean_answer("the U.S.") == "the U.S."
    assert clean_free("Answer: It is big.\nIt is old.") == "It is big.\nIt is old."


def test_parse_citations():
    text = "Paris is the capital [2]. It is old [1][3], very old [2, 4]; see [9] and [0]."
    assert parse_citations(text, 4) == [2, 1, 3, 4]
    assert parse_citations("no markers", 3) == []
    assert strip_citations("Paris is the capital [2]. Old [1][3].") == "Paris is the capital. Old."


def test_spec_round_trips_through_a_dump():
    for spec in (LLMSpec(model="m"), LLMSpec(backend="openai", model="m", base_url="http://h/v1", api_key_env="K")):
        assert LLMSpec.model_validate(spec.model_dump()) == spec
