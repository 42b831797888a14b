"""The ``hf`` backend and the one decoding loop (tiny random Qwen2 model, fp32)."""

from __future__ import annotations

import warnings

import pytest
import torch

from longread.llm import GenRequest, LLMSpec
from longread.llm.hf import HFBackend, decode
from longread.stage import RunContext


@pytest.fixture(scope="module")
def backend(tiny_lm_dir, hub) -> HFBackend:
    return HFBackend(LLMSpec(model=str(tiny_lm_dir), batch_size=3), RunContext(models=hub))


def _reference_greedy(be: HFBackend, prompt: str, n: int) -> list[int]:
    """Greedy decoding without any cache: the whole sequence is recomputed at every step."""
    ids = be.encode(prompt)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            logits = be.model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            tok = int(logits.argmax())
            if tok in be.stop_ids:
                break
            out.append(tok)
    return out


MSGS = [[{"role": "user", "content": "What is the capital of Freedonia? " * (i + 1)}] for i in range(5)]


def test_batched_greedy_equals_uncached_reference(backend):
    gens = backend.generate([GenRequest(messages=m, max_new_tokens=10) for m in MSGS])
    for m, g in zip(MSGS, gens):
        ref = _reference_greedy(backend, backend.render(m), 10)
        assert g.token_ids == ref
        assert g.text == backend.decode(ref)
        assert g.prompt_tokens == len(backend.encode(backend.render(m)))
        assert g.finish_reason in {"stop", "length"}
        assert 0 < g.ttft_s <= g.seconds


def test_batch_does_not_change_answers(backend):
    reqs = [GenRequest(messages=m, max_new_tokens=8) for m in MSGS]
    together = [g.text for g in backend.generate(reqs)]
    alone = [backend.generate([r])[0].text for r in reqs]
    assert together == alone


def test_length_and_stop_string(backend):
    g = backend.generate([GenRequest(prompt="The capital of", max_new_tokens=6)])[0]
    if g.finish_reason == "length":
        assert g.new_tokens == 6
    stop = g.text[2:4]
    assert stop
    s = backend.generate([GenRequest(prompt="The capital of", max_new_tokens=6, stop=(stop,))])[0]
    assert s.finish_reason == "stop"
    assert s.text == g.text[: g.text.find(stop)]


def test_sampling_is_seeded(backend):
    def run(seed: int) -> str:
        return backend.generate([GenRequest(messages=MSGS[0], max_new_tokens=12, temperature=1.0, seed=seed)])[0].text

    assert run(3) == run(3)
    assert len({run(s) for s in range(4)}) > 1  # a random model samples different texts


def test_top_p_tiny_keeps_only_the_argmax(backend):
    greedy = backend.generate([GenRequest(messages=MSGS[1], max_new_tokens=8)])[0].text
    nucleus = backend.generate([GenRequest(messages=MSGS[1], max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=1)])[0]
    assert nucleus.text == greedy


def test_decode_on_an_existing_cache_equals_one_pass(backend):
    """Prefilling a prefix into a cache, then decoding the rest on it, equals decoding it all at once."""
    ids = backend.encode(backend.render(MSGS[2]))
    full = decode(backend.model, backend.tokenizer, input_ids=torch.tensor([ids]),
                  position_ids=torch.arange(len(ids))[None], max_new_tokens=8)[0]
    from longread.llm.hf import forward

    cut = len(ids) // 2
    with torch.inference_mode():
        _, cache = forward(backend.model, input_ids=torch.tensor([ids[:cut]]),
                           position_ids=torch.arange(cut)[None], use_cache=True)
    rest = decode(backend.model, backend.tokenizer, input_ids=torch.tensor([ids[cut:]]),
                  position_ids=torch.arange(cut, len(ids))[None], cache=cache, max_new_tokens=8)[0]
    assert rest.ids == full.ids


def test_decode_from_inputs_embeds_equals_ids(backend):
    ids = backend.encode(backend.render(MSGS[0]))
    emb = backend.model.get_input_embeddings()(torch.tensor([ids]))
    pos = torch.arange(len(ids))[None]
    a = decode(backend.model, backend.tokenizer, input_ids=torch.tensor([ids]), position_ids=pos, max_new_tokens=6)[0]
    b = decode(backend.model, backend.tokenizer, inputs_embeds=emb, position_ids=pos, max_new_tokens=6)[0]
    assert a.ids == b.ids


def test_next_token_logits_match_greedy_first_token(backend):
    prompts = [backend.render(m) for m in MSGS[:3]]
    logits = backend.next_token_logits(prompts)
    assert logits.shape == (3, backend.model.config.vocab_size)
    for p, row in zip(prompts, logits):
        assert int(row.argmax()) == _reference_greedy(backend, p, 1)[0]


def test_no_deprecation_warnings(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.generate([GenRequest(messages=MSGS[0], max_new_tokens=4)])
        backend.next_token_logits([backend.render(MSGS[0])])


def test_bad_requests():
    with pytest.raises(ValueError, match="exactly one"):
        GenRequest(prompt="a", messages=[{"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenRequest(prompt="a", max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenRequest(prompt="a", top_p=0)
