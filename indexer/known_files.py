"""The files an index holds, by content, in 32 bytes a file: what deduplication and appends look up.

A dict of sha256 strings and paths costs about 400 bytes a file (40 GB at 1e8 files). Here
each file is four 64-bit numbers: the first 16 bytes of its sha256 (two words), its id, and a
hash of the path it was listed under (telling "the same file listed again", on an append, from
"another file with the same bytes"). They live in sorted runs merged as they grow (a
log-structured set: each run is binary-searched, and merging equal-sized runs keeps their number
logarithmic), plus a dict of the files added since the last :meth:`KnownFiles.settle`. Two
files agreeing on 128 bits of sha256 are taken as identical (chance of any such pair among 1e9
files: about 1e-21).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compsearch.mapping.errors import CompsearchError

ENTRY = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("id", "<i8"), ("path", "<u8")])
SETTLE_AT = 1 << 16  # files added before the pending dict becomes a sorted run
_HEX = np.zeros(256, dtype=np.uint64)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint64)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = _HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_NIBBLE_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)
_PATH_BASE = np.uint64(0x100000001B3)  # FNV's 64-bit prime, as the base of a polynomial hash
_SECOND_PATH_BASE = np.uint64(0xC2B2AE3D27D4EB4F)  # xxHash's second 64-bit prime: another, independent word
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / φ: spreads a path's length over the bits
Digest = tuple[int, int]  # a sha256's first 16 bytes as two 64-bit words


def _bytes_of(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(the UTF-8 bytes of all strings, back to back; the offsets, rebased to 0) of a string array."""
    strings = strings.combine_chunks() if isinstance(strings, pa.ChunkedArray) else strings
    strings = strings.cast(pa.large_string())
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset:strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8) if strings.buffers()[2] else np.zeros(0, np.uint8)
    return data[offsets[0]:offsets[-1]], offsets - offsets[0]


