"""Message vectors for semantic search: int8 quantisation, packed blocks of vectors, cosine top-k over blocks.

Pure functions on numbers and bytes (no SQLite, no threads): the store keeps each block as one BLOB.
Must not import trio, `actors` or `transport`. numpy (a dependency of agentcast) is imported only when a
function here runs: a server without semantic memory never loads it.

A vector is stored as its direction only (cosine ignores length): normalised to unit length, then
scaled so that its largest component is ±127 and rounded to int8, with that scale kept as one
float32. Each component is then off by at most half a scale step, ``max|v| / 254``.

A block is the vectors of one (agent, user), in the order they were added, each with the sequence
number of the message it belongs to. Its bytes are an 8-byte header (``b"ACV1"``, the number of
dimensions as a little-endian uint16, two zero bytes), then one record per vector: the message's
seq (int64), the scale (float32) and the components (int8 × dimensions), all little-endian. A block
is only ever added to at its end (`append`) or rewritten without some messages (`without`), so
adding vectors is a concatenation of bytes.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: The first four bytes of every block (a format change gets a new magic).
MAGIC = b"ACV1"
_HEADER = struct.Struct("<4sH2x")
#: Bytes before the first record.
HEADER_SIZE = _HEADER.size
#: Bytes of a record besides its components: the seq (int64) and the scale (float32).
RECORD_OVERHEAD = 12
#: The most dimensions a block holds (the header keeps them in a uint16).
MAX_DIMENSIONS = 65_535

#: The fewest vectors a memory needs for a centred search (`top_k(center=)`): the mean of fewer is not
#: what everyday chat shares, only those few messages (a centred ranking is then worse than a plain one).
CENTRE_FROM = 20

MISSING_NUMPY = ("semantic search needs numpy, a dependency of agentcast that is missing here: "
                 "pip install 'numpy>=1.24' (or reinstall agentcast with its dependencies)")


def _numpy():
    try:
        import numpy
    except ImportError:
        raise ImportError(MISSING_NUMPY) from None
    return numpy


def record_size(dimensions: int) -> int:
    """Bytes one vector of `dimensions` takes in a block."""
    return RECORD_OVERHEAD + dimensions


def _record_dtype(dimensions: int):
    np = _numpy()
    return np.dtype([("seq", "<i8"), ("scale", "<f4"), ("components", "i1", (dimensions,))])


def _as_matrix(vectors: Any) -> "np.ndarray":
    """`vectors` (a sequence of equally long float sequences, or a 2-D array) as a float32 matrix; checked."""
    np = _numpy()
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"vectors must be sequences of numbers of one length ({exc})") from None
    if matrix.ndim == 1 and matrix.size == 0:
        matrix = matrix.reshape(0, 0)
    if matrix.ndim != 2:
        raise ValueError(f"vectors must be a list of vectors (a 2-D array), not an array of {matrix.ndim} dimension(s)")
    if matrix.shape[1] > MAX_DIMENSIONS:
        raise ValueError(f"vectors have {matrix.shape[1]} dimensions; at most {MAX_DIMENSIONS} are supported")
    if not np.isfinite(matrix).all():
        raise ValueError("vectors must hold finite numbers (a NaN or an infinity was given)")
    return matrix


def quantise(vectors: Any) -> tuple["np.ndarray", "np.ndarray"]:
    """The int8 components (n × d) and float32 scales (n) of `vectors`, each taken as its direction.

    ``components[i] * scales[i]`` is vector i normalised to unit length, within half a scale step
    per component. A zero vector has no direction: its components and scale are zero (cosine 0
    with anything).
    """
    np = _numpy()
    matrix = _as_matrix(vectors)
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    unit = np.zeros_like(matrix)
    nonzero = norms > 0
    unit[nonzero] = (matrix[nonzero] / norms[nonzero, None]).astype(np.float32)
    peaks = np.abs(unit).max(axis=1) if unit.shape[1] else np.zeros(len(unit), np.float32)
    scales = (peaks / np.float32(127.0)).astype(np.float32)
    components = np.zeros(unit.shape, dtype=np.int8)
    nonzero = scales > 0
    components[nonzero] = np.clip(np.rint(unit[nonzero] / scales[nonzero, None]), -127, 127).astype(np.int8)
    return components, scales


def dequantise(components: "np.ndarray", scales: "np.ndarray") -> "np.ndarray":
    """The float32 vectors that int8 `components` and `scales` stand for (unit length, within rounding)."""
    np = _numpy()
    return components.astype(np.float32) * np.asarray(scales, dtype=np.float32)[:, None]


def _seqs(seqs: Sequence[int], count: int) -> "np.ndarray":
    np = _numpy()
    if len(seqs) != count:
        raise ValueError(f"{len(seqs)} seqs were given for {count} vectors: give one seq per vector")
    if not all(type(s) is int or isinstance(s, np.integer) for s in seqs):
        raise ValueError("seqs must be integers (the messages' sequence numbers)")
    if any(not 0 < int(s) < 2**63 for s in seqs):
        raise ValueError("seqs must be positive 64-bit integers (the messages' sequence numbers)")
    return np.asarray(seqs, dtype="<i8")


def _records(seqs: Sequence[int], vectors: Any) -> tuple[bytes, int]:
    """The records of `vectors` (with their `seqs`) as bytes, and the number of dimensions."""
    np = _numpy()
    matrix = _as_matrix(vectors)
    components, scales = quantise(matrix)
    dimensions = matrix.shape[1]
    records = np.empty(len(matrix), dtype=_record_dtype(dimensions))
    records["seq"] = _seqs(seqs, len(matrix))
    records["scale"] = scales
    records["components"] = components
    return records.tobytes(), dimensions


def pack(seqs: Sequence[int], vectors: Any) -> bytes:
    """A new block holding `vectors` (float, any length: each is stored as its direction) for the
    messages `seqs` (one each, in the same order)."""
    body, dimensions = _records(seqs, vectors)
    if dimensions == 0:
        raise ValueError("vectors must have at least one dimension")
    return _HEADER.pack(MAGIC, dimensions) + body


def dimensions_of(block: bytes) -> int:
    """The number of dimensions of `block`'s vectors; ValueError if `block` is not a whole vector block."""
    view = memoryview(block)
    if len(view) < HEADER_SIZE:
        raise ValueError(f"not a vector block: {len(view)} bytes, shorter than its {HEADER_SIZE}-byte header")
    magic, dimensions = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ValueError(f"not a vector block: it starts with {bytes(magic)!r}, not {MAGIC!r}")
    if dimensions == 0:
        raise ValueError("not a vector block: its header gives 0 dimensions")
    if (len(view) - HEADER_SIZE) % record_size(dimensions):
        raise ValueError(f"a truncated or corrupt vector block: {len(view) - HEADER_SIZE} bytes of records "
                         f"is not a whole number of {record_size(dimensions)}-byte records")
    return dimensions


