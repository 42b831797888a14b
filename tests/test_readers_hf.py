"""Greedy generation and the HF readers, on the tiny in-process LM (real models under ``slow``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from longread.models import ModelHub
from longread.pipelines.store import CorpusStore
from longread.readers.generate import chat_prompts, generate, stop_token_ids
from longread.readers.hf import HFReader, LongContextReader, clean_answer, head_tail
from longread.stage import RunContext
from longread.types import Chunk, Document, Passage, QAState, Question

QUESTIONS = [
    "What is the capital of Freedonia?",
    "Hi",
    "Where is the football? Mary went to the kitchen. John picked up the football and went on a long "
    "journey across 12 rivers, 3 mountains and the sea.",
    "2 + 2?",
    "Who wrote Hamlet, Macbeth and Othello?",
]


@pytest.fixture(scope="module")
def lm(hub: ModelHub, tiny_lm_dir: Path):
    return hub.causal_lm(str(tiny_lm_dir))


# --- generate ------------------------------------------------------------------------------------


def test_batched_generation_equals_single(lm) -> None:
    model, tok = lm
    prompts = chat_prompts(tok, [[{"role": "user", "content": q}] for q in QUESTIONS])
    # The random tiny model never says <|im_end|>; make the 4th token it produces for the
    # first prompt a stop token so sequences stop at different steps inside one batch.
    probe = generate(model, tok, prompts[:1], max_new_tokens=8, batch_size=1)[0]
    probe_ids = tok(probe.text, add_special_tokens=False)["input_ids"]
    stop = stop_token_ids(model, tok) | {probe_ids[3]}

    batched = generate(model, tok, prompts, max_new_tokens=12, batch_size=3, stop_ids=stop)
    single = [generate(model, tok, [p], max_new_tokens=12, batch_size=1, stop_ids=stop)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.new_tokens for g in batched] == [g.new_tokens for g in single]
    assert any(g.new_tokens < 12 for g in batched), "no sequence stopped early; the test lost its point"
    assert any(g.new_tokens == 12 for g in batched)
    for g, p in zip(batched, prompts):
        assert g.prompt_tokens == len(tok(p, add_special_tokens=False)["input_ids"])
        assert 0 < g.ttft_s <= g.seconds


def test_generate_matches_transformers_greedy(lm) -> None:
    model, tok = lm
    prompt = chat_prompts(tok, [[{"role": "user", "content": QUESTIONS[2]}]])[0]
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    ref = model.generate(**enc, max_new_tokens=10, do_sample=False, eos_token_id=None)
    ours = generate(model, tok, [prompt], max_new_tokens=10, stop_ids=set())[0]
    assert ours.text == tok.decode(ref[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert ours.new_tokens == 10


def test_generate_validates_and_handles_empty(lm) -> None:
    model, tok = lm
    assert generate(model, tok, [], max_new_tokens=4) == []
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        generate(model, tok, ["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        generate(model, tok, ["x"], max_new_tokens=1, batch_size=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, tok, ["x", ""], max_new_tokens=1)


def test_stop_tokens_include_end_of_turn(lm) -> None:
    model, tok = lm
    ids = stop_token_ids(model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids
    assert tok.convert_tokens_to_ids("<|endoftext|>") in ids


def test_chat_prompts_need_a_template(lm) -> None:
    _, tok = lm
    prompt = chat_prompts(tok, [[{"role": "user", "content": "hello"}]])[0]
    assert prompt.endswith("<|im_start|>assistant\n") and "hello" in prompt

    class NoTemplate:
        chat_template = None
        name_or_path = "plain"

    with pytest.raises(ValueError, match="'plain' has no chat_template"):
        chat_prompts(NoTemplate(), [[{"role": "user", "content": "x"}]])


# --- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  Zorbatown.\nBecause the passage says so.", "Zorbatown"),
        ("Answer: Paris", "Paris"),
        ('"Neil Armstrong"', "Neil Armstrong"),
        ("the U.S.", "the U.S."),
        ("3.5.", "3.5"),
        ("\n\n  42 \n", "42"),
        ("", ""),
        ("Wait...", "Wait..."),
    ],
)
def test_clean_answer(raw: str, clean: str) -> None:
    assert clean_answer(raw) == clean


def test_head_tail_keeps_both_ends() -> None:
    ids = list(range(100))
    assert head_tail(ids, 10) == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert head_tail(ids, 11) == [0, 1, 2, 3, 4, 94, 95, 96, 97, 98, 99]
    assert head_tail(ids, 200) == ids
    assert head_tail(ids, 0) == []


# --- readers ------------------------------------------------------------------------------------

DOC = Document(
    id="freedonia", text="The capital of Freedonia is Zorbatown. " + " ".join(f"River {i} flows east." for i in range(12))
)


def _chunks(doc: Document, size: int = 40) -> list[Chunk]:
    out = []
    for i, start in enumerate(range(0, len(doc.text), size)):
        end = min(len(doc.text), start + size)
        out.append(Chunk(id=f"{doc.id}#{i}", doc_id=doc.id, text=doc.text[start:end], start=start, end=end))
    return out


@pytest.fixture(scope="module")
def ctx(hub: ModelHub) -> RunContext:
    long_doc = Document(id="long", text=" ".join(f"w{i}" for i in range(3000)), title="Long")
    docs = [DOC, long_doc]
    chunks = [c for d in docs for c in _chunks(d)]
    return RunContext(models=hub, store=CorpusStore(docs, chunks))


def _state(ctx: RunContext, qid: str = "q1", n: int = 4, **kw) -> QAState:
    chunks = ctx.require_store().chunks[:n]
    passages = [Passage(chunk=c, score=1.0 - i / 10) for i, c in enumerate(chunks)]
    return QAState(question=Question(id=qid, question="What is the capital of Freedonia?", **kw), passages=passages)


def test_rag_reader_prompt_and_trace(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = HFReader({"model": str(tiny_lm_dir), "max_passages": 3, "max_new_tokens": 6})
    reader.setup(ctx)
    state = reader([_state(ctx)])[0]
    chunks = ctx.require_store().chunks
    for i in range(3):
        assert f"[{i + 1}] {chunks[i].text.strip()}" in state.context
    assert "[4]" not in state.context and chunks[3].text.strip() not in state.context
    tok = reader.tokenizer
    prompt = chat_prompts(tok, [reader._message(state.context, state.question.question)])[0]
    t = state.trace
    assert t["reader_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= t["new_tokens"] <= 6
    assert t["ttft_s"] > 0 and t["timings"]["reader.hf"] > 0
    assert t["llm_calls"] == {"reader.hf": 1}
    assert t["llm_tokens"] == {"reader.hf": t["reader_tokens"] + t["new_tokens"]}
    assert t["reader_truncated"] is False
    assert isinstance(state.answer, str) and state.answer == clean_answer(t["raw_answer"])


def test_rag_reader_batch_equals_single_and_counts_calls(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = HFReader({"model": str(tiny_lm_dir), "max_new_tokens": 5, "batch_size": 3})
    reader.setup(ctx)
    states = [_state(ctx, f"q{i}", n=i + 1) for i in range(4)]
    batched = [s.answer for s in reader(states)]
    single = [reader([_state(ctx, f"q{i}", n=i + 1)])[0].answer for i in range(4)]
    assert batched == single
    again = reader([states[0]])[0]
    assert again.trace["llm_calls"] == {"reader.hf": 2}


def test_rag_reader_truncates_to_budget(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = HFReader({"model": str(tiny_lm_dir), "max_context_tokens": 40, "max_passages": 10, "max_new_tokens": 2})
    reader.setup(ctx)
    state = reader([_state(ctx, n=10)])[0]
    assert state.trace["reader_truncated"] is True
    tok = reader.tokenizer
    assert len(tok(state.context, add_special_tokens=False)["input_ids"]) <= 40 + 2  # re-tokenisation slack
    assert state.context.startswith("[1] ")


def test_rag_reader_needs_setup(tiny_lm_dir: Path, ctx: RunContext) -> None:
    with pytest.raises(RuntimeError, match="call setup"):
        HFReader({"model": str(tiny_lm_dir)})([_state(ctx)])


def test_reader_params_are_validated() -> None:
    with pytest.raises(ValueError, match="max_new_tokens must be in 1..4096, got 0"):
        HFReader({"max_new_tokens": 0})
    with pytest.raises(ValueError, match="max_passages must be >= 1, got 0"):
        HFReader({"max_passages": 0})
    with pytest.raises(ValueError, match="max_context_tokens must be >= 16, got 3"):
        LongContextReader({"max_context_tokens": 3})
    with pytest.raises(ValueError, match="max_passages"):
        LongContextReader({"max_passages": 3})  # extra fields are forbidden
    assert HFReader().params.model == "qwen2.5-0.5b-instruct"
    assert HFReader().params.max_new_tokens == 32


def test_long_context_keeps_head_and_tail(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = LongContextReader({"model": str(tiny_lm_dir), "max_context_tokens": 64, "max_new_tokens": 2})
    reader.setup(ctx)
    state = reader([_state(ctx, n=0, doc_ids=["long"])])[0]
    assert state.trace["reader_truncated"] is True
    assert state.context.startswith("Long\nw0 w1 w2")
    assert state.context.endswith("w2998 w2999")
    assert "w1500" not in state.context
    assert state.trace["llm_calls"] == {"reader.long_context": 1}


def test_long_context_short_document_is_whole(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = LongContextReader({"model": str(tiny_lm_dir), "max_new_tokens": 2})
    reader.setup(ctx)
    state = reader([_state(ctx, n=0, doc_ids=["freedonia"])])[0]
    assert state.trace["reader_truncated"] is False
    assert state.context == DOC.text.strip()


def test_long_context_errors(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = LongContextReader({"model": str(tiny_lm_dir), "max_new_tokens": 2})
    reader.setup(ctx)
    with pytest.raises(ValueError, match="question 'q1' has no doc_ids"):
        reader([_state(ctx)])
    with pytest.raises(KeyError, match="document 'nope', which is not in the index"):
        reader([_state(ctx, doc_ids=["nope"])])
    no_store = RunContext(models=ctx.models)
    with pytest.raises(RuntimeError, match="no index is open"):
        LongContextReader({"model": str(tiny_lm_dir)}).setup(no_store)


# --- real models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_hub() -> ModelHub:
    # The default cache dir: packs are converted once per machine, not once per test run.
    return ModelHub()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-0.5b-instruct"])
def test_real_reader_answers_from_the_passage(real_hub: ModelHub, name: str) -> None:
    from longread.models.packs import pack_status

    if not pack_status(name).installed:
        pytest.skip(f"{name} pack not installed: {pack_status(name).problem}")
    doc = Document(id="f", text="The capital of Freedonia is Zorbatown. Freedonia is a small country.")
    store = CorpusStore([doc], _chunks(doc, size=200))
    ctx = RunContext(models=real_hub, store=store)
    reader = HFReader({"model": name, "max_new_tokens": 24})
    reader.setup(ctx)
    states = [_state(ctx, "q1", n=1), _state(ctx, "q2", n=1, doc_ids=["f"])]
    out = reader(states)
    for s in out:
        assert "zorbatown" in s.answer.lower(), s.trace["raw_answer"]
        assert s.trace["new_tokens"] < 24  # stopped at end-of-turn, not at the limit
    lc = LongContextReader({"model": name, "max_new_tokens": 12})
    lc.setup(ctx)
    assert "zorbatown" in lc([_state(ctx, "q3", n=0, doc_ids=["f"])])[0].answer.lower()
