"""M2-BERT: FFT long conv, official key names/shapes, strict loading, padding invariance, OPL recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from longread.encoders.m2bert import (
    M2BertConfig,
    M2BertEncoder,
    M2BertForRetrieval,
    direct_long_conv,
    fft_long_conv,
    load_m2bert,
    save_m2bert_dir,
)
from longread.encoders.weights import CheckpointKeyError


def tiny_cfg(seq_len: int = 256, layers: int = 2) -> M2BertConfig:
    return M2BertConfig.retrieval(
        seq_len, vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, hyena_filter_order=16
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_encoder_dir))


@pytest.fixture(scope="module")
def m2_dir(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    return save_m2bert_dir(M2BertForRetrieval(tiny_cfg()), tmp_path_factory.mktemp("m2") / "m2-tiny", tokenizer)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("L", [1, 2, 7, 16])
def test_fft_conv_equals_direct_conv(bidirectional: bool, L: int) -> None:
    g = torch.Generator().manual_seed(L)
    u, kf, kr, D = torch.randn(2, 3, L, generator=g), torch.randn(3, L, generator=g), torch.randn(3, L, generator=g), torch.randn(3, generator=g)
    kr = kr if bidirectional else None
    assert torch.allclose(fft_long_conv(u, kf, kr, D), direct_long_conv(u, kf, kr, D), atol=1e-5)


def test_direct_conv_hand_case() -> None:
    # u = [1, 2, 3], k_fwd = [1, 10, 100], k_rev = [1000, 10000, _], D = 0
    u = torch.tensor([[[1.0, 2.0, 3.0]]])
    y = fft_long_conv(u, torch.tensor([[1.0, 10.0, 100.0]]), torch.tensor([[1000.0, 10000.0, 5.0]]), torch.zeros(1))
    # y0 = 1*1 + 2*1000 + 3*10000; y1 = 2*1 + 1*10 + 3*1000; y2 = 3*1 + 2*10 + 1*100
    assert torch.allclose(y[0, 0], torch.tensor([32001.0, 3012.0, 123.0]))


def test_official_key_names() -> None:
    sd = M2BertForRetrieval(tiny_cfg(layers=1)).state_dict()
    pre = "bert.encoder.layer.0."
    expected = {
        "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.LayerNorm.bias", "bert.embeddings.position_ids",
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias",
        pre + "attention.in_linear.weight", pre + "attention.in_linear.bias", pre + "attention.out_linear.weight",
        pre + "attention.out_linear.bias", pre + "attention.short_filter.weight", pre + "attention.short_filter.bias",
        pre + "mlp.gated_layers.weight", pre + "mlp.wo.weight", pre + "mlp.wo.bias",
        pre + "mlp.layernorm.weight", pre + "mlp.layernorm.bias",
    }
    for f in ("filter_fn", "filter_fn2"):
        fp = f"{pre}attention.{f}."
        expected |= {fp + "bias", fp + "pos_emb.z", fp + "pos_emb.t", fp + "modulation.deltas"}
        for mlp in ("implicit_filter", "implicit_filter_rev"):
            expected |= {f"{fp}{mlp}.{i}.weight" for i in (0, 2, 4, 6)}
            expected |= {f"{fp}{mlp}.{i}.bias" for i in (0, 2, 4)}
            expected |= {f"{fp}{mlp}.{i}.freq" for i in (1, 3, 5)}
    assert set(sd) == expected


@pytest.mark.parametrize("seq_len", [2048, 8192, 32768])
def test_shapes_at_official_lengths(seq_len: int) -> None:
    cfg = M2BertConfig.retrieval(seq_len, num_hidden_layers=1)  # true 80M widths, one layer
    sd = M2BertForRetrieval(cfg).state_dict()
    p = "bert.encoder.layer.0."
    assert sd["bert.embeddings.position_embeddings.weight"].shape == (seq_len, 768)
    assert sd[p + "attention.filter_fn.pos_emb.z"].shape == (1, seq_len, 5)
    assert sd[p + "attention.filter_fn.pos_emb.t"].shape == (1, seq_len, 1)
    assert sd[p + "attention.filter_fn.implicit_filter.0.weight"].shape == (128, 5)
    assert sd[p + "attention.filter_fn.implicit_filter.6.weight"].shape == (768, 128)
    assert sd[p + "attention.short_filter.weight"].shape == (2304, 1, 3)
    assert sd[p + "mlp.gated_layers.weight"].shape == (4, 1536, 192)  # 768 -> 2*3072, 4 blocks
    assert sd[p + "mlp.wo.weight"].shape == (4, 192, 768)  # 3072 -> 768


@pytest.mark.parametrize("seq_len", [2048, 8192, 32768])
def test_forward_at_full_length(seq_len: int) -> None:
    torch.manual_seed(0)
    model = M2BertForRetrieval(
        M2BertConfig.retrieval(seq_len, vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               hyena_filter_order=8)
    ).eval()
    ids = torch.randint(1, 64, (1, seq_len))
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), mask_padding=False)
    assert out.shape == (1, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        model(torch.ones(1, seq_len + 1, dtype=torch.long), torch.ones(1, seq_len + 1), mask_padding=False)


def test_round_trip_and_dispatch(m2_dir: Path, tmp_path: Path) -> None:
    from longread.encoders import load_encoder, loader_key

    enc = load_m2bert(m2_dir, padding="longest")
    texts = ["the cat sat on the mat", "a long document about retrieval"]
    a = enc.encode(texts)
    assert a.shape == (2, 32) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    # an official-style config (model_type "bert" + Monarch mixing) dispatches to M2
    off = tmp_path / "official"
    shutil.copytree(m2_dir, off)
    conf = json.loads((off / "config.json").read_text())
    conf["model_type"] = "bert"
    (off / "config.json").write_text(json.dumps(conf))
    assert loader_key(off) == "m2_bert"
    b = load_encoder(off)
    assert isinstance(b, M2BertEncoder)
    b.padding = "longest"
    assert np.allclose(a, b.encode(texts), atol=1e-6)


def test_missing_and_unexpected_keys_are_named(m2_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(m2_dir, bad)
    sd = load_file(str(bad / "model.safetensors"))
    del sd["bert.pooler.dense.bias"]
    sd["bert.encoder.layer.0.attention.extra.weight"] = torch.zeros(1)
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointKeyError) as e:
        load_m2bert(bad)
    assert "bert.pooler.dense.bias" in str(e.value) and "attention.extra.weight" in str(e.value)


def test_padding_invariance(m2_dir: Path) -> None:
    texts = ["short one", "a somewhat longer text that needs many more tokens than the first one does"]
    for padding in ("longest", "max_length"):
        enc = load_m2bert(m2_dir, padding=padding)
        together = enc.encode(texts, batch_size=2)
        alone = np.vstack([enc.encode([t], batch_size=1) for t in texts])
        assert np.allclose(together, alone, atol=1e-5), padding


def test_bad_inputs(m2_dir: Path) -> None:
    enc = load_m2bert(m2_dir, padding="longest")
    with pytest.raises(ValueError, match="text 1 is empty"):
        enc.encode(["fine", "   "])
    long = "word " * 400
    with pytest.raises(ValueError, match="max_tokens=256"):
        enc.encode([long], truncate=False)
    assert enc.encode([long]).shape == (1, 32)  # truncates by default
    with pytest.raises(ValueError, match="padding must be"):
        M2BertEncoder(enc.model, enc.tokenizer, padding="left")


def test_opl_loss_hand_case() -> None:
    from longread.train.m2bert import opl_loss

    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    d = torch.tensor([[1.0, 1.0], [0.0, 2.0]])  # cos = 1/sqrt(2), 0
    loss = opl_loss(q, d, torch.tensor([1.0, 0.0]))
    # ((0.70711 - 1)^2 + (0 - 0)^2) / 2 = 0.042893
    assert loss.item() == pytest.approx((1 - 2**-0.5) ** 2 / 2, rel=1e-5)


def test_bm25_negatives_and_opl_training_decreases(m2_dir: Path) -> None:
    from longread.train.m2bert import build_pairs, evaluate_opl, mine_bm25_negatives, train_opl

    corpus = [
        "the cat sat on the mat", "dogs bark at the mail carrier", "the stock market fell sharply",
        "a cat chased a mouse across the mat", "rain is expected tomorrow", "the mat was red",
    ]
    negs = mine_bm25_negatives(["cat on the mat"], [{0}], corpus, per_query=3, neg_pool=2, seed=0)
    assert set(negs[0]) <= {3, 5} and 0 not in negs[0]  # top BM25 hits that are not relevant
    pairs = build_pairs(["cat on the mat", "market fell"], [{0}, {2}], corpus, neg_pool=2, seed=0)
    assert sorted(p.label for p in pairs) == [0.0, 0.0, 1.0, 1.0]
    torch.manual_seed(0)
    small = M2BertConfig.retrieval(32, vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   hyena_filter_order=8, hidden_dropout_prob=0.0)
    enc = M2BertEncoder(M2BertForRetrieval(small), load_m2bert(m2_dir).tokenizer, padding="longest")
    before = evaluate_opl(enc, pairs)
    losses = train_opl(enc, pairs, epochs=3, lr=1e-3, seed=0)
    after = evaluate_opl(enc, pairs)
    assert len(losses) == 12 and after < before, (before, after)
    assert not enc.model.training


# --- golden numbers from the official HazyResearch/m2 forward -----------------------------------
#
# Produced by running the reference implementation (github.com/HazyResearch/m2 at 7d359e8,
# bert/src/bert_layers.py `BertModel`, its pure-PyTorch path: use_flash_fft=False,
# use_flash_mm=False, torch 2.13 CPU, float32) on the weights and inputs `_golden_weights` /
# `_golden_inputs` below make, in eval mode. Stored per case: each row's first six pooled values,
# the sum and the sum of squares of its pooled vector. Case key: (pool_all, length, real tokens of
# row 1; None = no padding). Padded rows go through the mixer with their pads, as the official
# code (which ignores the mask outside pooling) and `padding="max_length"` do.
GOLDEN = {
    (False, 8, None): ([[-0.7886181, -0.1380367, -0.5304164, 0.6426233, -0.7471082, 0.8938339], [-0.6840062, 0.6644675, 0.9047747, -0.191113, 0.830983, 0.7417377]], [-3.573842, 2.540795], [12.69025, 13.42687]),
    (False, 37, None): ([[0.9686438, -0.4775477, -0.07757895, 0.256255, 0.7916426, -0.5318871], [0.2627175, -0.02698407, 0.705433, -0.596937, 0.9577094, 0.214442]], [-0.4330409, 0.03872126], [10.83219, 13.1199]),
    (False, 128, 50): ([[-0.3315944, -0.9481945, -0.3362271, 0.617396, 0.6982023, -0.7477585], [-0.5520502, -0.8948955, -0.7865457, 0.6239045, 0.390857, -0.42533]], [0.105759, -0.4344407], [12.73148, 11.75197]),
    (True, 8, None): ([[0.1200456, 0.3040254, 0.3314765, 0.7316911, 0.04701464, -0.3192356], [-0.2454502, 0.3148209, 0.3107337, 0.6573729, -0.04981304, 0.5122403]], [1.839691, 2.466697], [4.254799, 4.816987]),
    (True, 37, None): ([[0.4458697, -0.2022062, 0.3343129, 0.5969776, -0.1563064, 0.04705144], [-0.02074396, 0.1613598, 0.272264, 0.332769, -0.07649897, 0.196123]], [1.635932, 1.909456], [3.816305, 3.414947]),
    (True, 128, 50): ([[0.1802596, -0.1297133, 0.1668012, 0.4873771, -0.1619285, 0.2119056], [0.1518267, -0.2153481, 0.09690818, 0.4122857, -0.2668292, 0.3657253]], [1.305351, 0.2684013], [2.360501, 2.366434]),
}
_G_VOCAB, _G_HIDDEN, _G_INTER, _G_LAYERS, _G_ORDER, _G_LMAX = 512, 32, 64, 2, 16, 128


def _golden_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Every parameter from one numpy RandomState(0) stream, in sorted name order (buffers keep their values)."""
    rs = np.random.RandomState(0)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        x = rs.standard_normal(shape)
        if name.endswith("freq"):
            x = 10.0 + x
        elif "LayerNorm.weight" in name or "layernorm.weight" in name:
            x = 1.0 + 0.1 * x
        elif len(shape) >= 2:
            x = x / np.sqrt(shape[-1])
        else:
            x = 0.1 * x
        out[name] = x.astype(np.float32)
    return out