def count(block: bytes) -> int:
    """How many vectors `block` holds."""
    return (len(block) - HEADER_SIZE) // record_size(dimensions_of(block))


def append(block: bytes, seqs: Sequence[int], vectors: Any) -> bytes:
    """`block` with `vectors` (for `seqs`) added at its end; their dimensions must be the block's."""
    dimensions = dimensions_of(block)
    body, given = _records(seqs, vectors)
    if body and given != dimensions:
        raise ValueError(f"vectors of {given} dimensions cannot go in a block of {dimensions}-dimension vectors "
                         "(a different embedding model?)")
    return bytes(block) + body


class VectorBlock:
    """An unpacked block: views on its bytes (no copy), `seqs` (int64), `scales` (float32) and
    `components` (int8, count × dimensions)."""

    __slots__ = ("seqs", "scales", "components", "dimensions")

    def __init__(self, block: bytes) -> None:
        np = _numpy()
        self.dimensions = dimensions_of(block)
        records = np.frombuffer(block, dtype=_record_dtype(self.dimensions), offset=HEADER_SIZE)
        self.seqs = records["seq"]
        self.scales = records["scale"]
        self.components = records["components"]

    def __len__(self) -> int:
        return len(self.seqs)

    def vectors(self) -> "np.ndarray":
        """The block's vectors as float32 (unit length, within rounding)."""
        return dequantise(self.components, self.scales)


def unpack(block: bytes) -> VectorBlock:
    """The seqs, scales and int8 components held in `block` (ValueError if it is not a vector block)."""
    return VectorBlock(block)


def without(block: bytes, seqs: Iterable[int]) -> bytes:
    """`block` without the vectors of the messages `seqs` (those it does not hold are ignored)."""
    np = _numpy()
    unpacked = VectorBlock(block)
    drop = np.isin(unpacked.seqs, np.fromiter((int(s) for s in seqs), dtype=np.int64))
    if not drop.any():
        return bytes(block)
    records = np.frombuffer(block, dtype=_record_dtype(unpacked.dimensions), offset=HEADER_SIZE)
    return bytes(block[:HEADER_SIZE]) + records[~drop].tobytes()


def mean_vector(blocks: Iterable["bytes | VectorBlock"]) -> "np.ndarray | None":
    """The mean of the vectors held in `blocks` (float32), or None if they hold none: the `center` that
    `top_k` takes, to rank by what sets a user's messages apart rather than by what they all share."""
    np = _numpy()
    total, n, dimensions = None, 0, None
    for block in blocks:
        unpacked = block if isinstance(block, VectorBlock) else VectorBlock(block)
        if dimensions is not None and unpacked.dimensions != dimensions:
            raise ValueError("the blocks hold vectors of different dimensions (a different embedding model?)")
        dimensions = unpacked.dimensions
        if len(unpacked):
            part = unpacked.scales @ unpacked.components.astype(np.float32)
            total = part if total is None else total + part
            n += int(np.count_nonzero(unpacked.scales))  # zero vectors have no direction: not counted
    if n == 0:
        return None
    return None if total is None else (total / n).astype(np.float32)


