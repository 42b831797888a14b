"""The REFRAG projector recipe on the tiny in-process LM and encoder."""

from __future__ import annotations

import json

import pytest
import torch

from longread.readers.refrag import Projector, RefragReader
from longread.stage import RunContext
from longread.testing import TINY_TEXT
from longread.train.refrag import (
    TrainConfig,
    build_windows,
    embed_windows,
    evaluate,
    load_training_texts,
    main,
    train_projector,
)
from longread.types import QAState, Question

TEXTS = [" ".join(TINY_TEXT.splitlines()[i : i + 5]) for i in range(0, 20, 5)]


@pytest.fixture(scope="module")
def tiny(hub, tiny_lm_dir, tiny_encoder_dir):
    model, tok = hub.causal_lm(str(tiny_lm_dir))
    enc = hub.encoder(str(tiny_encoder_dir))
    return model, tok, enc


def _data(tok, enc, cfg, limit=12):
    wins = build_windows(tok, TEXTS, k=cfg.k, window_chunks=cfg.window_chunks, limit=limit)
    return wins, embed_windows(tok, enc, wins, k=cfg.k)


def test_config_validation_and_curriculum():
    assert TrainConfig(max_chunks=8).curriculum == [1, 2, 4, 8]
    assert TrainConfig(max_chunks=5, k=16, target_tokens=20).window_chunks == 5 + 2
    for kw, msg in [({"k": 0}, "k must be in"), ({"max_chunks": 0}, "max_chunks"), ({"lr": 0}, "lr must be")]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**kw)


def test_windows_are_chunk_aligned_token_slices(tiny):
    _, tok, enc = tiny
    cfg = TrainConfig(k=4, max_chunks=2, target_tokens=4)
    wins, embs = _data(tok, enc, cfg)
    assert wins and all(len(w) == cfg.window_chunks * cfg.k for w in wins)
    streams = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    for w in wins:
        assert any(
            s[i : i + len(w)] == w for s in streams for i in range(0, len(s), cfg.k)
        ), "a window is not a chunk-aligned slice of a text"
    assert embs.shape == (len(wins), cfg.window_chunks, enc.dim)
    # Row j of a window is the encoder embedding of that chunk's decoded text.
    want = enc.encode([tok.decode(wins[0][: cfg.k])])[0]
    assert torch.allclose(embs[0, 0], torch.from_numpy(want), atol=1e-5)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_losses_decrease(tiny, stage):
    model, tok, enc = tiny
    cfg = TrainConfig(
        k=4,
        max_chunks=2,
        target_tokens=4,
        tokens_per_batch=32,
        lr=2e-2,
        warmup=1,
        stage1_steps=12 if stage == "stage1" else 0,
        stage2_steps=12 if stage == "stage2" else 0,
        log_every=3,
    )
    wins, embs = _data(tok, enc, cfg, limit=6)
    proj = Projector.make(enc.dim, model.config.hidden_size, seed=1)
    before = evaluate(model, proj, wins, embs, cfg)
    hist = train_projector(model, proj, wins, embs, cfg)
    after = evaluate(model, proj, wins, embs, cfg)
    assert hist["steps"][stage] == 12
    curve = [p["loss"] for p in hist["curve"] if p["stage"] == stage]
    assert curve[-1] < curve[0]
    key = "recon_s1" if stage == "stage1" else "cpt_s2"
    assert after[key] < before[key] - 0.1, (before, after)
    # The decoder stays frozen: only the projector trains.
    assert not any(p.requires_grad for p in model.parameters())