def digest_keys(sha256s: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit words of each hex sha256's first 16 bytes, vectorised."""
    data, offsets = _bytes_of(pc.utf8_slice_codeunits(sha256s, 0, 32))
    if len(sha256s) and (np.diff(offsets) != 32).any():
        raise CompsearchError("an index shard holds a sha256 that is not 64 hex digits",
                              "rebuild the index (`compsearch index … --overwrite`)")
    nibbles = _HEX[data.reshape(-1, 32)] << np.concatenate([_NIBBLE_SHIFTS, _NIBBLE_SHIFTS])
    return np.bitwise_or.reduce(nibbles[:, :16], axis=1), np.bitwise_or.reduce(nibbles[:, 16:], axis=1)


def digest_key(sha256: str) -> Digest:
    """:func:`digest_keys` of one hex sha256, without Arrow (a file hashed on its own)."""
    return int(sha256[:16], 16), int(sha256[16:32], 16)


def path_keys(paths: pa.Array, base: np.uint64 = _PATH_BASE) -> np.ndarray:
    """A 64-bit hash of each path (null as ""), vectorised: a polynomial over its bytes in
    ``base``, mixed with its length. Alone, it only tells listings of one file apart from another
    file's bytes; :func:`path_digests` names a path by two."""
    if not len(paths):
        return np.zeros(0, dtype=np.uint64)
    data, offsets = _bytes_of(pc.fill_null(paths.cast(pa.string()), ""))
    lengths = np.diff(offsets)
    position = np.arange(len(data)) - np.repeat(offsets[:-1], lengths)
    powers = np.cumprod(np.full(int(lengths.max()), base, dtype=np.uint64))  # wraps mod 2^64, as meant
    terms = np.append((data.astype(np.uint64) + np.uint64(1)) * powers[position], np.uint64(0))
    sums = np.add.reduceat(terms, np.minimum(offsets[:-1], len(data)))
    sums[lengths == 0] = 0  # reduceat gives the next row's first term for an empty row
    mixed = sums ^ (lengths.astype(np.uint64) * _GOLDEN)
    mixed ^= mixed >> np.uint64(31)
    return mixed * np.uint64(0xBF58476D1CE4E5B9)


def path_digests(paths: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """128 bits naming each path: :func:`path_keys` in two bases. Two paths agreeing on both are
    taken as one (by chance, among 1e9 paths: about 1e-20)."""
    return path_keys(paths), path_keys(paths, _SECOND_PATH_BASE)



@dataclass(frozen=True)
class FileKeys:
    """One batch's files as :class:`KnownFiles` keys them, computed at once."""

    digests: list[Digest]
    paths: list[int]


def file_keys(sha256s: Sequence[str], paths: Sequence[str | None]) -> FileKeys:
    his, los = digest_keys(pa.array(list(sha256s), pa.string()))
    return FileKeys(list(zip(his.tolist(), los.tolist())), path_keys(pa.array(list(paths), pa.string())).tolist())


def _sorted(entries: np.ndarray) -> np.ndarray:
    return entries[np.lexsort((entries["lo"], entries["hi"]))]


class KnownFiles:
    """sha256 → (id, path key) of every indexed file, looked up by :func:`file_keys` in batches."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted by (hi, lo); sizes decreasing
        self._pending: dict[Digest, tuple[int, int]] = {}

    @classmethod
    def from_batches(cls, batches: Iterable[pa.RecordBatch]) -> KnownFiles:
        """From record batches with ``id``, ``sha256`` and ``path`` columns (an index's shards),
        streamed: only the compact entries stay in memory."""
        known = cls()
        for batch in batches:
            entries = np.empty(batch.num_rows, dtype=ENTRY)
            entries["hi"], entries["lo"] = digest_keys(batch.column("sha256"))
            entries["id"] = batch.column("id").to_numpy(zero_copy_only=False)
            entries["path"] = path_keys(batch.column("path"))
            known._push(_sorted(entries))
        return known

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs) + len(self._pending)

    def find(self, digests: Sequence[Digest]) -> list[tuple[int, int] | None]:
        """(id, path key) of each file already known, else None (one vectorised pass per run)."""
        found: list[tuple[int, int] | None] = [self._pending.get(digest) for digest in digests]
        missing = [i for i, hit in enumerate(found) if hit is None]
        if missing and self._runs:
            hi = np.array([digests[i][0] for i in missing], dtype=np.uint64)
            lo = np.array([digests[i][1] for i in missing], dtype=np.uint64)
            for run in self._runs:
                start, stop = np.searchsorted(run["hi"], hi, "left"), np.searchsorted(run["hi"], hi, "right")
                for j in np.nonzero(stop > start)[0]:  # the first word matches: check the second
                    span = run[start[j]:stop[j]]
                    match = np.nonzero(span["lo"] == lo[j])[0]
                    if match.size and found[missing[j]] is None:
                        entry = span[match[0]]
                        found[missing[j]] = (int(entry["id"]), int(entry["path"]))
        return found

    def recent(self, digest: Digest) -> tuple[int, int] | None:
        """:meth:`find` among the files added since the last :meth:`settle` only (a dict lookup)."""
        return self._pending.get(digest)

    def add(self, digest: Digest, image_id: int, path_key: int) -> None:
        self._pending[digest] = (image_id, path_key)

    def repeats(self) -> dict[int, int]:
        """id → the id it repeats, for every file whose digest a file with a smaller id has (none
        when every file is indexed once; shards running at once can leave some)."""
        pending = np.array([(*digest, image_id) for digest, (image_id, _) in self._pending.items()],
                           dtype=np.uint64).reshape(-1, 3)
        hi = np.concatenate([run["hi"] for run in self._runs] + [pending[:, 0]])
        lo = np.concatenate([run["lo"] for run in self._runs] + [pending[:, 1]])
        ids = np.concatenate([run["id"] for run in self._runs] + [pending[:, 2].astype(np.int64)])
        order = np.lexsort((ids, lo, hi))  # by digest, then id: a group's first is its smallest id
        hi, lo, ids = hi[order], lo[order], ids[order]
        starts = np.concatenate([[True], (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])])
        first = ids[np.flatnonzero(starts)][np.cumsum(starts) - 1]
        return dict(zip(ids[~starts].tolist(), first[~starts].tolist()))

    def settle(self) -> None:
        """Move the files added so far into the sorted runs once there are enough of them; call
        between batches (within one, :meth:`recent` finds what the batch added)."""
        if len(self._pending) < SETTLE_AT:
            return
        entries = np.empty(len(self._pending), dtype=ENTRY)
        entries["hi"], entries["lo"] = zip(*self._pending)
        entries["id"], entries["path"] = zip(*self._pending.values())
        self._pending.clear()
        self._push(_sorted(entries))

    def _push(self, run: np.ndarray) -> None:
        """Add a sorted run, merging while the last one is no bigger (binary-counter merging)."""
        while self._runs and len(self._runs[-1]) <= len(run):
            run = _sorted(np.concatenate([self._runs.pop(), run]))
        if len(run):
            self._runs.append(run)
