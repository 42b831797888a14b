"""compressor.color: prompt, output cleaning, budgets, fallbacks, adapters — on the tiny LM and a scripted LM."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from longread import registry
from longread.compressors.color import (
    COLOR_PROMPT,
    ColorCompressor,
    check_adapter_base,
    clean_summary,
    color_messages,
    summarize,
)
from longread.config import ConfigError, parse_config
from longread.llm import LLMSpec
from longread.llm.hf import HFBackend
from longread.stage import RunContext
from longread.testing import ScriptedBackend
from longread.types import Chunk, Passage, QAState, Question

LONG = (
    "The capital of Freedonia is Zorbatown. It was founded in 1742 by traders who crossed the river. "
    "Paris is the capital of France; Berlin is the capital of Germany, and Rome is the capital of Italy. "
    "Water boils at 100 degrees Celsius at sea level."
)


def _state(texts: list[str], qid: str = "q1") -> QAState:
    passages = [
        Passage(chunk=Chunk(id=f"{qid}-c{i}", doc_id=f"d{i}", text=t, start=10 * i, end=10 * i + len(t)),
                score=1.0 - i / 10, scores={"retriever.bm25": 1.0 - i / 10})
        for i, t in enumerate(texts)
    ]
    return QAState(question=Question(id=qid, question="When was Zorbatown founded?"), passages=passages)


class FakeHub:
    """Serves one backend for any spec; resolves names to a given dir."""

    def __init__(self, backend, path: Path | None = None) -> None:
        self.be, self.path = backend, path

    def backend(self, spec, ctx=None):
        return self.be

    def resolve(self, name):
        if self.path is None:
            raise FileNotFoundError(name)
        return self.path


@pytest.fixture()
def tiny_tok(hub, tiny_lm_dir):
    return hub.tokenizer(str(tiny_lm_dir))


def test_prompt_is_colors_query_agnostic_summarise_prompt():
    msgs = color_messages("ABC passage")
    assert msgs == [{"role": "user", "content": "Summarize the following content. \nContent:\nABC passage\n Summary:"}]
    assert "{passage}" in COLOR_PROMPT


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("  Summary: Zorbatown was founded in 1742.  ", "Zorbatown was founded in 1742."),
        ("**Summary:** Founded 1742.", "Founded 1742."),
        ("", None),
        ("   \n ", None),
        ("!!! ... ???", None),
        ("orb\ufffdrow Sand", None),  # broken bytes
        ("abc\x1cdef", None),  # control character
        ("the the the the the the the the the", None),  # degenerate loop
        (LONG + " and more", None),  # not shorter than the original
    ],
)
def test_clean_summary(raw, expected):
    assert clean_summary(raw, LONG) == expected


def test_tiny_lm_keeps_ids_offsets_and_counts_calls(hub, tiny_lm_dir):
    st = _state([LONG, "short one", LONG[:150]])
    stage = ColorCompressor({"model": str(tiny_lm_dir), "max_new_tokens": 12, "min_chars": 50, "batch_size": 2})
    stage.setup(RunContext(models=hub))
    out = stage([st, _state([LONG], qid="q2")])
    assert len(out) == 2
    o = out[0]
    assert [p.chunk.id for p in o.passages] == [p.chunk.id for p in st.passages]
    for a, b in zip(o.passages, st.passages):
        assert (a.chunk.doc_id, a.chunk.start, a.chunk.end, a.score, a.scores) == (
            b.chunk.doc_id, b.chunk.start, b.chunk.end, b.score, b.scores)
        assert a.chunk == b.chunk  # the chunk (text included) is the indexed one; only passage.text changes
    assert o.passages[1].text == "short one"  # below min_chars: untouched
    rec = o.trace["compression"]["compressor.color"]
    assert rec["skipped"] == 1 and rec["compressed"] + rec["fallbacks"] == 2
    assert rec["original_chars"] == {p.chunk.id: len(p.text) for p in st.passages}
    count = stage.backend.count_tokens
    assert rec["tokens_in"] == sum(count(p.text) for p in st.passages)
    assert rec["tokens_out"] == sum(count(p.text) for p in o.passages)
    [u] = o.usage
    assert (u.stage, u.calls, u.backend) == ("compressor.color", 2, "hf")
    assert u.prompt_tokens > count(LONG) and 0 < u.new_tokens <= 2 * 12 and u.seconds > 0
    assert not {"llm_calls", "llm_tokens", "timings"} & set(o.trace)
    assert st.passages[0].text == st.passages[0].chunk.text == LONG  # the input state is not mutated
    # The random tiny LM writes byte soup: every compressed passage fell back to its original.
    for a, b in zip(o.passages, st.passages):
        assert a.text in (b.text,) or count(a.text) <= 12


def test_summarize_respects_per_passage_budgets_on_tiny_lm(hub, tiny_lm_dir):
    be = HFBackend(LLMSpec(model=str(tiny_lm_dir), batch_size=3), RunContext(models=hub))
    sums = summarize(be, [LONG, LONG[:80], LONG[:120]], max_new_tokens=[7, 3, 1])
    assert [s.new_tokens <= b for s, b in zip(sums, [7, 3, 1])] == [True, True, True]
    assert all(s.prompt_tokens > be.count_tokens("Summarize the following content.") for s in sums)
    # Batched and one-by-one greedy decoding agree (left padding is handled).
    single = [summarize(be, [t], max_new_tokens=b)[0] for t, b in zip([LONG, LONG[:80]], [7, 3])]
    assert [s.text for s in single] == [s.text for s in sums[:2]]
    # Sampling is seeded: the same seed gives the same compressions.
    a, b = (summarize(be, [LONG], max_new_tokens=8, temperature=1.0, seed=5)[0].text for _ in range(2))
    assert a == b


def test_scripted_outputs_fallbacks_and_budget(tiny_tok):
    good = "Zorbatown was founded in 1742 by traders."
    lm = ScriptedBackend({"Freedonia": "Summary: " + good, "Berlin": "", "Water": "\ufffd\ufffd garbage \x1c"},
                         tokenizer=tiny_tok)
    texts = [LONG, "Paris is the capital of France; Berlin is the capital of Germany, and Rome of Italy.",
             "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level. Ice melts at 0 degrees."]
    for fallback in ("original", "empty"):
        stage = ColorCompressor({"model": "any", "min_chars": 0, "fallback": fallback, "max_new_tokens": 64})
        stage.setup(RunContext(models=FakeHub(lm)))
        out = stage([_state(texts)])[0]
        assert out.passages[0].text == good
        want = texts[1:] if fallback == "original" else ["", ""]
        assert [p.text for p in out.passages[1:]] == want
        assert [p.chunk.text for p in out.passages] == texts  # compressors never rewrite a chunk
        rec = out.trace["compression"]["compressor.color"]
        assert (rec["compressed"], rec["fallbacks"]) == (1, 2)

    # A ratio budget cuts the good summary to ceil(ratio * tokens_in) tokens.
    stage = ColorCompressor({"model": "any", "min_chars": 0, "ratio": 0.1, "max_new_tokens": 64})
    stage.setup(RunContext(models=FakeHub(lm)))
    out = stage([_state([LONG])])[0]
    budget = math.ceil(0.1 * lm.count_tokens(LONG))
    assert out.trace["compression"]["compressor.color"]["budgets"] == {"q1-c0": budget}
    text = out.passages[0].text
    assert out.passages[0].chunk.text == LONG
    assert text and lm.count_tokens(text) <= budget < lm.count_tokens(good)
    assert out.trace["compression"]["compressor.color"]["ratio"] < 0.15


def test_empty_batch_and_no_passages(tiny_tok):
    lm = ScriptedBackend({}, default="x", tokenizer=tiny_tok)
    stage = ColorCompressor({"model": "any"})
    stage.setup(RunContext(models=FakeHub(lm)))
    assert stage([]) == []
    out = stage([_state([])])[0]
    assert out.passages == [] and lm.prompts == []
    assert out.trace["compression"]["compressor.color"]["ratio"] == 1.0


def test_call_before_setup_raises():
    with pytest.raises(RuntimeError, match="setup"):
        ColorCompressor()([_state([LONG])])


@pytest.mark.parametrize(
    "params,match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be > 0, got 0"),
        ({"batch_size": -1}, "batch_size must be > 0, got -1"),
        ({"min_chars": -5}, "min_chars must be >= 0, got -5"),
        ({"ratio": 0.0}, r"ratio must be in \(0, 1\], got 0.0"),
        ({"ratio": 1.5}, r"ratio must be in \(0, 1\], got 1.5"),
        ({"fallback": "drop"}, "original"),
        ({"adapter": ""}, "adapter"),
        ({"adapter": "/x", "llm": {"backend": "llamacpp", "model": "m.gguf"}}, "adapter needs backend 'hf'"),
        ({"temperature": 0.3}, "temperature"),
    ],
)
def test_bad_params(params, match):
    with pytest.raises(ValueError, match=match):
        ColorCompressor(params)


def test_registered_and_usable_from_config():
    assert registry.get("compressor.color") is ColorCompressor
    cfg = {"name": "c", "stages": [{"key": "compressor.color", "params": {"max_new_tokens": -1}}]}
    with pytest.raises(ConfigError, match="max_new_tokens"):
        parse_config(cfg)


def _adapter_dir(path: Path, base: str) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    return path


def test_adapter_checks(tmp_path, tiny_tok):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_adapter_base(tmp_path / "nope", "qwen2.5-0.5b-instruct")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        check_adapter_base(tmp_path / "empty", "qwen2.5-0.5b-instruct")
    phi = _adapter_dir(tmp_path / "phi", "microsoft/Phi-3-mini-4k-instruct")
    with pytest.raises(ValueError, match="Phi-3-mini-4k-instruct.*qwen2.5-0.5b-instruct"):
        check_adapter_base(phi, "qwen2.5-0.5b-instruct")
    assert check_adapter_base(phi, "/models/phi-3-mini-4k-instruct/")["peft_type"] == "LORA"
    ok = _adapter_dir(tmp_path / "ok", "smollm2-135m-instruct")
    check_adapter_base(ok, "smollm2-135m-instruct")
    # Through the stage: a missing adapter dir fails in setup with the path in the message.
    stage = ColorCompressor({"model": "qwen2.5-0.5b-instruct", "adapter": str(tmp_path / "missing")})
    with pytest.raises(FileNotFoundError, match="missing"):
        stage.setup(RunContext(models=FakeHub(ScriptedBackend(tokenizer=tiny_tok))))
    stage = ColorCompressor({"model": "qwen2.5-0.5b-instruct", "adapter": str(phi)})
    with pytest.raises(ValueError, match="trained on base model"):
        stage.setup(RunContext(models=FakeHub(ScriptedBackend(tokenizer=tiny_tok))))


def test_lora_adapter_loads_on_a_private_copy(hub, tiny_lm_dir, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32)
    from longread.peft_compat import quiet_peft

    with quiet_peft():
        lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.peft_config["default"].base_model_name_or_path = str(tiny_lm_dir)
    lora.save_pretrained(str(tmp_path / "ad"))
    shared, tok = hub.causal_lm(str(tiny_lm_dir))
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    stage = ColorCompressor({"model": str(tiny_lm_dir), "adapter": str(tmp_path / "ad"), "min_chars": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading an adapter is part of a normal run: no warnings
        stage.setup(RunContext(models=hub))
    assert stage.backend.model is not shared and stage.backend.tokenizer is tok
    after = shared.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the hub's cached model is untouched
    merged = stage.backend.model.state_dict()
    assert any(not torch.equal(before[k], merged[k]) for k in before if k in merged)  # the adapter changed weights
    assert stage([_state([LONG])])[0].passages[0].chunk.id == "q1-c0"
