"""EM/F1 (SQuAD v1.1 and HotpotQA rules), ROUGE-L, numeric match, gold-contained, answer recall,
recall@k and nDCG@k on hand-worked cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longread.eval.metrics import (
    answer_in_texts,
    exact_match,
    gold_contained,
    lcs_length,
    numeric_match,
    parse_numbers,
    rouge_l,
    score_answer,
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


# --- long and numeric answers ------------------------------------------------------------------


def test_lcs_length_hand_worked():
    # a b c d e vs a c e: the LCS is a c e (3); order matters, so c a has LCS 1 with a c
    assert lcs_length(list("abcde"), list("ace")) == 3
    assert lcs_length(list("ca"), list("ac")) == 1
    assert lcs_length([], list("abc")) == 0


def test_rouge_l_hand_worked():
    # normalised pred [cat, sat, on, mat], gold [cat, was, on, mat]; LCS [cat, on, mat] = 3:
    # P = 3/4, R = 3/4, F = 2 * 0.75 * 0.75 / 1.5 = 0.75
    assert rouge_l("The cat sat on the mat.", "a cat was on the mat") == pytest.approx(0.75)
    # pred [eiffel, tower, in, paris] (4), gold [paris, eiffel] (2): LCS 1 ([eiffel] or [paris]):
    # P = 1/4, R = 1/2, F = 2 * 1/8 / (3/4) = 1/3  (token F1 would be 2/3: bag overlap ignores order)
    assert rouge_l("Eiffel Tower in Paris", "Paris Eiffel") == pytest.approx(1 / 3)
    assert token_f1("Eiffel Tower in Paris", "Paris Eiffel") == pytest.approx(2 / 3)
    assert rouge_l("", "paris") == 0.0
    assert rouge_l("the", "a") == 0.0  # both normalise to nothing: no tokens, 0 (as token F1)
    assert rouge_l("london", "paris") == 0.0


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        # Reference values: rouge_score 0.1.2, RougeScorer(["rougeL"], use_stemmer=False)
        # .score(gold, pred)["rougeL"].fmeasure, on article-free lowercase text where both
        # tokenisers agree (run once outside the project; rouge_score is not a dependency).
        ("paris is capital of france", "capital of france paris", 0.6666666666666665),
        ("river seine flows north through paris", "seine flows through paris", 0.8),
        ("north north seine river north city", "north paris north paris city river north", 0.6153846153846153),
        ("seine city north north city city", "seine seine seine north city paris paris", 0.4615384615384615),
        ("north paris river paris river", "north city city city north", 0.20000000000000004),
        ("seine river paris paris seine city seine river city river", "north city north river north", 0.26666666666666666),
        ("city north seine river paris river north seine river north north north", "seine north", 0.2857142857142857),
        ("river paris paris city city paris river", "city seine", 0.22222222222222224),
    ],
)
def test_rouge_l_matches_rouge_score(pred, gold, expected):
    assert rouge_l(pred, gold) == pytest.approx(expected, abs=1e-12)


def test_gold_contained():
    assert gold_contained("The crisis began in October 1973, after the war.", "1973") == 1.0
    assert gold_contained("It is the Eiffel Tower!", "eiffel tower") == 1.0  # case, punctuation, articles
    assert gold_contained("restart", "art") == 0.0  # whole tokens only
    assert gold_contained("tower eiffel", "eiffel tower") == 0.0  # a contiguous phrase, in order
    assert gold_contained("anything at all", "the") == 0.0  # gold normalises to nothing


@pytest.mark.parametrize(
    "text, values",
    [
        ("1,234,567 people", [1234567]),
        ("$1.6 million", [1_600_000]),
        ("12%", [12]),
        ("twelve percent", [12]),
        ("twenty-one", [21]),
        ("three hundred and five", [305]),
        ("seventy-three thousand four hundred", [73_400]),
        ("a million", [1_000_000]),
        ("1.5 billion dollars", [1_500_000_000]),
        ("between 1961-1965", [1961, 1965]),  # a range, not 1961 and -1965
        ("-5 degrees", [-5]),
        ("one two three", [1, 2, 3]),  # units after a unit start a new number
        ("twenty, one", [20, 1]),  # a comma separates numbers
        ("the 1970s", [1970]),
        ("May 5, 1990", [5, 1990]),
        ("1,2345", [1, 2345]),  # not a thousands separator: groups are three digits
        ("3.25", [3.25]),
        ("no numbers here", []),
    ],
)
def test_parse_numbers(text, values):
    assert [n.value for n in parse_numbers(text)] == pytest.approx(values)


def test_parse_numbers_steps():
    # step = the unit of the last stated digit, scaled: "1.6 million" is stated to 0.1 million
    assert [n.step for n in parse_numbers("1973, 3.25, 1.6 million, two million, twelve")] == pytest.approx(
        [1, 0.01, 100_000, 1_000_000, 1]
    )
    with pytest.raises(TypeError, match="text must be a str"):
        parse_numbers(None)


def test_numeric_match_hand_worked():
    # gold 1.6 million (step 100,000 -> tolerance 50,000):
    assert numeric_match("about 1,600,000", "$1.6 million") == 1.0
    assert numeric_match("1.64 million", "1.6 million") == 1.0  # |1.64M - 1.6M| = 40,000 <= 50,000
    assert numeric_match("1.7 million", "1.6 million") == 0.0  # 100,000 > 50,000
    # gold 1,600,000 is stated to the unit: "1.64 million" is 40,000 off -> no
    assert numeric_match("1.64 million", "1,600,000") == 0.0
    # a year is matched exactly (a relative 1% tolerance would accept 1980 for 1973)
    assert numeric_match("in 1980", "1973") == 0.0
    assert numeric_match("It ended in 1973.", "1973") == 1.0
    # units ignored, number words read, extra numbers not penalised
    assert numeric_match("twelve percent in 2004", "12%") == 1.0
    # every gold number must be found: gold 1961 and 1965, prediction only 1961
    assert numeric_match("from 1961", "1961-1965") == 0.0
    assert numeric_match("1961 to 1965", "1961-1965") == 1.0
    assert numeric_match("Paris", "Paris") is None  # no number in the gold: does not apply
    assert numeric_match("nothing", "42") == 0.0


def test_score_answer_per_style():
    pred = "The tower was finished in 1889 in Paris."
    assert set(score_answer(pred, ["1889"])) == {"em", "f1"}
    assert set(score_answer(pred, ["1889"], metric_style="hotpotqa")) == {"em", "f1"}
    long = score_answer(pred, ["in Paris", "1889"], metric_style="long")
    # pred tokens [tower, was, finished, in, 1889, in, paris] (7).
    # vs [in, paris]: LCS 2 -> P 2/7, R 1, F = 2 * 2/7 / (9/7) = 4/9; vs [1889]: P 1/7, R 1 -> 1/4; max 4/9
    assert long["rouge_l"] == pytest.approx(4 / 9)
    # token F1 vs [in, paris]: shared min(2,1) in + paris = 2 -> same 4/9 here
    assert long["f1"] == pytest.approx(4 / 9)
    assert long["contains"] == 1.0 and long["em"] == 0.0
    num = score_answer("It was finished in eighteen eighty-nine? No: 1889.", ["1889", "Paris"], metric_style="numeric")
    assert num["numeric"] == 1.0 and num["contains"] == 1.0
    # "Paris" has no number, "1889" is not in the prediction -> numeric 0 (the max over the gold that applies)
    assert score_answer("in Paris", ["1889", "Paris"], metric_style="numeric")["numeric"] == 0.0
    assert score_answer("in Paris", ["Paris"], metric_style="numeric")["numeric"] is None
    # no answer (error): every metric that applies is 0; numeric stays None when it never applies
    assert score_answer(None, ["Paris"], metric_style="long") == {"em": 0.0, "f1": 0.0, "rouge_l": 0.0, "contains": 0.0}
    assert score_answer(None, ["Paris"], metric_style="numeric")["numeric"] is None
    assert score_answer(None, ["12"], metric_style="numeric")["numeric"] == 0.0
    with pytest.raises(ValueError, match="metric_style must be one of .*'numeric'.*got 'bleu'"):
        score_answer("x", ["x"], metric_style="bleu")
    with pytest.raises(ValueError, match="answers must not be empty"):
        score_answer("x", [], metric_style="long")


@settings(max_examples=200, deadline=None)
@given(texts, texts)
def test_long_metric_properties(pred, gold):
    r = rouge_l(pred, gold)
    assert 0.0 <= r <= 1.0
    assert r == pytest.approx(rouge_l(gold, pred))  # F with beta = 1 is symmetric
    assert r <= token_f1(pred, gold) + 1e-12  # an LCS is a common sub-bag: ROUGE-L never beats bag F1
    if gold_contained(pred, gold):
        assert rouge_l(pred, gold) > 0 and token_f1(pred, gold) > 0