def _golden_inputs(L: int, n_real: int | None) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(1 + L)
    ids = rs.randint(1, _G_VOCAB, size=(2, L)).astype(np.int64)
    ids[:, 0] = 101
    mask = np.ones((2, L), dtype=np.int64)
    if n_real is not None:
        ids[1, n_real:] = 0
        mask[1, n_real:] = 0
    return ids, mask


def _golden_model(pool_all: bool) -> M2BertForRetrieval:
    cfg = M2BertConfig.retrieval(
        _G_LMAX, vocab_size=_G_VOCAB, hidden_size=_G_HIDDEN, intermediate_size=_G_INTER, num_hidden_layers=_G_LAYERS,
        hyena_filter_order=_G_ORDER, pool_all=pool_all,
    )
    model = M2BertForRetrieval(cfg).eval()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if not n.startswith("classifier.")}
    sd = model.state_dict()
    sd.update({k: torch.from_numpy(v) for k, v in _golden_weights(shapes).items()})
    model.load_state_dict(sd, strict=True)
    return model


@pytest.mark.parametrize("case", sorted(GOLDEN, key=str), ids=lambda c: f"pool_all={c[0]}-L{c[1]}-real{c[2]}")
def test_forward_matches_the_official_m2_reference(case: tuple[bool, int, int | None]) -> None:
    pool_all, L, n_real = case
    first6, sums, sumsq = GOLDEN[case]
    ids, mask = _golden_inputs(L, n_real)
    with torch.no_grad():
        pooled = _golden_model(pool_all)(torch.from_numpy(ids), torch.from_numpy(mask), mask_padding=False).double().numpy()
    np.testing.assert_allclose(pooled[:, :6], first6, atol=2e-5)
    np.testing.assert_allclose(pooled.sum(1), sums, atol=1e-4)
    np.testing.assert_allclose((pooled**2).sum(1), sumsq, atol=1e-4)


def test_the_golden_numbers_catch_a_swapped_gate() -> None:
    model = _golden_model(False)
    mixer = model.bert.encoder.layer[0].attention
    w = mixer.in_linear.weight.data
    d = _G_HIDDEN
    w[:d], w[d : 2 * d] = w[d : 2 * d].clone(), w[:d].clone()  # x1 <-> x2: gate before vs after the long conv
    b = mixer.in_linear.bias.data
    b[:d], b[d : 2 * d] = b[d : 2 * d].clone(), b[:d].clone()
    ids, mask = _golden_inputs(37, None)
    with torch.no_grad():
        pooled = model(torch.from_numpy(ids), torch.from_numpy(mask), mask_padding=False).double().numpy()
    assert np.abs(pooled[:, :6] - np.array(GOLDEN[(False, 37, None)][0])).max() > 1e-2


def test_train_recipe_pads_to_max_length_by_default() -> None:
    import argparse

    from longread.train import m2bert as recipe

    ap = argparse.ArgumentParser()
    recipe.add_parser(ap.add_subparsers(dest="r"))
    args = ap.parse_args(["m2bert", "--model-dir", "m", "--squad", "s.json", "--out", "o"])
    assert args.padding == "max_length"