def test_cli_run_writes_a_projector_the_reader_loads(tmp_path, hub, tiny_lm_dir, tiny_encoder_dir):
    data = tmp_path / "data"
    (data / "paul_graham" / "essays").mkdir(parents=True)
    for i, t in enumerate(TEXTS):
        (data / "paul_graham" / "essays" / f"e{i}.txt").write_text(t)
    squad = {"data": [{"title": "T", "paragraphs": [{"context": TINY_TEXT, "qas": []}]}]}
    (data / "squad").mkdir()
    (data / "squad" / "squad-dev-1.1.rebuilt.json").write_text(json.dumps(squad))
    out = tmp_path / "proj.safetensors"
    rc = main(
        [
            "--model", str(tiny_lm_dir), "--encoder", str(tiny_encoder_dir), "--k", "4",
            "--data", str(data), "--out", str(out), "--windows", "8", "--eval-windows", "2",
            "--eval-fraction", "0.3", "--stage1-steps", "3", "--stage2-steps", "2",
            "--max-chunks", "2", "--target-tokens", "4", "--tokens-per-batch", "16",
            "--cache-dir", str(tmp_path / "cache"),
        ]
    )  # fmt: skip
    assert rc == 0 and out.is_file()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["steps"] == {"stage1": 3, "stage2": 2}
    assert "recon_s1" in side["heldout_before"] and "recon_s1" in side["heldout_after"]
    st = RefragReader(
        RefragReader.Params(model=str(tiny_lm_dir), encoder=str(tiny_encoder_dir), k=4, projector=str(out),
                            max_new_tokens=3)
    )  # fmt: skip
    st.setup(RunContext(models=hub))
    res = st([QAState(question=Question(id="q", question="Where?"), context=TINY_TEXT[:200])])[0]
    assert res.trace["chunks_total"] > 0
    # A projector trained for k=4 is refused at another k.
    st8 = RefragReader(RefragReader.Params(model=str(tiny_lm_dir), encoder=str(tiny_encoder_dir), k=8, projector=str(out)))
    with pytest.raises(ValueError, match="k=4"):
        st8.setup(RunContext(models=hub))


def test_missing_data_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training text"):
        load_training_texts(tmp_path)


def test_embedding_matched_init_puts_outputs_at_the_decoder_embedding_scale():
    torch.manual_seed(0)
    rows = torch.randn(1000, 48) * 0.1 + torch.linspace(-1, 1, 48)  # a common offset, like real vocabularies
    x = torch.nn.functional.normalize(torch.randn(500, 32), dim=1)  # L2-normalised encoder vectors
    plain = Projector.make(32, 48, seed=3)
    matched = Projector.make(32, 48, seed=3, embeddings=rows)
    with torch.no_grad():
        out_plain, out = plain(x), matched(x)
    row_norm = float(rows.norm(dim=1).mean())
    assert abs(float(out.norm(dim=1).mean()) / row_norm - 1) < 0.1
    assert float(out_plain.norm(dim=1).mean()) < 0.5 * row_norm  # PyTorch's init: far too small
    # Centred on the mean row, spread like the rows around it, and still input-dependent.
    assert torch.allclose(out.mean(0), rows.mean(0), atol=0.03)
    spread = float((rows - rows.mean(0)).std())
    assert 0.7 < float((out - out.mean(0)).std()) / spread < 1.3
    # Deterministic for a seed; the format (parameter names) is unchanged.
    again = Projector.make(32, 48, seed=3, embeddings=rows)
    assert all(torch.equal(a, b) for a, b in zip(matched.state_dict().values(), again.state_dict().values()))
    assert set(matched.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    with pytest.raises(ValueError, match="shape"):
        Projector.make(32, 48, embeddings=torch.zeros(10, 47))


def test_lr_factor_warms_up_decays_and_follows_the_wall_clock_budget():
    from longread.train.refrag import lr_factor

    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 10_000, 10) == pytest.approx(1.0, abs=0.01)
    assert lr_factor(100, 100, 10) == pytest.approx(0.1)
    mid = lr_factor(50, 100, 10)
    assert 0.5 < mid < 0.6
    # A run whose time budget is half spent is half-way down the cosine whatever its step count.
    assert lr_factor(20, 100_000, 10, elapsed=30.0, budget=60.0) == pytest.approx(mid)
    assert lr_factor(20, 100_000, 10, elapsed=90.0, budget=60.0) == pytest.approx(0.1)
    assert lr_factor(20, 100_000, 10, elapsed=90.0, budget=None) == pytest.approx(1.0, abs=0.01)
