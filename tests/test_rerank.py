"""Tests for the LLM rerankers: parsing, prompts, window arithmetic, params, stages on the tiny LM."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longread import registry
from longread.config import ConfigError, parse_config
from longread.retrievers.rerankers import (
    FirstReranker,
    FullRankReranker,
    OverlapRanker,
    PointwiseReranker,
    SlidingWindowReranker,
    escape_ids,
    letter_ids,
    listwise_messages,
    parse_ranking,
    ranking_text,
    single_token_ids,
    sliding_window_rank,
    sliding_windows,
    truncate_words,
)
from longread.stage import RunContext
from longread.types import Chunk, Passage, QAState, Question

KEYS = ["reranker.fullrank", "reranker.sliding", "reranker.first", "reranker.pointwise"]


def _state(texts: list[str], question: str = "Who walked on the Moon?", qid: str = "q") -> QAState:
    ps = [
        Passage(chunk=Chunk(id=f"{qid}-c{i}", doc_id="d", text=t, start=0, end=len(t)), score=10.0 - i, scores={"retriever.bm25": 10.0 - i})
        for i, t in enumerate(texts)
    ]
    return QAState(question=Question(id=qid, question=question), passages=ps)


# -- parsing ---------------------------------------------------------------------------------


def test_parse_clean_ranking() -> None:
    r = parse_ranking("[3] > [1] > [2]", 3)
    assert (r.order, r.ranked, r.missing, r.incomplete) == ([2, 0, 1], 3, 0, False)


def test_parse_drops_out_of_range_and_repeats_and_appends_missing() -> None:
    r = parse_ranking("[4] > [9] > [4] > [0] > [2]", 5)
    assert r.order == [3, 1, 0, 2, 4]
    assert (r.ranked, r.missing, r.out_of_range, r.repeated, r.incomplete) == (2, 3, 2, 1, True)


@pytest.mark.parametrize("text", ["", "I cannot rank these.", "]]]>>[[[", "[-] > [abc]", "\x00\x01", "[" * 1000])
def test_parse_garbage_keeps_retrieval_order(text: str) -> None:
    r = parse_ranking(text, 4)
    assert r.order == [0, 1, 2, 3] and r.ranked == 0 and r.incomplete


@given(text=st.text(alphabet=st.sampled_from(list("[]>0123456789 ,abc\n")), max_size=200), n=st.integers(0, 30))
def test_parse_any_text_gives_a_permutation(text: str, n: int) -> None:
    r = parse_ranking(text, n)
    assert sorted(r.order) == list(range(n))
    assert r.ranked + r.missing == n and r.incomplete == (r.missing > 0)
    # Unranked passages follow in retrieval order.
    tail = r.order[r.ranked :]
    assert tail == sorted(tail)


def test_parse_bare_numbers_and_huge_numbers() -> None:
    assert parse_ranking("2 > 1", 3).order == [1, 0, 2]
    r = parse_ranking("[99999999999999999999] > [1]", 2)
    assert r.order == [0, 1] and r.out_of_range == 1
    assert parse_ranking("anything", 0).order == []


def test_parse_letter_ids() -> None:
    r = parse_ranking("[C] > [A] > [Z]", 3, ids=letter_ids(3))
    assert r.order == [2, 0, 1] and r.out_of_range == 1 and r.incomplete


def test_prompt_form() -> None:
    msgs = listwise_messages("what [1] is?", ["one two three four", "see [2] here"], word_budget=2)
    user = msgs[-1]["content"]
    assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
    assert "I will provide you with 2 passages" in user and "Search Query: what (1) is?." in user
    assert "[1] one two\n" in user and "[2] see (2)" in user
    assert "e.g., [2] > [1]" in user and "Only respond with the ranking results" in user
    assert truncate_words("  a  b\nc ", 5) == "a b c" and escape_ids("x [12] y") == "x (12) y"
    assert ranking_text([2, 0, 1]) == "[3] > [1] > [2]"


# -- sliding windows -------------------------------------------------------------------------


def test_window_arithmetic() -> None:
    assert sliding_windows(100, 20, 10) == [(80, 100), (70, 90), (60, 80), (50, 70), (40, 60), (30, 50), (20, 40), (10, 30), (0, 20)]
    assert sliding_windows(25, 20, 10) == [(5, 25), (0, 15)]
    assert sliding_windows(20, 20, 10) == [(0, 20)]
    assert sliding_windows(3, 20, 10) == [(0, 3)]
    assert sliding_windows(0, 20, 10) == [] and sliding_windows(1, 20, 10) == [(0, 1)]
    with pytest.raises(ValueError, match="stride=0"):
        sliding_windows(5, 2, 0)


def test_sliding_bubbles_the_best_from_the_back_to_the_front() -> None:
    texts = [f"filler {i}" for i in range(35)]
    texts[33] = "Neil Armstrong walked on the Moon"
    texts[5] = "the Moon"
    fake = OverlapRanker()
    [r] = sliding_window_rank([("Who walked on the Moon?", texts)], fake, window=10, stride=5)
    assert sorted(r.order) == list(range(35))
    assert r.order[:2] == [33, 5]
    # Windows visited back to front, each showing the current order's slice.
    seen = [[t for t in w[0][1]] for w in fake.calls]
    assert len(seen) == len(sliding_windows(35, 10, 5)) == r.windows == 6
    assert seen[0] == texts[25:35]
    assert seen[1][:5] == texts[20:25] and seen[1][5] == texts[33]  # the winner moved to the window's front


def test_sliding_batches_the_kth_windows_of_all_questions() -> None:
    fake = OverlapRanker()
    items = [("q a", [f"t{i}" for i in range(30)]), ("q b", ["x"] * 5), ("q c", [])]
    res = sliding_window_rank(items, fake, window=20, stride=10)
    assert [len(b) for b in fake.calls] == [2, 1]  # step 0: items 0 and 1; step 1: item 0 only
    assert [r.windows for r in res] == [2, 1, 0] and res[2].order == []


# -- params ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,params,msg",
    [
        ("reranker.fullrank", {"top_n": 0}, "top_n must be > 0, got 0"),
        ("reranker.fullrank", {"word_budget": -3}, "word_budget must be > 0, got -3"),
        ("reranker.fullrank", {"max_new_tokens": 0}, "max_new_tokens must be > 0 or null, got 0"),
        ("reranker.fullrank", {"keep": 0}, "keep must be > 0 or null, got 0"),
        ("reranker.fullrank", {"model": " "}, "model must be a non-empty"),
        ("reranker.fullrank", {"windw": 3}, "valid fields"),
        ("reranker.sliding", {"window": 10, "stride": 11}, "stride must be <= window, got stride=11 window=10"),
        ("reranker.sliding", {"window": 0}, "window must be > 0, got 0"),
        ("reranker.first", {"top_n": 53}, "top_n must be in 1..52"),
        ("reranker.pointwise", {"batch_size": 0}, "batch_size must be > 0, got 0"),
        ("reranker.fullrank", {"llm": {"backend": "openai", "model": "m"}}, "field 'llm': Value error, backend openai needs base_url"),
        ("reranker.first", {"llm": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:8080/v1"}},
         "stages[0] (reranker.first): field 'llm': Value error, reranker.first needs logits from its model, which backend "
         "'openai' cannot give; use backend 'hf' or 'llamacpp'"),
        ("reranker.pointwise", {"llm": {"backend": "vllm", "model": "m"}}, "field 'llm': Value error, reranker.pointwise needs logits"),
        ("reranker.pointwise", {"llm": {"backend": "llamacpp", "model": "m.gguf"}, "batch_size": 2}, "batch_size is used only by backend hf"),
    ],
)
def test_bad_params_are_config_errors(key: str, params: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(msg)):
        parse_config({"name": "x", "stages": [{"key": key, "params": params}]})


def test_logit_rankers_accept_backends_with_logits() -> None:
    for key in ("reranker.first", "reranker.pointwise"):
        cfg = parse_config({"name": "x", "stages": [{"key": key, "params": {"llm": {"backend": "llamacpp", "model": "m.gguf"}}}]})
        assert cfg.build_stages()[0].params.llm.backend == "llamacpp"
    assert PointwiseReranker().params.llm.batch_size == 8  # its own default: prompts per forward pass
    assert PointwiseReranker({"batch_size": 2}).params.llm.batch_size == 2


def test_registry_and_cheap_init() -> None:
    for key in KEYS:
        stage = registry.get(key)()
        assert stage.backend is None  # nothing loaded before setup
    with pytest.raises(RuntimeError, match="setup"):
        FullRankReranker()([_state(["a", "b"])])


def test_letter_ids_limit() -> None:
    assert letter_ids(3) == ["A", "B", "C"] and letter_ids(52)[-1] == "z"
    with pytest.raises(ValueError, match="53"):
        letter_ids(53)


# -- stages on the tiny LM (its output is garbage by nature) --------------------------------


@pytest.fixture(scope="module")
def ctx(hub) -> RunContext:
    return RunContext(models=hub)


def _expected_fallback(text: str, n: int) -> list[int]:
    # Independent reading of a listwise answer: first occurrences of in-range [k], then the rest.
    got: list[int] = []
    for m in re.findall(r"\[\s*(\d{1,6})\s*\]", text):
        k = int(m) - 1
        if 0 <= k < n and k not in got:
            got.append(k)
    return got + [i for i in range(n) if i not in got]


TEXTS = ["Neil Armstrong walked on the Moon.", "Water boils at 100 degrees.", "Paris is the capital.", "Ice melts at 0."]


def test_fullrank_on_tiny_lm_falls_back_and_flags(tiny_lm_dir: Path, ctx: RunContext) -> None:
    from longread.llm import GenRequest

    stage = FullRankReranker(FullRankReranker.Params(model=str(tiny_lm_dir), max_new_tokens=12, keep=3))
    stage.setup(ctx)
    empty, one, four = stage([_state([]), _state(["only one"]), _state(TEXTS)])
    # What the model said, generated alone with the same prompt.
    msgs = listwise_messages(four.question.question, TEXTS, word_budget=100)
    [gen] = stage.backend.generate([GenRequest(messages=msgs, max_new_tokens=12)])
    order = _expected_fallback(gen.text, 4)
    assert [p.chunk.id for p in four.passages] == [f"q-c{i}" for i in order][:3]
    counts = four.trace["rerank_counts"]["reranker.fullrank"]
    assert four.trace["rerank_incomplete"] is (counts["missing"] > 0)
    assert counts["candidates"] == 4 and counts["ranked"] + counts["missing"] == 4
    u = four.usage_for("reranker.fullrank")
    assert (u.calls, u.prompt_tokens, u.new_tokens, u.backend) == (1, gen.prompt_tokens, gen.new_tokens, "hf")
    assert all(p.scores["retriever.bm25"] > 0 for p in four.passages)  # earlier scores are kept
    assert [p.score for p in four.passages] == sorted((p.score for p in four.passages), reverse=True)
    assert empty.passages == [] and empty.usage_for("reranker.fullrank").calls == 0
    assert [p.chunk.id for p in one.passages] == ["q-c0"] and one.trace["rerank_incomplete"] is False
    assert one.usage_for("reranker.fullrank").calls == 0
    assert not {"llm_calls", "llm_tokens", "timings"} & set(four.trace)


def test_sliding_on_tiny_lm_counts_windows(tiny_lm_dir: Path, ctx: RunContext) -> None:
    stage = SlidingWindowReranker(SlidingWindowReranker.Params(model=str(tiny_lm_dir), window=3, stride=2, max_new_tokens=4))
    stage.setup(ctx)
    [s] = stage([_state(TEXTS + ["five", "six"])])
    assert sorted(p.chunk.id for p in s.passages) == sorted(f"q-c{i}" for i in range(6))
    assert s.usage_for("reranker.sliding").calls == len(sliding_windows(6, 3, 2)) == 3
    assert s.trace["rerank_counts"]["reranker.sliding"]["candidates"] == 6


def test_first_on_tiny_lm_orders_by_identifier_logits(tiny_lm_dir: Path, ctx: RunContext) -> None:
    import torch

    stage = FirstReranker(FirstReranker.Params(model=str(tiny_lm_dir), top_n=3))
    stage.setup(ctx)
    a, b = stage([_state(TEXTS, qid="a"), _state(["solo"], qid="b")])
    model, tok = ctx.models.causal_lm(str(tiny_lm_dir))
    pieces = [tok.encode("[" + c, add_special_tokens=False) for c in "ABC"]
    prefill = "" if len(pieces[0]) == 1 else "["
    letters = [p[-1] for p in pieces]
    msgs = listwise_messages(a.question.question, TEXTS[:3], word_budget=100, ids=["A", "B", "C"])
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + prefill
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    want = sorted(range(3), key=lambda i: -float(logits[letters[i]]))
    assert [p.chunk.id for p in a.passages] == [f"a-c{i}" for i in want] + ["a-c3"]
    assert a.usage_for("reranker.first").calls == 1 and a.trace["rerank_incomplete"] is False
    assert a.usage_for("reranker.first").prompt_tokens == ids.shape[1]
    assert [p.chunk.id for p in b.passages] == ["b-c0"] and b.usage_for("reranker.first").calls == 0


def test_first_single_token_check(tiny_lm_dir: Path, ctx: RunContext) -> None:
    _, tok = ctx.models.causal_lm(str(tiny_lm_dir))
    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    toks, prefill = single_token_ids(encode, letter_ids(10))
    assert len(set(toks)) == 10 and prefill in ("", "[")
    with pytest.raises(ValueError, match="not a single token"):
        single_token_ids(encode, ["A", "q7#~"])


class _MergingTokenizer:
    """A stand-in tokenizer that merges '[' with a following letter, as Qwen2's does."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out, i = [], 0
        while i < len(text):
            if text[i] == "[" and i + 1 < len(text) and text[i + 1].isalpha():
                out.append(1000 + ord(text[i + 1]))
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out


