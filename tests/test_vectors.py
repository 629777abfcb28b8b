"""store._vectors: int8 quantisation (error bound), packed blocks (round trip, appends, removal, corrupt
bytes refused) and cosine top-k over blocks against a brute-force float reference, on hand-made vectors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agentcast.store import _vectors
from agentcast.store._vectors import HEADER_SIZE, MAGIC, VectorBlock, append, count, dimensions_of, mean_vector, pack
from agentcast.store._vectors import quantise, record_size, top_k, unpack, without
from support import scaled

ROOT = Path(__file__).resolve().parent.parent


def unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def reference_top(query, seqs, vectors, k, center=None, normalise=True):
    """Brute force in float64: (seq, cosine) best first, ties by seq. `normalise=False` for vectors that are
    already of unit length (as stored: the blocks' dequantised vectors are used as they are)."""
    q = np.asarray(query, dtype=np.float64)
    q = q / np.linalg.norm(q)
    v = unit(vectors) if normalise else np.asarray(vectors, dtype=np.float64)
    if center is not None:
        c = np.asarray(center, dtype=np.float64)
        q, v = q - c, v - c
        q, v = q / np.linalg.norm(q), unit(v)
    scores = v @ q
    return sorted(zip(seqs, scores.tolist()), key=lambda pair: (-pair[1], pair[0]))[:k]


# -- quantisation -----------------------------------------------------------------------------------


def test_each_component_is_within_half_a_scale_step_of_the_unit_vector():
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((200, 384)) * rng.uniform(0.01, 50, (200, 1))  # any length: only direction counts
    components, scales = quantise(vectors)
    assert components.dtype == np.int8 and scales.dtype == np.float32
    expected = unit(vectors)
    error = np.abs(components.astype(np.float64) * scales[:, None] - expected)
    assert (error <= scales[:, None] / 2 * (1 + 1e-5)).all()  # half a step, up to float32 rounding
    assert (np.abs(components).max(axis=1) == 127).all()  # the largest component uses the whole range
    assert np.allclose(scales, np.abs(expected).max(axis=1) / 127, rtol=1e-6)


def test_a_hand_made_vector_quantises_as_computed_by_hand():
    components, scales = quantise([[3.0, -4.0, 0.0]])  # unit: (0.6, -0.8, 0); scale 0.8 / 127
    assert components.tolist() == [[95, -127, 0]]  # 0.6 / (0.8 / 127) = 95.25
    assert scales[0] == pytest.approx(0.8 / 127)


def test_a_zero_vector_has_no_direction_and_matches_nothing():
    components, scales = quantise([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert components[0].tolist() == [0, 0, 0] and scales[0] == 0
    block = pack([1, 2], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert top_k([1.0, 0.0, 0.0], [block], 2) == [(2, pytest.approx(1.0))]  # not even at cosine 0
    assert top_k([-1.0, 0.0, 0.0], [block], 2) == [(2, pytest.approx(-1.0))]
    assert np.allclose(mean_vector([block]), [1.0, 0.0, 0.0], atol=0.01)  # nor in the mean


@pytest.mark.parametrize("bad", [[[1.0, float("nan")]], [[float("inf"), 0.0]], [1.0, 2.0], [[1.0], [1.0, 2.0]], "text"])
def test_vectors_that_are_not_finite_rows_are_refused(bad):
    with pytest.raises(ValueError, match="vectors"):
        quantise(bad)


# -- blocks -----------------------------------------------------------------------------------------


def test_pack_then_unpack_gives_back_the_seqs_and_quantised_vectors():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((5, 16))
    seqs = [3, 10, 11, 40, 2**62]
    block = pack(seqs, vectors)
    assert block[:4] == MAGIC and len(block) == HEADER_SIZE + 5 * record_size(16) == 8 + 5 * 28
    unpacked = unpack(block)
    components, scales = quantise(vectors)
    assert unpacked.seqs.tolist() == seqs and unpacked.dimensions == 16 and len(unpacked) == 5
    assert np.array_equal(unpacked.components, components) and np.array_equal(unpacked.scales, scales)
    assert np.allclose(unpacked.vectors(), unit(vectors), atol=float(scales.max()) / 2 + 1e-7)
    assert count(block) == 5 and dimensions_of(block) == 16


def test_appending_is_the_same_as_packing_everything_at_once():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((7, 8))
    block = pack([1, 2, 3], vectors[:3])
    block = append(block, [4, 5, 6, 7], vectors[3:])
    assert block == pack([1, 2, 3, 4, 5, 6, 7], vectors)
    assert append(block, [], np.empty((0, 8))) == block


def test_without_drops_the_named_messages_only():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((4, 8))
    block = pack([1, 2, 3, 4], vectors)
    assert without(block, [2, 4, 99]) == pack([1, 3], vectors[[0, 2]])
    assert without(block, [99]) == block
    assert count(without(block, [1, 2, 3, 4])) == 0


@pytest.mark.parametrize(
    ("blob", "says"),
    [
        (b"", "shorter than its 8-byte header"),
        (b"ACV9\x04\x00\x00\x00", "not a vector block: it starts with b'ACV9'"),
        (b"ACV1\x00\x00\x00\x00", "0 dimensions"),
        (b"ACV1\x04\x00\x00\x00" + b"\x00" * 15, "truncated or corrupt"),  # a record of 4 dimensions is 16 bytes
    ],
)
def test_bytes_that_are_not_a_whole_block_are_refused(blob, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        unpack(blob)


def test_mismatched_inputs_are_refused_saying_why():
    block = pack([1], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="a different embedding model"):
        append(block, [2], [[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="2 seqs were given for 1 vectors"):
        pack([1, 2], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="seqs must be integers"):
        pack(["1"], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="positive 64-bit"):
        pack([0], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="query has 3 dimensions but a block holds vectors of 2"):
        top_k([1.0, 0.0, 0.0], [block], 1)
    with pytest.raises(ValueError, match="k must be an integer"):
        top_k([1.0, 0.0], [block], -1)


# -- top-k ------------------------------------------------------------------------------------------

#: Hand-made 4-dimensional vectors whose cosines with QUERY are far apart (more than the int8 error).
QUERY = [1.0, 0.0, 0.0, 0.0]
HAND_MADE = {
    11: [1.0, 0.1, 0.0, 0.0],     # cos 0.995
    12: [0.0, 1.0, 0.0, 0.0],     # 0
    13: [1.0, 1.0, 0.0, 0.0],     # 0.707
    14: [-1.0, 0.0, 0.0, 0.0],    # -1
    15: [1.0, 0.0, 1.0, 1.0],     # 0.577
    16: [2.0, 0.0, 0.0, 1.0],     # 0.894
    17: [0.5, -1.0, 0.5, -1.0],   # 0.316
}


def test_top_k_over_several_blocks_equals_the_float_reference():
    seqs = list(HAND_MADE)
    vectors = list(HAND_MADE.values())
    blocks = [pack(seqs[:3], vectors[:3]), pack(seqs[3:], vectors[3:])]
    for k in (1, 2, 3, 5, 7, 20):
        got = top_k(QUERY, blocks, k)
        expected = reference_top(QUERY, seqs, vectors, k)
        assert [s for s, _ in got] == [s for s, _ in expected], k
        assert [c for _, c in got] == pytest.approx([c for _, c in expected], abs=0.01)
    assert [s for s, _ in top_k(QUERY, blocks, 3)] == [11, 16, 13]


def test_top_k_on_random_vectors_equals_the_reference_on_the_dequantised_vectors():
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3000, 64)).astype(np.float32)
    seqs = list(range(100, 3100))
    blocks = [pack(seqs[i:i + 1024], vectors[i:i + 1024]) for i in range(0, 3000, 1024)]
    stored = np.concatenate([VectorBlock(b).vectors() for b in blocks])
    for _ in range(5):
        query = rng.standard_normal(64)
        got = top_k(query, blocks, 50)
        reference = dict(reference_top(query, seqs, stored, 3000, normalise=False))
        scores = [c for _, c in got]
        assert len(got) == 50 and scores == sorted(scores, reverse=True)
        assert scores == pytest.approx([reference[s] for s, _ in got], abs=1e-5)
        left_out = set(seqs) - {s for s, _ in got}
        assert scores[-1] >= max(reference[s] for s in left_out) - 1e-5  # nothing better was left out
        # and the int8 scores stay close to the float vectors' own cosines
        exact = dict(reference_top(query, seqs, vectors, 3000))
        assert max(abs(c - exact[s]) for s, c in got) < 0.01


def test_since_seq_ranks_only_the_later_messages_and_concat_joins_blocks():
    seqs, vectors = list(HAND_MADE), list(HAND_MADE.values())
    joined = _vectors.concat([pack(seqs[:3], vectors[:3]), pack(seqs[3:], vectors[3:])])
    assert joined == pack(seqs, vectors)
    assert [s for s, _ in top_k(QUERY, [joined], 3, since_seq=14)] == [16, 15, 17]
    assert top_k(QUERY, [joined], 3, since_seq=18) == []
    with pytest.raises(ValueError, match="different dimensions"):
        _vectors.concat([joined, pack([1], [[1.0, 0.0]])])


def test_equal_cosines_come_in_seq_order():
    block = pack([9, 4, 7], [[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert [s for s, _ in top_k([1.0, 0.0], [block], 3)] == [4, 7, 9]
    assert [s for s, _ in top_k([1.0, 0.0], [block], 2)] == [4, 7]


def test_no_k_no_query_no_blocks_no_results():
    block = pack([1], [[1.0, 0.0]])
    assert top_k([1.0, 0.0], [block], 0) == []
    assert top_k([0.0, 0.0], [block], 5) == []
    assert top_k([1.0, 0.0], [], 5) == []
    assert top_k([1.0, 0.0], [pack([1], [[1.0, 0.0]])[:HEADER_SIZE]], 5) == []  # an emptied block


def test_centring_ranks_by_what_sets_a_message_apart():
    # Four everyday messages around a shared direction (x); one message that differs (towards y). The query
    # is mostly the shared direction, a little y.
    seqs = [1, 2, 3, 4, 5]
    vectors = [[1.0, 0.1, 0.0], [1.0, 0.0, 0.1], [1.0, -0.1, 0.0], [1.0, 0.0, -0.1], [0.5, 1.0, 0.0]]
    query = [1.0, 0.3, 0.0]
    block = pack(seqs, vectors)
    assert [s for s, _ in top_k(query, [block], 5)] == [1, 2, 4, 3, 5]  # plain cosine: everyday messages first
    center = mean_vector([block])
    assert np.allclose(center, VectorBlock(block).vectors().mean(axis=0), atol=1e-6)
    got = top_k(query, [block], 5, center=center)
    expected = reference_top(query, seqs, VectorBlock(block).vectors(), 5, center=center, normalise=False)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [c for _, c in got] == pytest.approx([c for _, c in expected], abs=1e-5)
    assert got[0][0] == 5  # centred: the one message that differs, along y
    same = pack([1, 2], [[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]])  # every vector the same: the centre has unit length
    assert top_k([0.0, 3.0, 0.0], [same], 2, center=mean_vector([same])) == []  # nothing sets a message apart
    assert mean_vector([]) is None


@pytest.mark.process
def test_the_vector_and_fusion_modules_import_without_numpy():
    code = ("import sys; sys.modules['numpy'] = None; import agentcast.store._vectors, agentcast.store._fusion; "
            "print(agentcast.store._fusion.reciprocal_rank_fusion([[1, 2]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=scaled(60)).stdout
    assert out.strip() == "[(1, 0.01639344262295082), (2, 0.016129032258064516)]"


def test_a_clear_error_when_numpy_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(ImportError, match=r"numpy, a dependency of agentcast .* pip install 'numpy>=1.24'"):
        _vectors.pack([1], [[1.0]])
