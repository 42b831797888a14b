"""Tests for reorder.hard_negative: placement rules, properties, stage behaviour."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longread import registry
from longread.config import ConfigError, parse_config
from longread.retrievers.reorder import HardNegativeReorder, reorder, reorder_positions
from longread.types import Chunk, Passage, QAState, Question

MODES = ["hard_negative", "reverse", "identity"]


def _state(n: int) -> QAState:
    ps = [
        Passage(chunk=Chunk(id=f"c{i}", doc_id="d", text=f"text {i}", start=0, end=1), score=float(n - i))
        for i in range(n)
    ]
    return QAState(question=Question(id="q", question="why?"), passages=ps)


def test_examples_match_the_paper_pattern() -> None:
    d = [f"d{i}" for i in range(1, 8)]
    assert reorder(d, "hard_negative") == ["d1", "d3", "d5", "d7", "d6", "d4", "d2"]
    assert reorder(d[:6], "hard_negative") == ["d1", "d3", "d5", "d6", "d4", "d2"]
    assert reorder(d[:4], "reverse") == ["d4", "d3", "d2", "d1"]
    assert reorder(d[:4], "identity") == d[:4]


@given(n=st.integers(min_value=0, max_value=300), mode=st.sampled_from(MODES))
def test_is_a_permutation(n: int, mode: str) -> None:
    pos = reorder_positions(n, mode)
    assert sorted(pos) == list(range(n))


@given(n=st.integers(min_value=2, max_value=300))
def test_best_first_second_best_last(n: int) -> None:
    pos = reorder_positions(n, "hard_negative")
    assert pos[0] == 0 and pos[-1] == 1
    # Strength falls towards the middle from both ends.
    front = [p for p in pos if p % 2 == 0]
    back = [p for p in pos if p % 2 == 1]
    assert pos == front + back and front == sorted(front) and back == sorted(back, reverse=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one(n: int, mode: str) -> None:
    assert reorder(list(range(n)), mode) == list(range(n))


def test_unknown_mode_and_negative_n() -> None:
    with pytest.raises(ValueError, match="'sideways'.*hard_negative, reverse, identity"):
        reorder_positions(3, "sideways")
    with pytest.raises(ValueError, match="-1"):
        reorder_positions(-1, "identity")


def test_stage_reorders_and_cuts_before() -> None:
    stage = registry.get("reorder.hard_negative")(HardNegativeReorder.Params(top_k=5))
    [out] = stage([_state(8)])
    assert [p.chunk.id for p in out.passages] == ["c0", "c2", "c4", "c3", "c1"]
    assert out.trace["reorder"] == "hard_negative"
    assert [u.stage for u in out.usage] == ["reorder.hard_negative"] and out.usage[0].seconds >= 0
    # Scores stay with their passages.
    assert [p.score for p in out.passages] == [8.0, 6.0, 4.0, 5.0, 7.0]


def test_stage_empty_and_single() -> None:
    stage = HardNegativeReorder(HardNegativeReorder.Params(mode="reverse"))
    a, b = stage([_state(0), _state(1)])
    assert a.passages == [] and [p.chunk.id for p in b.passages] == ["c0"]


def test_bad_params_name_the_value() -> None:
    with pytest.raises(ValueError, match="top_k must be > 0 or null, got 0"):
        HardNegativeReorder.Params(top_k=0)
    with pytest.raises(ConfigError, match="mode.*'sideways'"):
        parse_config({"name": "x", "stages": [{"key": "reorder.hard_negative", "params": {"mode": "sideways"}}]})