def concat(blocks: Sequence[bytes]) -> bytes:
    """One block holding the vectors of `blocks` (of one number of dimensions), in the order given."""
    if not blocks:
        raise ValueError("concat needs at least one block")
    dimensions = dimensions_of(blocks[0])
    parts = [bytes(blocks[0])]
    for block in blocks[1:]:
        if dimensions_of(block) != dimensions:
            raise ValueError("the blocks hold vectors of different dimensions (a different embedding model?)")
        parts.append(bytes(memoryview(block)[HEADER_SIZE:]))
    return b"".join(parts)


def top_k(query: Any, blocks: Iterable["bytes | VectorBlock"], k: int, *, center: Any = None,
          since_seq: int = 0) -> list[tuple[int, float]]:
    """The `k` messages whose vectors are closest to `query` by cosine, over all `blocks`: (seq, cosine),
    best first; equal cosines in seq order. Only messages with seq >= `since_seq` are ranked.

    `query` is a float vector of the blocks' dimensions (any length; only its direction counts).
    With `center` (a vector, usually the `mean_vector` of the same blocks), the cosine is taken
    between ``query - center`` and each ``vector - center``: the direction every message of a memory
    shares (everyday chat) then stops favouring everyday chat. A zero query matches nothing (empty
    list); so does, with `center`, a query whose direction is the centre itself (only possible when
    the centre has unit length: every vector of the memory the same). A zero vector (no direction: a
    message its embedder could not embed) matches nothing either.

    Each block's scores come from one matrix product (its int8 components as float32 against the
    query, and against the centre when centring); the best `k` of all blocks are then taken at once.
    """
    np = _numpy()
    if type(k) is not int or k < 0:
        raise ValueError(f"k must be an integer >= 0, not {k!r}")
    matrix = _as_matrix([query] if np.ndim(query) == 1 else query)
    if len(matrix) != 1:
        raise ValueError("query must be one vector")
    norm = float(np.linalg.norm(matrix[0].astype(np.float64)))
    if k == 0 or norm == 0:
        return []
    direction = (matrix[0] / np.float32(norm)).astype(np.float32)
    shift = None
    if center is not None:
        shift = _as_matrix([center])[0]
        if len(shift) != len(direction):
            raise ValueError(f"center has {len(shift)} dimensions, the query {len(direction)}")
        direction = direction - shift
        shifted_norm = float(np.linalg.norm(direction.astype(np.float64)))
        if shifted_norm == 0:
            return []
        direction = (direction / np.float32(shifted_norm)).astype(np.float32)
        offset = float(direction @ shift)  # (query - center) . center, per unit of the shifted query
        shift_norm2 = float(shift.astype(np.float64) @ shift)
        against = np.stack([direction, shift], axis=1)
    found_seqs, found_scores = [], []
    for block in blocks:
        unpacked = block if isinstance(block, VectorBlock) else VectorBlock(block)
        if unpacked.dimensions != len(direction):
            raise ValueError(f"the query has {len(direction)} dimensions but a block holds vectors of "
                             f"{unpacked.dimensions} (a different embedding model?)")
        if len(unpacked) == 0:
            continue
        seqs, scales, components = unpacked.seqs, unpacked.scales, unpacked.components
        keep = scales > 0
        if since_seq > 0:
            keep &= seqs >= since_seq
        if not keep.all():
            seqs, scales, components = seqs[keep], scales[keep], components[keep]
            if len(seqs) == 0:
                continue
        floats = components.astype(np.float32)
        if shift is None:
            scores = (floats @ direction) * scales
        else:
            # cos(q', v - c) = (q'.v - q'.c) / |v - c|, with |v - c|^2 = |v|^2 - 2 v.c + |c|^2
            dots = (floats @ against) * scales[:, None]
            lengths2 = np.einsum("ij,ij->i", floats, floats) * scales**2
            spread = np.sqrt(np.clip(lengths2 - 2 * dots[:, 1] + shift_norm2, 1e-12, None))
            scores = (dots[:, 0] - offset) / spread
        found_seqs.append(seqs)
        found_scores.append(scores)
    if not found_seqs:
        return []
    seqs = np.concatenate(found_seqs)
    scores = np.concatenate(found_scores)
    if len(scores) > k:
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        best = np.flatnonzero(scores >= kth)  # every tie at the k-th score, so ties can go by seq below
        seqs, scores = seqs[best], scores[best]
    order = np.lexsort((seqs, -scores))[:k]  # by score, best first; ties by seq
    return [(int(seqs[i]), float(scores[i])) for i in order]
