"""The generation layer's decoding under the HF readers, and the readers, on the tiny in-process LM
(real models under ``slow``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from longread.llm import GenRequest, LLMSpec
from longread.llm.hf import HFBackend, decode, render_chat, stop_token_ids
from longread.llm.prompts import parse_citations
from longread.models import ModelHub
from longread.pipelines.store import CorpusStore
from longread.readers.hf import HFReader, LongContextReader, clean_answer, head_tail
from longread.stage import RunContext
from longread.testing import ScriptedBackend
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
def backend(hub: ModelHub, tiny_lm_dir: Path) -> HFBackend:
    return HFBackend(LLMSpec(model=str(tiny_lm_dir)), RunContext(models=hub))


def _left_padded(be: HFBackend, prompts: list[str]):
    from longread.llm.hf import _left_pad, _pad_id

    return _left_pad([be.encode(p) for p in prompts], _pad_id(be.tokenizer), be.device)


# --- decoding -----------------------------------------------------------------------------------


def test_rows_stopping_at_different_steps_in_one_batch_equal_single(backend: HFBackend) -> None:
    model, tok = backend.model, backend.tokenizer
    prompts = [backend.render([{"role": "user", "content": q}]) for q in QUESTIONS]
    # The random tiny model never says <|im_end|>; make the 4th token it produces for the
    # first prompt a stop token so sequences stop at different steps inside one batch.
    probe = backend.generate([GenRequest(prompt=prompts[0], max_new_tokens=8)])[0]
    stop = stop_token_ids(model, tok) | {probe.token_ids[3]}

    def run(ps: list[str]):
        ids, mask, pos = _left_padded(backend, ps)
        return decode(model, tok, input_ids=ids, attention_mask=mask, position_ids=pos, max_new_tokens=12, stop_ids=stop)

    batched = run(prompts)
    single = [run([p])[0] for p in prompts]
    assert [d.text for d in batched] == [d.text for d in single]
    assert [d.steps for d in batched] == [d.steps for d in single]
    assert any(d.finish_reason == "stop" for d in batched), "no sequence stopped early; the test lost its point"
    assert any(d.finish_reason == "length" and d.steps == 12 for d in batched)
    for d in batched:
        assert 0 < d.ttft_s <= d.seconds


def test_decode_matches_transformers_greedy(backend: HFBackend) -> None:
    model, tok = backend.model, backend.tokenizer
    prompt = backend.render([{"role": "user", "content": QUESTIONS[2]}])
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    ref = model.generate(**enc, max_new_tokens=10, do_sample=False, eos_token_id=None)
    n = enc["input_ids"].shape[1]
    ours = decode(model, tok, input_ids=enc["input_ids"], position_ids=torch.arange(n)[None], max_new_tokens=10,
                  stop_ids=frozenset())[0]
    assert ours.text == tok.decode(ref[0, n:], skip_special_tokens=True)
    assert ours.steps == 10


def test_generate_validates_and_handles_empty(backend: HFBackend) -> None:
    assert backend.generate([]) == []
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        GenRequest(prompt="x", max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        backend.generate([GenRequest(prompt="x", max_new_tokens=1), GenRequest(prompt="", max_new_tokens=1)])


def test_stop_tokens_include_end_of_turn(backend: HFBackend) -> None:
    tok = backend.tokenizer
    assert tok.convert_tokens_to_ids("<|im_end|>") in backend.stop_ids
    assert tok.convert_tokens_to_ids("<|endoftext|>") in backend.stop_ids


def test_chat_template_and_plain_models(backend: HFBackend) -> None:
    prompt = backend.render([{"role": "user", "content": "hello"}])
    assert prompt.endswith("<|im_start|>assistant\n") and "hello" in prompt

    class NoTemplate:
        chat_template = None

    # A base model without a chat template reads the message as it is.
    assert render_chat(NoTemplate(), [{"role": "user", "content": "x"}]) == "x"


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


SHORT_RAG = (
    "Answer the question using the passages below. Reply with only the answer, as a short phrase "
    "of a few words, with no explanation.\n\n{context}\n\nQuestion: {question}\nAnswer:"
)
SHORT_LONG = SHORT_RAG.replace("passages below", "document below")


def test_short_style_is_the_prompt_readers_always_had(ctx: RunContext, tiny_lm_dir: Path) -> None:
    """``prompt: short`` (the default) must send exactly the text earlier versions sent."""
    rag = HFReader({"model": str(tiny_lm_dir)})
    assert rag._messages("CTX", "Q?") == [{"role": "user", "content": SHORT_RAG.format(context="CTX", question="Q?")}]
    lc = LongContextReader({"model": str(tiny_lm_dir)})
    assert lc._messages("DOC", "Q?")[0]["content"] == SHORT_LONG.format(context="DOC", question="Q?")


def test_rag_reader_prompt_and_usage(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = HFReader({"model": str(tiny_lm_dir), "max_passages": 3, "max_new_tokens": 6})
    reader.setup(ctx)
    state = reader([_state(ctx)])[0]
    chunks = ctx.require_store().chunks
    for i in range(3):
        assert f"[{i + 1}] {chunks[i].text.strip()}" in state.context
    assert "[4]" not in state.context and chunks[3].text.strip() not in state.context
    be = reader.backend
    prompt = be.render([{"role": "user", "content": SHORT_RAG.format(context=state.context, question=state.question.question)}])
    [u] = state.usage
    assert (u.stage, u.part, u.backend, u.model) == ("reader.hf", None, "hf", str(tiny_lm_dir))
    assert u.calls == 1 and u.prompt_tokens == len(be.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= u.new_tokens <= 6
    assert u.ttft_s > 0 and u.seconds >= u.ttft_s
    t = state.trace
    assert not {"reader_tokens", "ttft_s", "new_tokens", "llm_calls", "llm_tokens", "timings"} & set(t)
    assert t["reader_truncated"] is False
    assert isinstance(state.answer, str) and state.answer == clean_answer(t["raw_answer"])
    # A short answer marks nothing: its citations are the three passages it read, not cited.
    assert [(c.n, c.chunk_id, c.text, c.cited) for c in state.citations] == [
        (i + 1, chunks[i].id, chunks[i].text, False) for i in range(3)
    ]


def test_rag_reader_batch_equals_single_and_counts_calls(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = HFReader({"model": str(tiny_lm_dir), "max_new_tokens": 5, "batch_size": 3})
    assert reader.params.llm.batch_size == 3
    reader.setup(ctx)
    states = [_state(ctx, f"q{i}", n=i + 1) for i in range(4)]
    batched = [s.answer for s in reader(states)]
    single = [reader([_state(ctx, f"q{i}", n=i + 1)])[0].answer for i in range(4)]
    assert batched == single
    again = reader([states[0]])[0]
    assert again.usage_for("reader.hf").calls == 2


def test_rag_reader_truncates_to_budget(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = HFReader({"model": str(tiny_lm_dir), "max_context_tokens": 40, "max_passages": 10, "max_new_tokens": 2})
    reader.setup(ctx)
    state = reader([_state(ctx, n=10)])[0]
    assert state.trace["reader_truncated"] is True
    assert reader.backend.count_tokens(state.context) <= 40 + 2  # re-tokenisation slack
    assert state.context.startswith("[1] ")


def test_rag_reader_needs_setup(tiny_lm_dir: Path, ctx: RunContext) -> None:
    with pytest.raises(RuntimeError, match="call setup"):
        HFReader({"model": str(tiny_lm_dir)})([_state(ctx)])


def test_reader_params_are_validated() -> None:
    with pytest.raises(ValueError, match="max_new_tokens must be in 1..8192 or null"):
        HFReader({"max_new_tokens": 0})
    with pytest.raises(ValueError, match="max_passages must be >= 1, got 0"):
        HFReader({"max_passages": 0})
    with pytest.raises(ValueError, match="max_context_tokens must be >= 16, got 3"):
        LongContextReader({"max_context_tokens": 3})
    with pytest.raises(ValueError, match="max_passages"):
        LongContextReader({"max_passages": 3})  # extra fields are forbidden
    with pytest.raises(ValueError, match="cannot 'cite'"):
        LongContextReader({"prompt": "cite"})
    with pytest.raises(ValueError, match="unknown placeholder"):
        HFReader({"prompt": "{context} {question} {answer}"})
    assert HFReader().params.model == "qwen2.5-0.5b-instruct"
    assert HFReader().params.answer_tokens == 32
    assert HFReader({"prompt": "free"}).params.answer_tokens == 256


def test_long_context_keeps_head_and_tail(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = LongContextReader({"model": str(tiny_lm_dir), "max_context_tokens": 64, "max_new_tokens": 2})
    reader.setup(ctx)
    state = reader([_state(ctx, n=0, doc_ids=["long"])])[0]
    assert state.trace["reader_truncated"] is True
    assert state.context.startswith("Long\nw0 w1 w2")
    assert state.context.endswith("w2998 w2999")
    assert "w1500" not in state.context
    assert [(u.stage, u.calls) for u in state.usage] == [("reader.long_context", 1)]
    # what the funnel rebuilds the view from: the joined text's first and last characters read
    head, tail = state.trace["context_kept_chars"]
    full = "Long\n" + " ".join(f"w{i}" for i in range(3000))
    assert 0 < head < 200 and 0 < tail < 200
    assert state.context == full[:head] + full[len(full) - tail:]


def test_long_context_short_document_is_whole(ctx: RunContext, tiny_lm_dir: Path) -> None:
    reader = LongContextReader({"model": str(tiny_lm_dir), "max_new_tokens": 2})
    reader.setup(ctx)
    state = reader([_state(ctx, n=0, doc_ids=["freedonia"])])[0]
    assert state.trace["reader_truncated"] is False
    assert "context_kept_chars" not in state.trace
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


# --- answer styles, on a scripted backend (known outputs) ------------------------------------------


class _Hub:
    """Serves one backend for any spec (what ``load_backend`` asks a hub for)."""

    def __init__(self, backend) -> None:
        self.be = backend

    def backend(self, spec, ctx=None):
        return self.be


def _scripted_ctx(ctx: RunContext, be) -> RunContext:
    src = ctx.require_store()
    docs = [d.model_copy(update={"meta": {"source": f"/data/{d.id}.txt"}}) for d in src.documents.values()]
    return RunContext(models=_Hub(be), store=CorpusStore(docs, src.chunks))


def test_cite_style_turns_markers_into_citations(ctx: RunContext) -> None:
    be = ScriptedBackend({"Freedonia": "Answer: Zorbatown is the capital [1]. Rivers flow east [3][9], [2, 3]."})
    reader = HFReader({"prompt": "cite", "max_passages": 3})
    reader.setup(_scripted_ctx(ctx, be))
    state = reader([_state(ctx)])[0]
    assert "numbered passages below" in be.prompts[0] and "[1] " in be.prompts[0] and "[3] " in be.prompts[0]
    assert state.answer == "Zorbatown is the capital [1]. Rivers flow east [3][9], [2, 3]."  # markers kept
    assert [c.n for c in state.citations] == parse_citations(state.answer, 3) == [1, 3, 2]
    chunks = ctx.require_store().chunks
    for c in state.citations:
        ch = chunks[c.n - 1]
        assert (c.chunk_id, c.doc_id, c.start, c.end, c.text) == (ch.id, ch.doc_id, ch.start, ch.end, ch.text)
        assert c.source == f"/data/{ch.doc_id}.txt" and c.page is None and c.cited


@pytest.mark.parametrize(
    "raw,answer,cited",
    [
        ("[2] Zorbatown", "Zorbatown [2]", [2]),  # small models put the marker first, like the passages
        ("Answer: Zorbatown\nSource: [1]", "Zorbatown [1]", [1]),
        ("Answer: Zorbatown.\nSources: 1 and 3", "Zorbatown [1][3].", [1, 3]),
        ("Zorbatown (passage 3) lies east.", "Zorbatown [3] lies east.", [3]),
        ("It is Zorbatown [Passage 1, 2].", "It is Zorbatown [1][2].", [1, 2]),
        ("It is Zorbatown.", "It is Zorbatown.", []),  # no marker: the passages read are listed, not cited
        ("The answer is 2.", "The answer is 2.", []),  # a bare number is an answer, not a marker
    ],
)
def test_cite_answers_are_cleaned_into_words_and_markers(ctx: RunContext, raw: str, answer: str, cited: list[int]) -> None:
    be = ScriptedBackend(default=raw)
    reader = HFReader({"prompt": "cite", "max_passages": 3})
    reader.setup(_scripted_ctx(ctx, be))
    state = reader([_state(ctx)])[0]
    assert (state.answer, state.trace["raw_answer"]) == (answer, raw)
    assert [c.n for c in state.citations if c.cited] == cited
    if not cited:
        assert [(c.n, c.cited) for c in state.citations] == [(1, False), (2, False), (3, False)]
    assert state.usage_for("reader.hf").calls == 1


def test_a_cite_answer_that_recites_its_passage_is_completed(ctx: RunContext) -> None:
    # "[1] " and then passage 1's opening words: the model started copying passage 1, not answering.
    opening = " ".join(ctx.require_store().chunks[0].text.split()[:4])
    be = ScriptedBackend({"First write the answer in words": f"[1] {opening}", "Reply with only the answer": "Zorbatown"})
    reader = HFReader({"prompt": "cite", "max_passages": 3})
    reader.setup(_scripted_ctx(ctx, be))
    state = reader([_state(ctx)])[0]
    assert state.answer == "Zorbatown [1]" and state.trace["raw_answer"] == f"[1] {opening}"
    # An answer in words of its own is kept as the model wrote it.
    be2 = ScriptedBackend({"First write the answer in words": "[1] It is Zorbatown", "Reply with only the answer": "X"})
    reader.setup(_scripted_ctx(ctx, be2))
    assert reader([_state(ctx)])[0].answer == "It is Zorbatown [1]" and len(be2.prompts) == 1


def test_a_marker_only_cite_answer_gets_its_words_from_the_marked_passages(ctx: RunContext) -> None:
    be = ScriptedBackend({"First write the answer in words": "[3][2]", "Reply with only the answer": "Zorbatown."})
    reader = HFReader({"prompt": "cite", "max_passages": 3})
    reader.setup(_scripted_ctx(ctx, be))
    state = reader([_state(ctx)])[0]
    assert state.answer == "Zorbatown [3][2]" and [c.n for c in state.citations] == [3, 2]
    first, second = be.prompts
    chunks = ctx.require_store().chunks
    # The completion reads only the marked passages, under their own numbers.
    assert f"[3] {chunks[2].text.strip()}" in second and f"[2] {chunks[1].text.strip()}" in second
    assert "[1] " not in second
    assert state.trace["cite_completion"] == "Zorbatown." and state.usage_for("reader.hf").calls == 2


def test_styles_and_templates_reach_the_model(ctx: RunContext) -> None:
    be = ScriptedBackend(default="Answer: It is Zorbatown.\nIt lies by the river.")
    free = HFReader({"prompt": "free"})
    free.setup(_scripted_ctx(ctx, be))
    s = free([_state(ctx)])[0]
    assert "a few sentences" in be.prompts[-1]
    assert s.answer == "It is Zorbatown.\nIt lies by the river."  # the free cleaner keeps lines
    span = HFReader({"prompt": "span"})
    span.setup(_scripted_ctx(ctx, be))
    assert span([_state(ctx)])[0].answer == "It is Zorbatown"  # first line, like short
    assert "copied exactly" in be.prompts[-1]
    tpl = HFReader({"prompt": "Q: {question}\nFACTS:\n{context}\nA:", "max_new_tokens": 3})
    tpl.setup(_scripted_ctx(ctx, be))
    t = tpl([_state(ctx, n=1)])[0]
    assert be.prompts[-1] == f"Q: What is the capital of Freedonia?\nFACTS:\n{t.context}\nA:"
    assert t.usage_for("reader.hf").new_tokens == 3


def test_a_failed_generation_fails_only_its_question(ctx: RunContext) -> None:
    from longread.llm import Generation

    class Flaky(ScriptedBackend):
        def generate(self, requests):
            out = super().generate(requests)
            return [Generation.failed("HTTP 503 from http://127.0.0.1:1/v1") if "football" in self.prompts[-len(out) + i]
                    else g for i, g in enumerate(out)]

    reader = HFReader({})
    reader.setup(_scripted_ctx(ctx, Flaky(default="Zorbatown")))
    ok, bad = _state(ctx, "ok"), _state(ctx, "bad")
    bad.question.question = "Where is the football?"
    reader([ok, bad])
    assert ok.answer == "Zorbatown" and "error" not in ok.trace
    assert bad.answer is None and "503" in bad.trace["error"] and bad.trace["error"].startswith("reader.hf:")
    assert bad.usage_for("reader.hf").calls == 1


def test_a_normal_run_warns_nothing(tmp_path: Path, tiny_lm_dir: Path) -> None:
    from longread.pipelines.pipeline import Pipeline

    cfg = {
        "name": "tiny-rag",
        "chunker": {"kind": "tokens", "size": 24, "overlap": 4},
        "stages": [
            {"key": "retriever.bm25", "params": {"top_k": 3}},
            {"key": "reranker.pointwise", "params": {"model": str(tiny_lm_dir), "top_n": 3}},
            {"key": "reranker.fullrank", "params": {"model": str(tiny_lm_dir), "top_n": 3, "max_new_tokens": 4}},
            {"key": "compressor.color", "params": {"model": str(tiny_lm_dir), "min_chars": 0, "max_new_tokens": 4}},
            {"key": "reader.hf", "params": {"model": str(tiny_lm_dir), "max_new_tokens": 4}},
        ],
    }
    pipe = Pipeline.from_config(cfg)
    pipe.index([DOC], tmp_path / "idx", show_progress=False)
    qs = [Question(id=f"q{i}", question=q, answers=["Zorbatown"]) for i, q in enumerate(QUESTIONS[:3])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        states = pipe.answer(qs, index_dir=tmp_path / "idx")
    assert all("error" not in s.trace and s.answer is not None for s in states), [s.trace.get("error") for s in states]
    assert {u.stage for u in states[0].usage} >= {"reranker.pointwise", "reranker.fullrank", "compressor.color", "reader.hf"}


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
        assert s.usage_for("reader.hf").new_tokens < 24  # stopped at end-of-turn, not at the limit
    lc = LongContextReader({"model": name, "max_new_tokens": 12})
    lc.setup(ctx)
    assert "zorbatown" in lc([_state(ctx, "q3", n=0, doc_ids=["f"])])[0].answer.lower()