def test_first_single_token_check_merged_form() -> None:
    toks, prefill = single_token_ids(_MergingTokenizer().encode, ["A", "B"])
    assert toks == [1000 + ord("A"), 1000 + ord("B")] and prefill == ""
    with pytest.raises(ValueError, match="not a single token"):
        single_token_ids(_MergingTokenizer().encode, ["A", "BC"])


def test_pointwise_on_tiny_lm_batches_and_is_batch_invariant(tiny_lm_dir: Path, ctx: RunContext) -> None:
    big = PointwiseReranker(PointwiseReranker.Params(model=str(tiny_lm_dir), top_n=3, batch_size=8))
    small = PointwiseReranker(PointwiseReranker.Params(model=str(tiny_lm_dir), top_n=3, batch_size=1))
    big.setup(ctx)
    small.setup(ctx)
    [x] = big([_state(TEXTS)])
    [y] = small([_state(TEXTS)])
    assert [p.chunk.id for p in x.passages] == [p.chunk.id for p in y.passages]
    assert [p.score for p in x.passages[:3]] == pytest.approx([p.score for p in y.passages[:3]], abs=1e-3)
    assert x.passages[-1].chunk.id == "q-c3"  # beyond top_n: kept after, below the ranked ones
    assert x.passages[-1].score < min(p.score for p in x.passages[:3])
    assert x.usage_for("reranker.pointwise").calls == 3
    [e] = big([_state([])])
    assert e.passages == [] and e.usage_for("reranker.pointwise").calls == 0


