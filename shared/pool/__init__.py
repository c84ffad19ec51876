r"""Reference pools: the ordered item list server and clients must agree on, and readers for it.

Indices in a payload mean nothing unless both sides hold the same items in the same order. A pool is therefore
pinned by its **manifest** (ordered keys + a 128-bit BLAKE2b hash per item) and a ``pool_id``, the sha256 of the
manifest. A client recomputes the per-item hashes from its own copy (``plada-client verify-pool``) before it
trusts a payload's indices.

On disk a pool is a folder with ``pool.json`` (kind, name, pool_id), ``manifest.npz`` and, for the ``array``
kind, ``images.npy`` (N, H, W[, C] uint8). The ``folder`` kind points at an ImageNet-style tree
(``train/<wnid>/*.JPEG``) whose files are read on demand; keys are the sorted relative paths.

A client's copy need not be byte-identical: the server publishes the pool's **definition** (``definition``:
keys, groups, hashes, perceptual fingerprints) and a client attaches its own folder, tar or Parquet copy
(``sources``, ``attach``) to it by key; each used item is checked when it is read.

The package: ``manifest`` (identity), ``layout`` (coding order), ``readers`` (open and verify), ``build``
(make a pool), ``definition``, ``fingerprint``, ``sources``, ``attach`` (own copies).
Everything is importable from here.
"""

from plada.shared.pool.attach import AttachedPool, AttachReport, KeyRule, attach
from plada.shared.pool.build import (
    FALLBACK_IMAGE_SIZE,
    fingerprint_pool,
    index_image_folder,
    index_tar_shards,
    native_image_size,
    write_array_pool,
)
from plada.shared.pool.definition import PoolDefinition, decode_definition, definition_of, encode_definition
from plada.shared.pool.layout import PoolLayout
from plada.shared.pool.manifest import (
    ITEM_HASH_BYTES,
    POOL_FORMAT,
    POOL_FORMAT_VERSION,
    KeyTable,
    PoolManifest,
    compute_pool_id,
    item_hash,
)
from plada.shared.pool.readers import (
    ArrayPool,
    FolderPool,
    Pool,
    Progress,
    TarPool,
    VerifyReport,
    open_pool,
    verify_pool,
)
from plada.shared.pool.sources import IMAGE_SUFFIXES

__all__ = [
    "FALLBACK_IMAGE_SIZE",
    "IMAGE_SUFFIXES",
    "ITEM_HASH_BYTES",
    "POOL_FORMAT",
    "POOL_FORMAT_VERSION",
    "ArrayPool",
    "AttachReport",
    "AttachedPool",
    "FolderPool",
    "KeyRule",
    "KeyTable",
    "Pool",
    "PoolDefinition",
    "PoolLayout",
    "PoolManifest",
    "Progress",
    "TarPool",
    "VerifyReport",
    "attach",
    "compute_pool_id",
    "decode_definition",
    "definition_of",
    "encode_definition",
    "fingerprint_pool",
    "index_image_folder",
    "index_tar_shards",
    "item_hash",
    "native_image_size",
    "open_pool",
    "verify_pool",
    "write_array_pool",
]
