"""An index dir's manifest: what was built, from what, and the size and sha256 of every file.

``manifest.json`` is written last, so its presence means the index is complete. Its ``files``
table (``{relative path: {"size", "sha256"}}``: the corpus store's files under ``corpus/``, then
each part's) is filled as each part is built; opening an index
checks every size (cheap: a truncated, emptied or missing file is caught at once) and, with
``verify="full"`` (``longread index --verify``, ``longread run --verify``), every hash (a zeroed
or altered file of the right size is caught too). Any mismatch is one :class:`IndexCorruptError`
naming the file and the command that rebuilds the index.

One writer at a time: :func:`index_lock` is an exclusive lock beside the index dir
(``.<name>.lock`` in its parent, since a rebuild replaces the whole directory).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any, Literal

from ..errors import IndexCorruptError, short_repr
from ..io import WriterLock, sha256_file

__all__ = [
    "MANIFEST",
    "INDEX_FORMAT",
    "Verify",
    "IndexCorruptError",
    "file_table",
    "index_digest",
    "read_manifest",
    "check_index",
    "rebuild_command",
    "index_lock",
]

MANIFEST = "manifest.json"
INDEX_FORMAT = 3
"""3: the corpus store is sharded and memory-mapped (``corpus/``, see :mod:`longread.pipelines.store`).
2: a ``files`` table (sizes and sha256) with a JSONL store; 1: no table. Both still open (their
store is read into memory) and ``longread index`` converts them to format 3 in place."""
READ_FORMATS = (1, 2, INDEX_FORMAT)

Verify = Literal["sizes", "full"]
VERIFY_MODES = ("sizes", "full")


def index_lock(index_dir: Path) -> WriterLock:
    """The writer lock of ``index_dir`` (not yet acquired)."""
    index_dir = Path(index_dir)
    return WriterLock(index_dir.parent / f".{index_dir.name}.lock", f"index dir {str(index_dir)!r}")


def file_table(root: Path, sub: str | None = None) -> dict[str, dict[str, Any]]:
    """``{path relative to root: {"size", "sha256"}}`` of the files under ``root/sub``.

    ``sub=None``: the files directly in ``root`` except the manifest and hidden files (the
    corpus store); a part's table lists everything inside ``root/sub``, recursively.
    """
    base = root / sub if sub else root
    out: dict[str, dict[str, Any]] = {}
    paths = sorted(base.rglob("*")) if sub else sorted(base.iterdir())
    for p in paths:
        if not p.is_file() or p.name == MANIFEST or (sub is None and p.name.startswith(".")):
            continue
        rel = p.relative_to(root).as_posix()
        out[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def index_digest(manifest: dict[str, Any]) -> str:
    """What identifies an index's content: corpus, chunker and every file's hash (timings excluded).

    An index without a ``files`` table (format 1) is identified by its corpus, chunker and parts.
    """
    ident = {
        "corpus_sha256": manifest.get("corpus_sha256"),
        "chunker": manifest.get("chunker"),
        "files": manifest.get("files") or sorted(manifest.get("parts") or {}),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode("utf-8")).hexdigest()


def rebuild_command(index_dir: Path, manifest: dict[str, Any] | None) -> str:
    """The ``longread index`` command line that rebuilds ``index_dir`` (from what its manifest recorded)."""
    built = (manifest or {}).get("built_with") or {}
    config = built.get("config") or "CONFIG"
    corpus = built.get("corpus") or "CORPUS"
    return "longread index " + " ".join(
        shlex.quote(str(x)) for x in ("--config", config, "--corpus", corpus, "--out", index_dir)
    ) + " --rebuild"


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of ``index_dir``.

    Raises ``FileNotFoundError`` when there is none (not an index, or never finished) and
    :class:`IndexCorruptError` when it is not a manifest.
    """
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{str(index_dir)!r} is not a longread index (no {MANIFEST}); run `longread index` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise IndexCorruptError(
            f"index {str(index_dir)!r}: {MANIFEST} is not valid JSON ({short_repr(str(e))}); "
            f"rebuild it: {rebuild_command(index_dir, None)}"
        ) from None
    bad = _manifest_problem(manifest)
    if bad:
        raise IndexCorruptError(f"index {str(index_dir)!r}: {MANIFEST} {bad}; rebuild it: {rebuild_command(index_dir, None)}")
    return manifest


def _manifest_problem(m: Any) -> str | None:
    if not isinstance(m, dict):
        return f"must be a JSON object, got {type(m).__name__}"
    fmt = m.get("format")
    if fmt not in READ_FORMATS:
        return f"has format {short_repr(fmt)}; this longread reads formats {', '.join(map(str, READ_FORMATS))}"
    if not isinstance(m.get("corpus_sha256"), str) or not isinstance(m.get("parts"), dict):
        return "lacks corpus_sha256 or parts"
    files = m.get("files")
    if files is not None:
        if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str) for v in files.values()
        ):
            return "has a malformed files table"
    return None


def check_index(index_dir: Path, manifest: dict[str, Any], verify: Verify = "sizes") -> int:
    """Check every file the manifest lists: present, of its recorded size, and (``full``) its hash.

    Returns the number of files checked. Raises :class:`IndexCorruptError` naming the first bad
    file (and how many others are bad) and the rebuild command; ``ValueError`` for a bad ``verify``.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {list(VERIFY_MODES)}, got {short_repr(verify)}")
    index_dir = Path(index_dir)
    files = manifest.get("files")
    if files is None:
        if verify == "full":
            raise IndexCorruptError(
                f"index {str(index_dir)!r} was built by an older longread and records no checksums; "
                f"rebuild it to verify it: {rebuild_command(index_dir, manifest)}"
            )
        return 0
    problems: list[str] = []
    for name in manifest.get("parts") or {}:
        if not (index_dir / name).is_dir():
            problems.append(f"part {name!r} is missing")
    for rel, rec in files.items():
        path = index_dir / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
            continue
        size = path.stat().st_size
        if size != rec["size"]:
            problems.append(f"{rel} is {size} bytes, the manifest says {rec['size']} (truncated or rewritten)")
        elif verify == "full" and sha256_file(path) != rec["sha256"]:
            problems.append(f"{rel} does not match its sha256 in the manifest (altered or zeroed)")
    if problems:
        more = f" (and {len(problems) - 1} more damaged files)" if len(problems) > 1 else ""
        raise IndexCorruptError(
            f"index {str(index_dir)!r} is damaged: {problems[0]}{more}; rebuild it: {rebuild_command(index_dir, manifest)}"
        )
    return len(files)
