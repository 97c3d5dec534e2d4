"""On-disk cache of dataset index arrays, keyed by a hash of everything that determines them.

An entry is a few ``.npy`` files plus a ``.json`` description written last (the commit marker):

    <cache_dir>/<name>-<digest>.json          {"format", "params", "arrays": {key: [shape, dtype, checksum]}}
    <cache_dir>/<name>-<digest>-<key>.npy     one per array, memory-mapped when loaded

``digest`` hashes ``params`` (every parameter that affects the arrays, including a checksum of the
data they index), so a changed parameter selects a different entry. An entry is trusted only if its
description names exactly these parameters and every array loads with the recorded shape, dtype and
checksum; otherwise it is reported as stale or corrupt and rebuilt. Building happens once: under
torch.distributed rank 0 builds while the other ranks wait on a barrier, and an exclusive file lock
keeps concurrent processes (other jobs, ranks on a disk rank 0 cannot see) from building the same
entry twice. Files are written under temporary names and renamed, so readers never see half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import zlib
from typing import Any, Callable, Iterator

import numpy as np
import torch.distributed as dist

from megaphi.common.files import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)

CACHE_FORMAT = "megaphi-index-cache-1"


def digest_params(params: dict[str, Any]) -> str:
    """Stable short hash of JSON-serialisable parameters (sorted keys)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=10).hexdigest()


def checksum(array: np.ndarray) -> str:
    """CRC-32 of an array's dtype and bytes: detects corruption at GB/s (the cache is not a trust boundary)."""
    array = np.ascontiguousarray(array)
    crc = zlib.crc32(array.dtype.str.encode())
    return f"{zlib.crc32(array.data.cast('B'), crc):08x}"


class IndexCache:
    """One cache entry: ``load()`` it if valid, else ``build`` and save it.

    ``status`` after :meth:`load_or_build` is ``"loaded"``, ``"built"`` or ``"rebuilt: <why>"``
    (a stale or corrupt entry was found and replaced).
    """

    def __init__(self, cache_dir: str | os.PathLike, name: str, params: dict[str, Any]):
        self.cache_dir = os.fspath(cache_dir)
        self.params = json.loads(json.dumps(params))  # normalise tuples to lists, as read back from JSON
        self.prefix = os.path.join(self.cache_dir, f"{name}-{digest_params(self.params)}")
        self.status = "unbuilt"

    @property
    def description_path(self) -> str:
        return f"{self.prefix}.json"

    def array_path(self, key: str) -> str:
        return f"{self.prefix}-{key}.npy"

    def load(self) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """The cached arrays (memory-mapped), or None and why the entry is unusable (None if absent)."""
        if not os.path.exists(self.description_path):
            return None, None
        try:
            with open(self.description_path) as f:
                description = json.load(f)
        except (OSError, ValueError) as e:
            return None, f"unreadable description {self.description_path} ({e})"
        if not isinstance(description, dict) or description.get("format") != CACHE_FORMAT:
            return None, f"{self.description_path} is not a {CACHE_FORMAT} description"
        if description.get("params") != self.params:
            return None, f"{self.description_path} was built for other parameters"
        arrays = {}
        try:
            recorded = [(key, shape, dtype, digest) for key, (shape, dtype, digest) in description["arrays"].items()]
        except (KeyError, AttributeError, TypeError, ValueError):
            return None, f"{self.description_path} has no valid array list"
        for key, shape, dtype, digest in recorded:
            path = self.array_path(key)
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                return None, f"corrupt or missing {path} ({e})"
            if list(array.shape) != shape or array.dtype.str != dtype:
                return None, f"{path} holds {array.dtype.str}{list(array.shape)}, expected {dtype}{shape}"
            if checksum(array) != digest:
                return None, f"{path} does not match its recorded checksum (corrupt)"
            arrays[key] = array
        return arrays, None

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        for key, array in arrays.items():
            with atomic_open(self.array_path(key), "wb") as f:
                np.save(f, array, allow_pickle=False)
        description = {
            "format": CACHE_FORMAT,
            "params": self.params,
            "arrays": {k: [list(a.shape), a.dtype.str, checksum(a)] for k, a in arrays.items()},
        }
        text = json.dumps(description, indent=1, sort_keys=True)
        atomic_write_text(self.description_path, text)

    def load_or_build(self, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Load the entry, building and saving it first if needed. Collective under torch.distributed:
        every rank must call it with the same parameters."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_rank() == 0:
                arrays = self._load_or_build_locked(build)
            dist.barrier()
            if dist.get_rank() != 0:
                # normally a load; builds only when the cache directory is not shared with rank 0
                arrays = self._load_or_build_locked(build)
            return arrays
        return self._load_or_build_locked(build)

    def _load_or_build_locked(self, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        arrays, problem = self.load()
        if arrays is not None:
            self.status = "loaded"
            return arrays
        os.makedirs(self.cache_dir, exist_ok=True)
        with _file_lock(f"{self.prefix}.lock"):
            arrays, problem = self.load()  # another process may have built it while we waited
            if arrays is not None:
                self.status = "loaded"
                return arrays
            if problem:
                logger.warning("index cache %s unusable, rebuilding: %s", self.prefix, problem)
            arrays = build()
            self.save(arrays)
        self.status = f"rebuilt: {problem}" if problem else "built"
        return arrays


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
