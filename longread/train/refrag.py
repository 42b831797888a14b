"""``longread train refrag``: train the REFRAG projector (encoder vector -> decoder input embedding).

Recipe (after "REFRAG: Rethinking RAG based Decoding", sections 3-4), with decoder and encoder
frozen so that only the projector trains:

1. Reconstruction. The decoder gets ``s`` projected chunk vectors and must reproduce the
   ``s * k`` tokens of those chunks (teacher-forced NLL). Curriculum: ``s`` starts at 1 and
   phases add 2, 4, ... up to ``--max-chunks`` consecutive chunks; a phase samples ``s``
   uniformly from the sizes unlocked so far, so easy cases stay in the mix.
2. Continued pre-training. The decoder gets ``s`` projected vectors of a text window and must
   predict the next ``--target-tokens`` tokens that follow it.

Text comes from SQuAD dev contexts (one text per article) and the Paul Graham essays under
``--data``; the last ``--eval-fraction`` of texts are held out for the before/after losses.
The output is a safetensors projector loadable by ``reader.refrag`` (``projector: PATH``) and a
``.json`` sidecar with the data, steps, loss curve and held-out losses.

Init: PyTorch's default init maps an L2-normalised 384-d MiniLM vector to an output of norm ~0.6
that barely depends on the input, where SmolLM2-135M's token-embedding rows have norm ~3.2
(measured); ``--init embeddings`` (the default) starts the outputs at the rows' mean and spread.
With ``--minutes`` the curriculum and the learning-rate decay follow elapsed time, so a run cut
by its budget still reaches ``s = --max-chunks`` and a decayed rate.

Cost: each step is a forward + backward through the frozen decoder: 1.2-1.8 s at one torch thread
on a shared 2-core CPU (smollm2-135m fp32, ``--tokens-per-batch 128``). The shipped projector
(``longread/assets/refrag_projector_minilm_smollm2_k16.safetensors``, its ``.json`` sidecar has
the command, data, curve and losses) is a 39-minute run of 938 + 686 steps (~150k target tokens)
on 600 windows; held-out losses in nats, untrained -> trained (zero vectors):
reconstruction s=1 4.80 -> 4.41 (5.39), s=8 3.40 -> 3.24 (3.62), next 32 tokens from 8 vectors
4.27 -> 3.77 (4.84; the same context as plain tokens: 2.89). That is a partial compression
(the paper trains on 20B tokens); a better projector needs more steps: ``--device cuda``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..io import atomic_write_json

__all__ = [
    "TrainConfig",
    "load_training_texts",
    "build_windows",
    "embed_windows",
    "compressed_lm_loss",
    "evaluate",
    "lr_factor",
    "train_projector",
    "add_parser",
    "run",
    "main",
]


@dataclass
class TrainConfig:
    """Knobs of the recipe; see ``add_parser`` for what each one means."""

    k: int = 16
    stage1_steps: int = 400
    stage2_steps: int = 200
    max_chunks: int = 8
    target_tokens: int = 32
    tokens_per_batch: int = 256
    lr: float = 1e-3
    warmup: int = 20
    minutes: float | None = None
    stage1_share: float = 0.7
    seed: int = 0
    log_every: int = 10
    curriculum: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.k <= 64:
            raise ValueError(f"k must be in 1..64, got {self.k}")
        if self.max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, got {self.max_chunks}")
        if self.stage1_steps < 0 or self.stage2_steps < 0:
            raise ValueError(f"steps must be >= 0, got stage1={self.stage1_steps} stage2={self.stage2_steps}")
        if self.target_tokens < 1:
            raise ValueError(f"target_tokens must be >= 1, got {self.target_tokens}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.curriculum:
            sizes, s = [], 1
            while s <= self.max_chunks:
                sizes.append(s)
                s *= 2
            self.curriculum = sizes

    @property
    def window_chunks(self) -> int:
        """Chunks per sampled window: the largest context plus the continuation target."""
        return self.max_chunks + math.ceil(self.target_tokens / self.k)


# --------------------------------------------------------------------------------------------
# Data


def load_training_texts(data_dir: str | Path) -> list[str]:
    """Long texts from ``data_dir``: each SQuAD v1.1 dev article (paragraphs joined) and each essay.

    Raises ``FileNotFoundError`` when neither source is present.
    """
    data_dir = Path(data_dir)
    texts: list[str] = []
    squad = data_dir / "squad" / "squad-dev-1.1.rebuilt.json"
    if squad.is_file():
        with open(squad, encoding="utf-8") as f:
            for art in json.load(f)["data"]:
                texts.append("\n\n".join(p["context"] for p in art["paragraphs"]))
    essays = data_dir / "paul_graham" / "essays"
    if essays.is_dir():
        for p in sorted(essays.iterdir()):
            if p.is_file():
                t = p.read_text(encoding="utf-8", errors="replace").strip()
                if t:
                    texts.append(t)
    if not texts:
        raise FileNotFoundError(
            f"no training text under {str(data_dir)!r}: expected squad/squad-dev-1.1.rebuilt.json "
            "and/or paul_graham/essays/"
        )
    return texts


def build_windows(
    tokenizer: Any, texts: Sequence[str], *, k: int, window_chunks: int, limit: int, seed: int = 0
) -> list[list[int]]:
    """Up to ``limit`` token windows of ``window_chunks * k`` tokens, spread over ``texts``.

    Windows start on chunk boundaries of their text (as the reader chunks) and do not overlap;
    they are drawn round-robin over the texts in a seeded order so every text contributes.
    """
    size = window_chunks * k
    per_text: list[list[list[int]]] = []
    rng = random.Random(seed)
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        wins = [ids[i : i + size] for i in range(0, len(ids) - size + 1, size)]
        rng.shuffle(wins)
        if wins:
            per_text.append(wins)
    out: list[list[int]] = []
    depth = 0
    while len(out) < limit and any(depth < len(w) for w in per_text):
        for wins in per_text:
            if depth < len(wins) and len(out) < limit:
                out.append(wins[depth])
        depth += 1
    return out


def embed_windows(tokenizer: Any, encoder: Any, windows: list[list[int]], *, k: int, batch_size: int = 64):
    """Encoder embeddings of every k-token chunk of each window: tensor ``(n, window_chunks, dim)``.

    Each chunk's decoder tokens are decoded to text and re-tokenised by the encoder, exactly
    as ``reader.refrag`` does at inference.
    """
    import numpy as np
    import torch

    if not windows:
        return torch.zeros((0, 0, int(encoder.dim)))
    w = len(windows[0]) // k
    texts = [tokenizer.decode(win[j * k : (j + 1) * k]) for win in windows for j in range(w)]
    embs = np.asarray(encoder.encode(texts, kind="document", batch_size=batch_size), dtype=np.float32)
    return torch.from_numpy(embs).reshape(len(windows), w, -1)


# --------------------------------------------------------------------------------------------
# Loss


def compressed_lm_loss(model: Any, projector: Any, ctx_emb: Any, targets: Any) -> Any:
    """Mean NLL of ``targets`` (B, T) given the projected chunk vectors ``ctx_emb`` (B, s, dim).

    The decoder reads ``[proj(e_1) .. proj(e_s), tok(t_1) .. tok(t_{T-1})]`` and is scored on
    ``t_1 .. t_T`` (teacher forcing). Reconstruction is the case where the targets are the
    chunks' own tokens; continued pre-training is the case where they are the tokens that follow.
    Gradients reach the projector (and the decoder, if its parameters require them).
    """
    import torch
    import torch.nn.functional as F

    emb = model.get_input_embeddings()
    targets = targets.to(emb.weight.device)
    s = ctx_emb.shape[1]
    vecs = projector(ctx_emb.to(emb.weight.device, torch.float32)).to(emb.weight.dtype)
    tok = emb(targets[:, :-1])
    x = torch.cat([vecs, tok], dim=1)
    logits = model(inputs_embeds=x, use_cache=False).logits[:, s - 1 :]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _batch_stage1(windows: Any, embs: Any, idx: list[int], s: int, k: int):
    import torch

    ids = torch.tensor([windows[i] for i in idx], dtype=torch.long)
    # A random start per batch keeps every chunk position of the window in use.
    off = random.randrange(0, embs.shape[1] - s + 1)
    return embs[idx, off : off + s], ids[:, off * k : (off + s) * k]


def _batch_stage2(windows: Any, embs: Any, idx: list[int], s: int, k: int, target: int):
    import torch

    ids = torch.tensor([windows[i] for i in idx], dtype=torch.long)
    off = random.randrange(0, embs.shape[1] - s - math.ceil(target / k) + 1)
    return embs[idx, off : off + s], ids[:, (off + s) * k : (off + s) * k + target]


def evaluate(model: Any, projector: Any, windows: list[list[int]], embs: Any, cfg: TrainConfig) -> dict[str, float]:
    """Held-out losses: reconstruction at s=1 and s=max, next-token prediction at s=max, and references.

    ``*_zero`` rows feed zero vectors instead of projected ones (what the decoder does with no
    information); ``cpt_tokens`` feeds the context as plain tokens (the uncompressed upper bound).
    """
    import torch
    import torch.nn.functional as F

    if not windows:
        return {}
    out: dict[str, float] = {}
    s_max = cfg.curriculum[-1]
    hidden = int(model.get_input_embeddings().weight.shape[1])
    zero = lambda x: torch.zeros((*x.shape[:-1], hidden), device=x.device)  # noqa: E731 - a "projector" that carries nothing
    tgt_chunks = math.ceil(cfg.target_tokens / cfg.k)
    with torch.no_grad():
        for name, proj in (("", projector), ("_zero", zero)):
            for s in sorted({1, s_max}):
                losses = []
                for i in range(0, len(windows), 8):
                    idx = list(range(i, min(i + 8, len(windows))))
                    ids = torch.tensor([windows[j] for j in idx], dtype=torch.long)
                    for off in range(0, embs.shape[1] - s + 1, s):
                        losses.append(
                            float(compressed_lm_loss(model, proj, embs[idx, off : off + s], ids[:, off * cfg.k : (off + s) * cfg.k]))
                        )
                out[f"recon_s{s}{name}"] = sum(losses) / len(losses)
            s = min(s_max, embs.shape[1] - tgt_chunks)
            losses = []
            for i in range(0, len(windows), 8):
                idx = list(range(i, min(i + 8, len(windows))))
                ids = torch.tensor([windows[j] for j in idx], dtype=torch.long)
                tgt = ids[:, s * cfg.k : s * cfg.k + cfg.target_tokens]
                losses.append(float(compressed_lm_loss(model, proj, embs[idx, :s], tgt)))
            out[f"cpt_s{s}{name}"] = sum(losses) / len(losses)
        losses = []
        for i in range(0, len(windows), 8):
            ids = torch.tensor(windows[i : i + 8], dtype=torch.long)
            seq = ids[:, : s * cfg.k + cfg.target_tokens].to(model.get_input_embeddings().weight.device)
            logits = model(input_ids=seq, use_cache=False).logits[:, s * cfg.k - 1 : -1]
            losses.append(float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), seq[:, s * cfg.k :].reshape(-1))))
        out[f"cpt_s{s}_tokens"] = sum(losses) / len(losses)
    return out


def lr_factor(step: int, total: int, warmup: int, elapsed: float = 0.0, budget: float | None = None) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then cosine decay to 0.1.

    Progress is the larger of ``step / total`` and ``elapsed / budget`` (when a wall-clock
    ``budget`` in seconds is set), so a run cut short by its budget still decays its rate instead
    of stopping at the peak.
    """
    done = step / max(1, total)
    if budget:
        done = max(done, elapsed / budget)
    done = min(1.0, done)
    return min(1.0, (step + 1) / max(1, warmup)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


def train_projector(
    model: Any,
    projector: Any,
    windows: list[list[int]],
    embs: Any,
    cfg: TrainConfig,
    *,
    log: Any = None,
) -> dict[str, Any]:
    """Run stage 1 (reconstruction curriculum) then stage 2 (next-tokens) on the projector only.

    ``windows`` are token windows of ``cfg.window_chunks * cfg.k`` tokens and ``embs`` their chunk
    embeddings ``(n, window_chunks, dim)``. The decoder's parameters are frozen here. Stops a stage
    early when ``cfg.minutes`` (split by ``cfg.stage1_share``) runs out; with such a budget the
    curriculum phases and the learning-rate decay follow elapsed time as well as steps, so a run
    cut short still reaches the largest ``s`` and a decayed rate. ``log`` (optional) is
    called with each curve point. Returns ``{"curve": [...], "steps": {...}, "target_tokens": n,
    "seconds": ...}`` (``target_tokens``: scored target tokens over all steps).
    """
    import torch

    if len(windows) != embs.shape[0]:
        raise ValueError(f"{len(windows)} windows but {embs.shape[0]} embedding rows")
    if embs.shape[1] < cfg.window_chunks:
        raise ValueError(f"windows have {embs.shape[1]} chunks, the recipe needs {cfg.window_chunks}")
    for p in model.parameters():
        p.requires_grad_(False)
    projector.train()
    rng = random.Random(cfg.seed)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(projector.parameters(), lr=cfg.lr, weight_decay=0.01)
    total = cfg.stage1_steps + cfg.stage2_steps
    curve: list[dict[str, Any]] = []
    steps = {"stage1": 0, "stage2": 0}
    target_tokens = 0
    t_start = time.perf_counter()
    budget = None if cfg.minutes is None else cfg.minutes * 60.0
    budgets = {
        "stage1": None if budget is None else budget * cfg.stage1_share,
        "stage2": None if budget is None else budget,
    }
    n_phase = len(cfg.curriculum)
    for stage, n_steps in (("stage1", cfg.stage1_steps), ("stage2", cfg.stage2_steps)):
        acc, acc_n = 0.0, 0
        for t in range(n_steps):
            elapsed = time.perf_counter() - t_start
            if budgets[stage] is not None and elapsed > budgets[stage]:
                break
            lr = cfg.lr * lr_factor(steps["stage1"] + steps["stage2"], total, cfg.warmup, elapsed, budget)
            for group in opt.param_groups:
                group["lr"] = lr
            if stage == "stage1":
                done = t / max(1, n_steps)
                if budgets[stage] is not None:
                    done = max(done, elapsed / budgets[stage])
                phase = min(n_phase - 1, int(done * n_phase))
                s = rng.choice(cfg.curriculum[: phase + 1])
                bsz = max(1, cfg.tokens_per_batch // (s * cfg.k))
                idx = rng.sample(range(len(windows)), min(bsz, len(windows)))
                ctx, tgt = _batch_stage1(windows, embs, idx, s, cfg.k)
            else:
                s = rng.choice([c for c in cfg.curriculum if c >= 2] or cfg.curriculum)
                bsz = max(1, cfg.tokens_per_batch // (s * cfg.k + cfg.target_tokens))
                idx = rng.sample(range(len(windows)), min(bsz, len(windows)))
                ctx, tgt = _batch_stage2(windows, embs, idx, s, cfg.k, cfg.target_tokens)
            loss = compressed_lm_loss(model, projector, ctx, tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
            opt.step()
            steps[stage] += 1
            target_tokens += int(tgt.numel())
            acc += float(loss.detach())
            acc_n += 1
            if acc_n == cfg.log_every or t == n_steps - 1:
                point = {
                    "stage": stage,
                    "step": steps[stage],
                    "s": s,
                    "loss": acc / acc_n,
                    "lr": lr,
                    "seconds": round(time.perf_counter() - t_start, 1),
                }
                curve.append(point)
                if log is not None:
                    log(point)
                acc, acc_n = 0.0, 0
    projector.eval()
    return {"curve": curve, "steps": steps, "target_tokens": target_tokens, "seconds": time.perf_counter() - t_start}


# --------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``refrag`` sub-command (``longread train refrag ...``) to ``subparsers``."""
    p = subparsers.add_parser(
        "refrag",
        help="train a REFRAG projector (reconstruction curriculum, then next-token prediction)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="decoder (hub name or HF dir)")
    p.add_argument("--encoder", default="all-minilm-l6-v2", help="chunk encoder (hub name or dir)")
    p.add_argument("--k", type=int, default=16, help="tokens per chunk (default 16)")
    p.add_argument("--data", required=True, help="data dir with squad/ (SQuAD v1.1 dev JSON) and/or paul_graham/essays/")
    p.add_argument("--out", required=True, help="output .safetensors (a .json sidecar is written beside it)")
    p.add_argument("--windows", type=int, default=600, help="training windows to embed (default 600)")
    p.add_argument("--eval-windows", type=int, default=40, help="held-out windows (default 40)")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="share of texts held out (default 0.1)")
    p.add_argument("--stage1-steps", type=int, default=400)
    p.add_argument("--stage2-steps", type=int, default=200)
    p.add_argument("--max-chunks", type=int, default=8, help="largest curriculum size s (default 8)")
    p.add_argument("--target-tokens", type=int, default=32, help="stage-2 tokens to predict (default 32)")
    p.add_argument("--tokens-per-batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup", type=int, default=20, help="linear warm-up steps (default 20)")
    p.add_argument("--stage1-share", type=float, default=0.7, help="share of --minutes for stage 1 (default 0.7)")
    p.add_argument(
        "--init",
        choices=["embeddings", "default"],
        default="embeddings",
        help="projector init: 'embeddings' (outputs start at the scale of the decoder's token embeddings; "
        "default) or 'default' (PyTorch's, whose outputs are ~5x too small for smollm2)",
    )
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget for training (both stages)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=None, help="model hub cache dir")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Train and save a projector as ``args.out`` (+ ``.json`` sidecar). Returns 0."""
    import torch

    from ..models.hub import ModelHub
    from ..readers.refrag import Projector, save_projector

    cfg = TrainConfig(
        k=args.k,
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        max_chunks=args.max_chunks,
        target_tokens=args.target_tokens,
        tokens_per_batch=args.tokens_per_batch,
        lr=args.lr,
        warmup=args.warmup,
        stage1_share=args.stage1_share,
        minutes=args.minutes,
        seed=args.seed,
    )
    if not 0.0 < args.eval_fraction < 1.0:
        raise ValueError(f"--eval-fraction must be in (0, 1), got {args.eval_fraction}")
    out = Path(args.out)
    t0 = time.perf_counter()
    # fp32: bf16 matmuls are emulated (slow) on CPUs without AMX, and the gradients are small.
    hub = ModelHub(cache_dir=args.cache_dir, device=args.device, dtype="float32")
    model, tok = hub.causal_lm(args.model)
    model.eval()
    encoder = hub.encoder(args.encoder)
    texts = load_training_texts(args.data)
    random.Random(cfg.seed).shuffle(texts)
    n_eval = max(1, int(len(texts) * args.eval_fraction))
    train_texts, eval_texts = texts[n_eval:], texts[:n_eval]
    train_w = build_windows(tok, train_texts, k=cfg.k, window_chunks=cfg.window_chunks, limit=args.windows, seed=cfg.seed)
    eval_w = build_windows(tok, eval_texts, k=cfg.k, window_chunks=cfg.window_chunks, limit=args.eval_windows, seed=cfg.seed)
    if not train_w:
        raise ValueError(f"no training windows of {cfg.window_chunks * cfg.k} tokens in {args.data}")
    print(f"[refrag] {len(train_texts)} train texts -> {len(train_w)} windows; {len(eval_w)} held-out windows", flush=True)
    train_e = embed_windows(tok, encoder, train_w, k=cfg.k)
    eval_e = embed_windows(tok, encoder, eval_w, k=cfg.k)
    t_embed = time.perf_counter() - t0
    print(f"[refrag] embedded {train_e.shape[0] * train_e.shape[1] + eval_e.shape[0] * eval_e.shape[1]} chunks, {t_embed:.0f}s since start", flush=True)
    hidden = int(model.get_input_embeddings().weight.shape[1])
    emb_rows = model.get_input_embeddings().weight if args.init == "embeddings" else None
    projector = Projector.make(int(encoder.dim), hidden, seed=cfg.seed, embeddings=emb_rows).to(args.device)
    before = evaluate(model, projector, eval_w, eval_e, cfg)
    print(f"[refrag] held-out before: {json.dumps(before)}", flush=True)
    hist = train_projector(model, projector, train_w, train_e, cfg, log=lambda p: print(f"[refrag] {json.dumps(p)}", flush=True))
    after = evaluate(model, projector, eval_w, eval_e, cfg)
    print(f"[refrag] held-out after: {json.dumps(after)}", flush=True)
    meta = {"encoder": args.encoder, "model": args.model, "k": cfg.k, "recipe": "longread train refrag"}
    save_projector(projector, out, meta)
    sidecar = {
        "projector": out.name,
        "encoder": args.encoder,
        "model": args.model,
        "k": cfg.k,
        "trained_parts": "projector only (2-layer MLP, GELU); decoder and encoder frozen",
        "init": args.init,
        "data": {
            "source": str(args.data),
            "texts": "SQuAD v1.1 dev contexts (one text per article) + Paul Graham essays",
            "train_texts": len(train_texts),
            "eval_texts": len(eval_texts),
            "train_windows": len(train_w),
            "eval_windows": len(eval_w),
            "window_tokens": cfg.window_chunks * cfg.k,
            "train_target_tokens_seen": hist["target_tokens"],
        },
        "config": asdict(cfg),
        "steps": hist["steps"],
        "train_seconds": round(hist["seconds"], 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "heldout_before": before,
        "heldout_after": after,
        "curve": hist["curve"],
    }
    atomic_write_json(out.with_suffix(".json"), sidecar)
    print(f"[refrag] wrote {out} and {out.with_suffix('.json')}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the recipe as ``python -m longread.train.refrag ...``."""
    parser = argparse.ArgumentParser(prog="longread train")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["refrag", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
