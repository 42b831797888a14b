"""EM/F1 (SQuAD v1.1 and HotpotQA rules), answer recall, recall@k and nDCG@k on hand-worked cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longread.eval.metrics import (
    answer_in_texts,
    exact_match,
    max_over_answers,
    ndcg_at_k,
    normalize_answer,
    recall_at_k,
    token_f1,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The  Quick, brown fox!", "quick brown fox"),
        ("An apple a day", "apple day"),
        ("theater thea", "theater thea"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("  \tTHE\n ", ""),
        ("Sánchez's café", "sánchezs café"),  # non-ASCII letters kept, ASCII apostrophe dropped
        ("rock-and-roll", "rockandroll"),  # punctuation removed, not turned into a space (as the official script)
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_ignores_case_punctuation_articles():
    assert exact_match("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_token_f1_hand_worked():
    # pred tokens [cat, sat, on, mat] (4), gold [cat, on, mat] (3), shared 3:
    # P = 3/4, R = 3/3, F1 = 2 * 0.75 * 1 / 1.75 = 6/7
    assert token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # Bag-of-tokens overlap: pred [new, york, new, york], gold [new, york]; shared = min counts = 2:
    # P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert token_f1("New York, New York", "new york") == pytest.approx(2 / 3)
    assert token_f1("", "paris") == 0.0
    assert token_f1("london", "paris") == 0.0


def test_both_sides_normalise_to_nothing():
    # Official v1.1 rules: EM compares "" == "" -> 1, but F1 has no shared token -> 0.
    assert exact_match("the", "a") == 1.0
    assert token_f1("the", "a") == 0.0


def test_max_over_answers():
    em, f1 = max_over_answers("Denver Broncos", ["Broncos", "Denver Broncos", "the broncos team"])
    assert (em, f1) == (1.0, 1.0)
    # vs "denver broncos": shared [broncos] -> P = 1/2, R = 1/2, F1 = 0.5; vs "carolina": 0 -> max 0.5
    em, f1 = max_over_answers("Broncos won", ["Denver Broncos", "Carolina"])
    assert em == 0.0 and f1 == pytest.approx(0.5)


def test_hotpotqa_yes_no_rule():
    # squad: pred [no], gold [no, way]: P = 1, R = 1/2, F1 = 2/3; hotpotqa: "no" is special and differs -> 0
    assert token_f1("no", "no way") == pytest.approx(2 / 3)
    assert token_f1("no", "no way", metric_style="hotpotqa") == 0.0
    # gold is special: squad pred [yes, it, is] vs [yes]: P = 1/3, R = 1, F1 = 0.5; hotpotqa -> 0
    assert token_f1("yes it is", "Yes") == pytest.approx(0.5)
    assert token_f1("yes it is", "Yes", metric_style="hotpotqa") == 0.0
    assert token_f1("Yes.", "yes", metric_style="hotpotqa") == 1.0
    assert token_f1("noanswer", "no answer", metric_style="hotpotqa") == 0.0
    # Outside the special words the two styles agree: [red, car] vs [car]: P = 1/2, R = 1 -> 2/3
    assert token_f1("red car", "car", metric_style="hotpotqa") == pytest.approx(2 / 3)


def test_metric_errors_are_raised():
    with pytest.raises(ValueError, match="metric_style must be one of"):
        token_f1("a", "b", metric_style="rouge")
    with pytest.raises(ValueError, match="answers must not be empty"):
        max_over_answers("x", [])
    with pytest.raises(TypeError, match="list of strings"):
        max_over_answers("x", "Paris")
    with pytest.raises(TypeError, match="answer must be a str"):
        max_over_answers(None, ["Paris"])


def test_answer_in_texts():
    assert answer_in_texts(["1973"], ["x", "The crisis began in October 1973."])
    assert answer_in_texts(["U.S."], ["a blow to the US economy"])  # "us" inside " blow to us economy "
    assert not answer_in_texts(["art"], ["the start of it"])  # whole tokens only
    assert not answer_in_texts(["the"], ["the the the"])  # answer normalises to nothing
    assert not answer_in_texts([], ["anything"])
    assert not answer_in_texts(["Paris"], [])
    with pytest.raises(TypeError):
        answer_in_texts(["Paris"], "Paris is big")


def test_recall_at_k_dedupes():
    retrieved = ["a", "b", "c", "a", "d"]
    # distinct ids [a, b, c, d]; top-3 [a, b, c] holds c of gold {c, d} -> 1/2
    assert recall_at_k(retrieved, ["c", "d"], 3) == 0.5
    # top-4 [a, b, c, d] -> 2/2 (without dedupe d would be 5th)
    assert recall_at_k(retrieved, ["c", "d"], 4) == 1.0
    assert recall_at_k([], ["c"], 10) == 0.0


def test_ndcg_hand_worked():
    # distinct [a, b, c, d], gold {c, d} at ranks 3, 4:
    # DCG = 1/log2(4) + 1/log2(5) = 0.5 + 0.4306766 = 0.9306766
    # IDCG = 1/log2(2) + 1/log2(3) = 1 + 0.6309298 = 1.6309298 -> 0.5706417
    assert ndcg_at_k(["a", "b", "c", "a", "d"], ["c", "d"], 10) == pytest.approx(0.9306766 / 1.6309298, abs=1e-6)
    # k cuts the ideal too: gold {a, b, c}, k = 2, only a retrieved (rank 1): DCG 1, IDCG 1 + 0.6309298
    assert ndcg_at_k(["a"], ["a", "b", "c"], 2) == pytest.approx(1 / 1.6309298, abs=1e-6)
    assert ndcg_at_k(["c", "d", "x"], ["d", "c"], 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], ["c"], 10) == 0.0


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be a positive int"):
        recall_at_k(["a"], ["a"], k)
    with pytest.raises(ValueError, match="k must be a positive int"):
        ndcg_at_k(["a"], ["a"], k)


def test_empty_gold_is_an_error():
    with pytest.raises(ValueError, match="gold_ids must not be empty"):
        recall_at_k(["a"], [], 5)
    with pytest.raises(TypeError, match="list of ids"):
        ndcg_at_k(["a"], "a", 5)


words = st.lists(st.sampled_from(["the", "a", "cat", "dog", "yes", "no", "New", "york", "1973", ".", ",", "Paris!"]), max_size=6)
texts = words.map(" ".join)


@settings(max_examples=300, deadline=None)
@given(texts, st.lists(texts, min_size=1, max_size=3), st.sampled_from(["squad", "hotpotqa"]))
def test_em_f1_properties(pred, answers, style):
    em, f1 = max_over_answers(pred, answers, metric_style=style)
    assert em in (0.0, 1.0)
    assert 0.0 <= f1 <= 1.0
    # EM = 1 implies F1 = 1, except when both sides normalise to nothing (official rule: F1 = 0 then).
    if em == 1.0 and normalize_answer(pred):
        assert f1 == 1.0
    # The HotpotQA rule only ever removes credit.
    assert f1 <= max_over_answers(pred, answers, metric_style="squad")[1] + 1e-12
    for g in answers:
        assert token_f1(pred, g) == pytest.approx(token_f1(g, pred))  # squad F1 is symmetric


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from("abcdefgh"), max_size=12),
    st.sets(st.sampled_from("abcdefgh"), min_size=1),
    st.integers(1, 12),
)
def test_retrieval_metric_properties(retrieved, gold, k):
    r = recall_at_k(retrieved, gold, k)
    n = ndcg_at_k(retrieved, gold, k)
    assert 0.0 <= r <= 1.0 and 0.0 <= n <= 1.0 + 1e-12
    assert recall_at_k(retrieved, gold, k + 1) >= r  # recall never drops as k grows
    assert (n == 0.0) == (r == 0.0)
    ideal = sorted(gold) + [x for x in retrieved if x not in gold]
    assert math.isclose(ndcg_at_k(ideal, gold, k), 1.0)
