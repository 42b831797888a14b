"""reader.refrag mechanics on the tiny in-process LM and encoder; one real-model answer (slow)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from longread import registry
from longread.config import ConfigError, parse_config
from longread.llm.hf import decode
from longread.llm.prompts import clean_answer
from longread.readers.refrag import (
    PROMPT,
    ChunkStore,
    Projector,
    RefragReader,
    build_inputs,
    chunk_ids,
    decode_embeds,
    load_projector,
    prompt_parts,
    resolve_projector_path,
    save_projector,
    select_expanded,
    Segment,
    PASSAGE_SEPARATOR,
)
from longread.stage import RunContext
from longread.types import Chunk, Passage, QAState, Question

CONTEXT = (
    "The capital of Freedonia is Zorbatown. It was founded in 1742 by traders who crossed the river. "
    "Paris is the capital of France; Berlin is the capital of Germany, and Rome is the capital of Italy. "
    "In 1969, Apollo 11 landed on the Moon. Water boils at 100 degrees Celsius at sea level."
)


def _stage(hub, lm, enc, tmp_path: Path | None = None, **kw) -> RefragReader:
    params = {"model": str(lm), "encoder": str(enc), "projector": "random", "k": 8, "max_new_tokens": 6}
    params.update(kw)
    st = RefragReader(RefragReader.Params(**params))
    st.setup(RunContext(models=hub, cache_dir=tmp_path))
    return st


def _usage(state: QAState):
    (u,) = [u for u in state.usage if u.stage == "reader.refrag"]
    return u


def _state(context: str | None = CONTEXT, question: str = "What is the capital of Freedonia?", passages=()):
    ps = [
        Passage(chunk=Chunk(id=f"c{i}", doc_id="d", text=t, start=0, end=len(t)), score=1.0)
        for i, t in enumerate(passages)
    ]
    return QAState(question=Question(id="q1", question=question), context=context, passages=ps)


def test_registered():
    assert registry.get("reader.refrag") is RefragReader


@pytest.mark.parametrize("n,k", [(0, 16), (1, 16), (16, 16), (17, 16), (100, 8), (100, 32), (5, 64)])
def test_chunk_ids_cover_the_context(n, k):
    ids = list(range(n))
    chunks = chunk_ids(ids, k)
    assert [t for c in chunks for t in c] == ids
    assert all(len(c) == k for c in chunks[:-1])
    assert len(chunks) == math.ceil(n / k)


def test_select_expanded_takes_most_similar_floor_fraction():
    sims = [0.1, 0.9, 0.5, 0.7, 0.2]
    assert select_expanded(sims, 0.0) == set()
    assert select_expanded(sims, 0.4) == {1, 3}
    assert select_expanded(sims, 0.5) == {1, 3}  # floor(2.5)
    assert select_expanded(sims, 1.0) == {0, 1, 2, 3, 4}


def test_projector_shapes_and_roundtrip(tmp_path):
    net = Projector.make(384, 576)
    assert net(torch.zeros(3, 384)).shape == (3, 576)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 384 * 576 + 576 + 576 * 576 + 576
    path = tmp_path / "p.safetensors"
    save_projector(net, path, {"encoder": "e", "model": "m", "k": 16})
    back, meta = load_projector(path, in_dim=384, out_dim=576, k=16)
    x = torch.randn(2, 384)
    assert torch.equal(back(x), net(x))
    assert meta["encoder"] == "e" and meta["in_dim"] == "384"
    with pytest.raises(ValueError, match="384 -> 576"):
        load_projector(path, in_dim=32, out_dim=576)
    with pytest.raises(ValueError, match="k=16"):
        load_projector(path, in_dim=384, out_dim=576, k=8)


def test_missing_projector_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="longread train refrag"):
        resolve_projector_path("default", encoder="some-encoder", model="some-model", k=16)
    with pytest.raises(FileNotFoundError, match="longread train refrag"):
        resolve_projector_path(str(tmp_path / "nope.safetensors"), encoder="e", model="m", k=16)
    assert resolve_projector_path("random", encoder="e", model="m", k=16) is None


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("k", 0, "k must be in 1..64"),
        ("k", 65, "got 65"),
        ("expand_fraction", 1.5, "got 1.5"),
        ("expand_fraction", -0.1, "got -0.1"),
        ("max_new_tokens", 0, "max_new_tokens must be in 1..8192"),
        ("prompt", "cite", "prompt 'cite' needs numbered passages"),
        ("prompt", "{question} only", "must contain {context}"),
        ("max_context_tokens", -5, "got -5"),
        ("batch_size", 0, "batch_size must be > 0"),
        ("projector", " ", "projector must be a non-empty"),
    ],
)
def test_bad_params(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        RefragReader.Params(**{field: value})


def test_unknown_param_rejected():
    with pytest.raises(ValueError, match="extra"):
        RefragReader.Params(chunk_size=16)


def test_setup_without_projector_raises(hub, tiny_lm_dir, tiny_encoder_dir):
    st = RefragReader(RefragReader.Params(model=str(tiny_lm_dir), encoder=str(tiny_encoder_dir)))
    with pytest.raises(FileNotFoundError, match="longread train refrag"):
        st.setup(RunContext(models=hub))


def test_decoder_input_length_counts_vectors_expanded_tokens_and_prompt(hub, tiny_lm_dir, tiny_encoder_dir):
    for frac in (0.0, 0.25, 0.5, 1.0):
        st = _stage(hub, tiny_lm_dir, tiny_encoder_dir, expand_fraction=frac)
        state = _state()
        x, counts = st.prepare(state)
        tok = st.tokenizer
        ids = tok(CONTEXT, add_special_tokens=False)["input_ids"]
        chunks = chunk_ids(ids, 8)
        parts = prompt_parts(tok, state.question.question)
        expanded = math.floor(frac * len(chunks) + 1e-9)
        assert counts["chunks_total"] == len(chunks)
        assert counts["chunks_expanded"] == expanded
        # Which chunks expand is the policy's choice; the count of their tokens is what we check.
        store = st.chunks.get_many([CONTEXT])[0]
        q = st.encoder.encode([state.question.question], kind="query")[0]
        chosen = select_expanded([float(e @ q) for e in store.embeddings], frac)
        n_exp_tokens = sum(len(chunks[i]) for i in chosen)
        want = len(parts.prefix) + (len(chunks) - expanded) + n_exp_tokens + len(parts.suffix)
        assert counts["positions"] == want == x.shape[0]
        assert x.shape[1] == st.model.config.hidden_size


def test_full_expansion_equals_plain_token_prefill(hub, tiny_lm_dir, tiny_encoder_dir):
    st = _stage(hub, tiny_lm_dir, tiny_encoder_dir, expand_fraction=1.0, k=8)
    passages = [CONTEXT[:120], CONTEXT[120:]]
    state = _state(context=None, passages=passages)
    x, counts = st.prepare(state)
    tok = st.tokenizer
    parts = prompt_parts(tok, state.question.question)
    sep = tok(PASSAGE_SEPARATOR, add_special_tokens=False)["input_ids"]
    ids = (
        parts.prefix
        + tok(passages[0], add_special_tokens=False)["input_ids"]
        + sep
        + tok(passages[1], add_special_tokens=False)["input_ids"]
        + parts.suffix
    )
    assert counts["positions"] == len(ids)
    with torch.no_grad():
        a = st.model(inputs_embeds=x[None]).logits
        b = st.model(input_ids=torch.tensor([ids])).logits
    assert torch.equal(a, b)
    # And the stage's answer equals the one decoding loop run on the plain tokens.
    (plain,) = decode(st.model, tok, input_ids=torch.tensor([ids]), position_ids=torch.arange(len(ids))[None],
                      max_new_tokens=6)
    (embedded,) = decode_embeds(st.model, tok, [build_inputs(st.model, [Segment(ids=ids)])], max_new_tokens=6)
    assert embedded.ids == plain.ids and len(plain.ids) > 0
    out = st([state])[0]
    assert out.answer == clean_answer(plain.text)
    assert _usage(out).new_tokens == plain.steps and _usage(out).prompt_tokens == len(ids)


def test_compression_changes_the_input_and_counts_trace(hub, tiny_lm_dir, tiny_encoder_dir):
    st = _stage(hub, tiny_lm_dir, tiny_encoder_dir, expand_fraction=0.0)
    out = st([_state()])[0]
    tr, u = out.trace, _usage(out)
    assert tr["chunks_expanded"] == 0 and tr["chunks_total"] > 3
    assert u.prompt_tokens < len(st.tokenizer(CONTEXT, add_special_tokens=False)["input_ids"])
    assert u.ttft_s > 0 and u.calls == 1 and 1 <= u.new_tokens <= 6 and (u.backend, u.prefill_tokens) == ("hf", 0)
    assert not {"reader_tokens", "ttft_s", "new_tokens", "llm_calls", "llm_tokens"} & set(tr)  # typed usage only
    assert out.usage_for("reader.refrag").seconds > 0  # stage time is typed usage (longread.stage.timed)
    assert isinstance(out.answer, str)


def test_batched_equals_single(hub, tiny_lm_dir, tiny_encoder_dir):
    st = _stage(hub, tiny_lm_dir, tiny_encoder_dir, expand_fraction=0.5, batch_size=3)
    states = [_state(context=CONTEXT[: 60 * (i + 1)], question=f"Question number {i}?") for i in range(3)]
    batched = [s.answer for s in st([s.model_copy(deep=True) for s in states])]
    single = [st([s.model_copy(deep=True)])[0].answer for s in states]
    assert batched == single


def test_embedding_cache_reused_in_memory_and_on_disk(hub, tiny_lm_dir, tiny_encoder_dir, tmp_path):
    st = _stage(hub, tiny_lm_dir, tiny_encoder_dir, tmp_path=tmp_path)
    n_chunks = len(chunk_ids(st.tokenizer(CONTEXT, add_special_tokens=False)["input_ids"], 8))
    st([_state(question="First question?")])
    assert st.chunks.stats["encoded_chunks"] == n_chunks
    st([_state(question="Second question?"), _state(question="Third?")])
    assert st.chunks.stats["encoded_chunks"] == n_chunks  # no encoder work for the same document
    assert st.chunks.stats["memory_hits"] == 2
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1
    # A fresh stage (another worker, a later run) reads the disk cache instead of encoding.
    st2 = _stage(hub, tiny_lm_dir, tiny_encoder_dir, tmp_path=tmp_path)
    a = st2.chunks.get_many([CONTEXT])[0]
    assert st2.chunks.stats == {"encoded_chunks": 0, "memory_hits": 0, "disk_hits": 1}
    b = st.chunks.get_many([CONTEXT])[0]
    assert a.chunks == b.chunks and (a.embeddings == b.embeddings).all()
    # Another k is another cache entry.
    st3 = _stage(hub, tiny_lm_dir, tiny_encoder_dir, tmp_path=tmp_path, k=16)
    st3.chunks.get_many([CONTEXT])
    assert st3.chunks.stats["encoded_chunks"] > 0


def test_chunk_store_uses_decoder_chunks_for_encoder_text(hub, tiny_lm_dir, tiny_encoder_dir):
    """Each embedding is the encoder's embedding of exactly that decoder chunk's text."""
    lm, tok = hub.causal_lm(str(tiny_lm_dir))
    enc = hub.encoder(str(tiny_encoder_dir))
    store = ChunkStore(tok, enc, 8, cache_dir=None, key="t")
    item = store.get_many([CONTEXT])[0]
    want = enc.encode([tok.decode(c) for c in item.chunks])
    assert item.embeddings.shape == (len(item.chunks), enc.dim)
    assert abs(item.embeddings - want).max() < 1e-5


def test_over_budget_context_raises(hub, tiny_lm_dir, tiny_encoder_dir):
    st = _stage(hub, tiny_lm_dir, tiny_encoder_dir, max_context_tokens=10)
    with pytest.raises(ValueError, match="max_context_tokens=10"):
        st([_state()])


def test_no_context_raises(hub, tiny_lm_dir, tiny_encoder_dir):
    st = _stage(hub, tiny_lm_dir, tiny_encoder_dir)
    with pytest.raises(ValueError, match="no passages, no context"):
        st([_state(context=None)])


def test_yaml_config_validates():
    from longread.config import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "refrag.yaml")
    assert any(s.key == "reader.refrag" for s in cfg.stages)


def test_short_prompt_is_todays_text_and_other_styles_change_it(hub, tiny_lm_dir, tiny_encoder_dir):
    st = _stage(hub, tiny_lm_dir, tiny_encoder_dir)
    tok, q = st.tokenizer, "Who founded Zorbatown?"
    today = tok.apply_chat_template([{"role": "user", "content": PROMPT.replace("{question}", q).replace("{context}", "CTX")}],
                                    tokenize=False, add_generation_prompt=True)
    before, after = today.split("CTX")
    parts = prompt_parts(tok, q)
    assert parts.prefix == tok(before, add_special_tokens=False)["input_ids"]
    assert parts.suffix == tok(after, add_special_tokens=False)["input_ids"]
    free = prompt_parts(tok, q, "free")
    assert free.prefix != parts.prefix and "Question: Who founded Zorbatown?\nAnswer:" in tok.decode(free.suffix)
    tpl = prompt_parts(tok, q, "Passages:\n{context}\nQ: {question}")
    assert tok.decode(tpl.suffix).startswith("\nQ: Who founded Zorbatown?")
    long = _stage(hub, tiny_lm_dir, tiny_encoder_dir, prompt="free", max_new_tokens=None)
    assert long.params.answer_tokens == 256
    # Only the prompt around the context changes: the context's positions stay the same.
    out = _stage(hub, tiny_lm_dir, tiny_encoder_dir, prompt="free")([_state(question=q)])[0]
    context_positions = st.prepare(_state(question=q))[1]["positions"] - len(parts.prefix) - len(parts.suffix)
    assert _usage(out).prompt_tokens == context_positions + len(free.prefix) + len(free.suffix)


def test_no_deprecation_warnings(hub, tiny_lm_dir, tiny_encoder_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st = _stage(hub, tiny_lm_dir, tiny_encoder_dir, tmp_path=tmp_path, expand_fraction=0.5, batch_size=2)
        st([_state(), _state(question="When was it founded?")])


def test_backends_without_kv_are_refused_at_config_load():
    for backend in ("llamacpp", "vllm"):
        cfg = {"name": "r", "stages": [{"key": "reader.refrag", "params": {"llm": {"backend": backend, "model": "m"}}}]}
        with pytest.raises(ConfigError, match=rf"reader\.refrag.*needs kv.*'{backend}'.*use backend 'hf'"):
            parse_config(cfg)
    assert RefragReader.Params(model="x").llm.model == "x" and RefragReader.Params().model == "smollm2-135m-instruct"


@pytest.mark.slow
def test_real_models_answer(tmp_path):
    """smollm2-135m-instruct + all-MiniLM-L6-v2 answer a short SQuAD-style question."""
    from longread.models.hub import ModelHub
    from longread.readers.refrag import ASSETS_DIR, SHIPPED_PROJECTORS

    shipped = (ASSETS_DIR / SHIPPED_PROJECTORS[("all-minilm-l6-v2", "smollm2-135m-instruct", 16)]).is_file()
    hub = ModelHub(dtype="float32")
    context = (
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It is named after the engineer "
        "Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. Locally nicknamed "
        "La dame de fer, it was constructed as the centrepiece of the 1889 World's Fair."
    )
    q = "Which engineer is the Eiffel Tower named after?"
    # Full expansion is exact token prefill: the answer must be right. With the shipped
    # projector and partial expansion the answer must still mention Eiffel (the expanded chunk).
    runs = [("random", 1.0)] + ([("default", 0.25)] if shipped else [])
    for projector, frac in runs:
        st = RefragReader(RefragReader.Params(projector=projector, expand_fraction=frac, max_new_tokens=16))
        st.setup(RunContext(models=hub, cache_dir=tmp_path))
        out = st([_state(context=context, question=q)])[0]
        assert "Eiffel" in out.answer, (projector, frac, out.answer)
        assert out.trace["chunks_total"] > 0


SHIPPED_KEY = ("all-minilm-l6-v2", "smollm2-135m-instruct", 16)


def test_shipped_projector_resolves_and_loads_for_its_pair_only():
    import json

    from longread.readers.refrag import ASSETS_DIR, SHIPPED_PROJECTORS

    path = resolve_projector_path("default", encoder=SHIPPED_KEY[0], model=SHIPPED_KEY[1], k=16)
    assert path == ASSETS_DIR / SHIPPED_PROJECTORS[SHIPPED_KEY] and path.is_file()
    assert path.stat().st_size < 4 * 2**20  # a 384 -> 576 -> 576 MLP in fp32: ~2.2 MB
    net, meta = load_projector(path, in_dim=384, out_dim=576, k=16)
    assert (meta["encoder"], meta["model"], meta["k"]) == ("all-minilm-l6-v2", "smollm2-135m-instruct", "16")
    assert all(torch.isfinite(p).all() for p in net.parameters())
    side = json.loads(path.with_suffix(".json").read_text())
    before, after = side["heldout_before"], side["heldout_after"]
    for key in ("recon_s1", "recon_s8", "cpt_s8"):
        assert after[key] < before[key] and after[key] < after[f"{key}_zero"], key
    # Another k or pair still has no default and says how to train one.
    with pytest.raises(FileNotFoundError, match="longread train refrag"):
        resolve_projector_path("default", encoder=SHIPPED_KEY[0], model=SHIPPED_KEY[1], k=8)
    with pytest.raises(FileNotFoundError, match="longread train refrag"):
        resolve_projector_path("default", encoder="nomic-embed-text-v1.5", model=SHIPPED_KEY[1], k=16)


@pytest.mark.slow
def test_shipped_projector_reconstructs_held_out_text_better_than_zero_and_untrained():
    """Held-out s=1 reconstruction NLL (16 tokens from one vector) with the real pair."""
    import random

    from longread.models.hub import ModelHub
    from longread.train.refrag import TrainConfig, build_windows, compressed_lm_loss, embed_windows, load_training_texts

    data = Path(__file__).resolve().parents[2] / "shared" / "data"  # the recipe's --data (SQuAD dev + essays)
    if not (data / "squad").is_dir():
        pytest.skip(f"no training data at {data}")
    hub = ModelHub(dtype="float32")
    model, tok = hub.causal_lm(SHIPPED_KEY[1])
    enc = hub.encoder(SHIPPED_KEY[0])
    texts = load_training_texts(data)
    random.Random(0).shuffle(texts)  # the recipe's split: the first 10% of texts are held out
    cfg = TrainConfig()
    wins = build_windows(tok, texts[: max(1, int(len(texts) * 0.1))], k=16, window_chunks=cfg.window_chunks, limit=4)
    embs = embed_windows(tok, enc, wins, k=16)
    ids = torch.tensor(wins, dtype=torch.long)
    shipped, _ = load_projector(resolve_projector_path("default", encoder=SHIPPED_KEY[0], model=SHIPPED_KEY[1], k=16),
                                in_dim=384, out_dim=576, k=16)  # fmt: skip
    untrained = Projector.make(384, 576, seed=0, embeddings=model.get_input_embeddings().weight)
    zero = lambda x: torch.zeros((*x.shape[:-1], 576))  # noqa: E731

    def recon(proj) -> float:
        with torch.no_grad():
            return sum(
                float(compressed_lm_loss(model, proj, embs[:, j : j + 1], ids[:, j * 16 : (j + 1) * 16]))
                for j in range(embs.shape[1])
            ) / embs.shape[1]

    got, base, fresh = recon(shipped), recon(zero), recon(untrained)
    assert got < base - 0.3, (got, base)
    assert got < fresh - 0.1, (got, fresh)
