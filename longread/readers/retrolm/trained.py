"""The trained page scorer of ``reader.retrolm`` (``scorer: PATH`` / ``trained``) and its file.

The training-free scorers of :mod:`.scoring` average softmaxed page scores over layers and heads
with equal weights. On a 135M model that ranks the answer page of a SQuAD question near the bottom
more often than not. RetroLM trains its page retriever; this is a small trained scorer that works
on the features the reader already has (:func:`longread.readers.retrolm.scoring.page_features`;
nothing new is stored per page). The score of page ``p`` is

    Σ_l Σ_h  a[l, h] · quest[l, h, p] + b[l, h] · mean_key[l, h, p]  +  Σ_l (q[l] U_l) · (s[l, p] V_l) / r

with learned head weights ``a``, ``b`` and a rank-``r`` bilinear form per layer (``rank: 0``
drops it). It starts as the training-free ``quest`` scorer exactly (``a`` uniform, ``b`` = 0,
``V`` = 0) and is trained with an InfoNCE loss over a question's positive page and the other
pages of the same document (``longread train retrolm``). The model stays frozen.

The file is safetensors: tensors ``head_quest``, ``head_mean`` ``[layers, heads]``,
``log_scale`` ``[]`` (the InfoNCE inverse temperature; ranking ignores it) and, when ``rank > 0``,
``u`` ``[layers, heads*head_dim, r]``, ``v`` ``[layers, 3*kv_heads*head_dim, r]``; metadata
``format``, ``model``, ``page_size``, ``layers`` (JSON list), ``n_layers``, ``heads``,
``kv_heads``, ``head_dim``, ``rank``. :func:`load_scorer` is strict: unknown or missing
tensors, wrong shapes, another model, page size or layout are refused with the names.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ...io import atomic_write_bytes

__all__ = [
    "SCORER_FORMAT",
    "SHIPPED_SCORERS",
    "resolve_scorer_path",
    "ScorerSpec",
    "make_scorer",
    "score_features",
    "info_nce",
    "save_scorer",
    "load_scorer",
]

SCORER_FORMAT = "longread-retrolm-scorer-v1"
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
SHIPPED_SCORERS: dict[tuple[str, int], str] = {
    ("smollm2-135m-instruct", 128): "retrolm_scorer_smollm2-135m-instruct_p128.safetensors",
}
"""(model, page_size) -> file in ``longread/assets`` used by ``scorer: trained`` (JSON sidecar beside it)."""


def resolve_scorer_path(scorer: str, *, model: str, page_size: int) -> Path:
    """The file of ``scorer`` (``"trained"``: the shipped one for this model and page size, else a path).

    Raises ``FileNotFoundError`` naming what ships when none does, or when the path does not exist.
    """
    if scorer == "trained":
        name = SHIPPED_SCORERS.get((model, page_size))
        if name is None or not (ASSETS_DIR / name).is_file():
            shipped = ", ".join(f"{m} page_size={ps}" for (m, ps), f in SHIPPED_SCORERS.items() if (ASSETS_DIR / f).is_file())
            raise FileNotFoundError(
                f"no trained retrolm scorer ships for model={model!r} page_size={page_size} (shipped: {shipped or 'none'}); "
                f"train one with `longread train retrolm --model {model} --page-size {page_size} --out S.safetensors` "
                "and set `scorer: S.safetensors`"
            )
        return ASSETS_DIR / name
    path = Path(scorer).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"retrolm scorer file {scorer!r} does not exist; train one with `longread train retrolm`")
    return path


class ScorerSpec:
    """Shape and provenance of a trained scorer: what its file's metadata records."""

    def __init__(
        self, *, model: str, page_size: int, layers: list[int], n_layers: int, heads: int, kv_heads: int,
        head_dim: int, rank: int,
    ) -> None:
        if not layers or sorted(set(layers)) != list(layers):
            raise ValueError(f"layers must be a non-empty ascending list without repeats, got {layers}")
        if any(not 0 <= li < n_layers for li in layers):
            raise ValueError(f"layers {layers} out of range for a {n_layers}-layer model")
        if heads <= 0 or kv_heads <= 0 or heads % kv_heads or head_dim <= 0:
            raise ValueError(f"bad head layout: heads={heads} kv_heads={kv_heads} head_dim={head_dim}")
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        if page_size <= 0:
            raise ValueError(f"page_size must be > 0, got {page_size}")
        self.model, self.page_size, self.layers = model, page_size, list(layers)
        self.n_layers, self.heads, self.kv_heads, self.head_dim, self.rank = n_layers, heads, kv_heads, head_dim, rank

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def s_dim(self) -> int:
        return 3 * self.kv_heads * self.head_dim

    def metadata(self) -> dict[str, str]:
        return {
            "format": SCORER_FORMAT,
            "model": self.model,
            "page_size": str(self.page_size),
            "layers": json.dumps(self.layers),
            "n_layers": str(self.n_layers),
            "heads": str(self.heads),
            "kv_heads": str(self.kv_heads),
            "head_dim": str(self.head_dim),
            "rank": str(self.rank),
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected tensor name -> shape in the file."""
        nl = len(self.layers)
        out: dict[str, tuple[int, ...]] = {"head_quest": (nl, self.heads), "head_mean": (nl, self.heads), "log_scale": ()}
        if self.rank:
            out["u"] = (nl, self.q_dim, self.rank)
            out["v"] = (nl, self.s_dim, self.rank)
        return out


def make_scorer(spec: ScorerSpec, *, seed: int = 0) -> Any:
    """A fresh scorer (``torch.nn.ParameterDict``) equal to the training-free ``quest`` scorer.

    ``head_quest`` is uniform, ``head_mean`` zero, ``u`` random (seeded) and ``v`` zero, so the
    bilinear term is zero until trained but gets gradients from the first step.
    """
    import torch

    nl = len(spec.layers)
    params = {
        "head_quest": torch.full((nl, spec.heads), 1.0 / (nl * spec.heads)),
        "head_mean": torch.zeros(nl, spec.heads),
        "log_scale": torch.tensor(math.log(10.0)),
    }
    if spec.rank:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            params["u"] = torch.randn(nl, spec.q_dim, spec.rank) / math.sqrt(spec.q_dim)
        params["v"] = torch.zeros(nl, spec.s_dim, spec.rank)
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in params.items()})


def score_features(scorer: Any, feats: dict[str, Any]) -> Any:
    """Page scores ``[..., P]`` of a scorer on features from :func:`page_features`.

    Features may carry leading batch dims (questions of one document): ``quest``/``mean_key``
    ``[..., nl, H, P]``, ``q`` ``[..., nl, Dq]``; ``s`` ``[nl, P, Ds]`` is the document's.
    """
    import torch

    a, b = scorer["head_quest"], scorer["head_mean"]
    out = (feats["quest"] * a[..., None]).sum(dim=(-3, -2)) + (feats["mean_key"] * b[..., None]).sum(dim=(-3, -2))
    if "u" in scorer:
        u, v = scorer["u"], scorer["v"]
        qu = torch.einsum("...ld,ldr->...lr", feats["q"], u)  # [..., nl, r]
        sv = torch.einsum("lpd,ldr->lpr", feats["s"], v)  # [nl, P, r]
        out = out + torch.einsum("...lr,lpr->...p", qu, sv) / u.shape[-1]
    return out


def info_nce(scores: Any, positive: Any, valid: Any | None = None, scale: Any = 1.0) -> Any:
    """Mean InfoNCE loss: ``-log softmax(scale * scores)[positive]`` over the valid pages.

    ``scores`` ``[B, P]``; ``positive`` ``[B]`` (page index); ``valid`` ``[B, P]`` bool marks the
    pages in the softmax (the positive and its negatives; padding and ambiguous pages False),
    all True when omitted. Raises ``ValueError`` when a positive is not valid.
    """
    import torch

    if scores.dim() != 2 or positive.shape != scores.shape[:1]:
        raise ValueError(f"scores must be [B, P] and positive [B], got {tuple(scores.shape)} and {tuple(positive.shape)}")
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    if not bool(valid.gather(1, positive[:, None]).all()):
        raise ValueError("every positive page must be among the valid pages")
    logits = (scores * scale).masked_fill(~valid, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - logits.gather(1, positive[:, None])[:, 0]).mean()


def save_scorer(scorer: Any, spec: ScorerSpec, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write a scorer and its spec (+ ``extra`` metadata as strings) as safetensors, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().float().contiguous().cpu() for k, v in scorer.items()}
    shapes = spec.shapes()
    if {k: tuple(v.shape) for k, v in state.items()} != shapes:
        raise ValueError(f"scorer tensors {({k: tuple(v.shape) for k, v in state.items()})} do not match the spec {shapes}")
    meta = {k: str(v) for k, v in (extra or {}).items()}
    meta.update(spec.metadata())
    atomic_write_bytes(path, save(state, metadata=meta))


def load_scorer(
    path: str | Path, *, model: str | None = None, page_size: int | None = None, layout: tuple[int, int, int, int] | None = None
) -> tuple[Any, ScorerSpec, dict[str, str]]:
    """Load a scorer saved by :func:`save_scorer`; return ``(scorer, spec, metadata)``.

    When given, ``model`` (name), ``page_size`` and ``layout`` (``n_layers, heads, kv_heads,
    head_dim`` of the model it will run with) must match what it was trained for. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` naming the mismatch, the missing
    or unexpected tensors, or a bad shape.
    """
    import torch
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"retrolm scorer file {str(path)!r} does not exist; train one with `longread train retrolm`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    if meta.get("format") != SCORER_FORMAT:
        raise ValueError(f"{path}: not a retrolm page scorer (format {meta.get('format')!r}, expected {SCORER_FORMAT!r})")
    try:
        spec = ScorerSpec(
            model=meta["model"],
            page_size=int(meta["page_size"]),
            layers=[int(i) for i in json.loads(meta["layers"])],
            n_layers=int(meta["n_layers"]),
            heads=int(meta["heads"]),
            kv_heads=int(meta["kv_heads"]),
            head_dim=int(meta["head_dim"]),
            rank=int(meta["rank"]),
        )
    except KeyError as e:
        raise ValueError(f"{path}: metadata lacks {e.args[0]!r}") from None
    if model is not None and spec.model != model:
        raise ValueError(f"{path}: scorer was trained for model {spec.model!r}, but the reader uses {model!r}")
    if page_size is not None and spec.page_size != page_size:
        raise ValueError(f"{path}: scorer was trained for page_size={spec.page_size}, but the reader uses page_size={page_size}")
    if layout is not None:
        have = (spec.n_layers, spec.heads, spec.kv_heads, spec.head_dim)
        if tuple(layout) != have:
            raise ValueError(
                f"{path}: scorer was trained for (layers, heads, kv_heads, head_dim) = {have}, but model "
                f"{model!r} has {tuple(layout)}"
            )
    shapes = spec.shapes()
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    bad = {k: tuple(state[k].shape) for k in shapes if tuple(state[k].shape) != shapes[k]}
    if bad:
        raise ValueError(f"{path}: tensors {bad} have the wrong shape, expected {({k: shapes[k] for k in bad})}")
    scorer = torch.nn.ParameterDict({k: torch.nn.Parameter(v.float(), requires_grad=False) for k, v in state.items()})
    return scorer, spec, meta