@pytest.mark.parametrize("name", ["rag_hybrid_fullrank", "rag_hybrid_sliding", "rag_bm25_first", "rag_hybrid_fullrank_color"])
def test_configs_with_rerankers_load(name: str) -> None:
    from longread.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    if not path.is_file():
        pytest.skip(f"{path.name} not present")
    cfg = load_config(path)
    assert any(s.key.startswith("reranker.") for s in cfg.stages)


class _Hub:
    def __init__(self, backend) -> None:
        self.be = backend

    def backend(self, spec, ctx=None):
        return self.be


def test_fullrank_follows_a_known_answer_and_a_failed_call_fails_its_question() -> None:
    from longread.llm import Generation
    from longread.testing import ScriptedBackend

    class Flaky(ScriptedBackend):
        def generate(self, requests):
            out = super().generate(requests)
            return [Generation.failed("connection refused") if "Broken" in self.prompts[-len(out) + i] else g
                    for i, g in enumerate(out)]

    stage = FullRankReranker({"max_new_tokens": 40})
    stage.setup(RunContext(models=_Hub(Flaky(default="[3] > [1] > [3] > [7]"))))
    good, bad = stage([_state(TEXTS, qid="g"), _state(TEXTS, question="Broken?", qid="b")])
    assert [p.chunk.id for p in good.passages] == ["g-c2", "g-c0", "g-c1", "g-c3"]
    counts = good.trace["rerank_counts"]["reranker.fullrank"]
    assert (counts["ranked"], counts["missing"], counts["repeated"], counts["out_of_range"]) == (2, 2, 1, 1)
    assert "error" not in good.trace and good.usage_for("reranker.fullrank").new_tokens > 0
    assert bad.trace["error"] == "reranker.fullrank: generation failed: connection refused"
    assert [p.chunk.id for p in bad.passages] == [f"b-c{i}" for i in range(4)]  # left as retrieved
