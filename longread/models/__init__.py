"""Model provisioning: local directories, Hugging Face ids, and pinned registry packs.

``ModelHub`` resolves names and loads models once; ``packs`` holds the pinned packs
(``list_packs``, ``pack_status``, ``prepare``, ``format_pack_table``). Importing this package
imports neither torch nor transformers.
"""

from .hub import ModelHub, ModelNotFoundError, resolve_dtype
from .packs import (
    ChecksumMismatchError,
    Pack,
    PackError,
    PackMissingError,
    default_cache_dir,
    format_pack_table,
    list_packs,
    pack_status,
    prepare,
)

__all__ = [
    "ModelHub",
    "ModelNotFoundError",
    "resolve_dtype",
    "Pack",
    "PackError",
    "PackMissingError",
    "ChecksumMismatchError",
    "default_cache_dir",
    "format_pack_table",
    "list_packs",
    "pack_status",
    "prepare",
]
