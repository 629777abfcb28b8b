"""store._fusion: reciprocal rank fusion on hand-made rankings, and the lexical gate (which words of a
question the lexical leg of a hybrid search is given), also against a real EventLog."""
from __future__ import annotations

import pytest

from agentcast.store import EventLog, Hit, UserSaid
from agentcast.store._fusion import (
    DEFAULT_K,
    QUESTION_DEMOTION,
    asks,
    content_terms,
    demoted,
    exact_terms,
    is_question,
    lexical_query,
    reciprocal_rank_fusion,
)


def test_rrf_scores_are_the_sum_of_weight_over_k_plus_rank():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]])
    assert DEFAULT_K == 60
    assert fused == [
        ("a", pytest.approx(1 / 61 + 1 / 62)),
        ("c", pytest.approx(1 / 63 + 1 / 61)),
        ("b", pytest.approx(1 / 62)),
        ("d", pytest.approx(1 / 63)),
    ]


def test_rrf_weights_and_k_change_the_balance_of_the_legs():
    vector, lexical = ["fact", "chatter1", "chatter2"], ["chatter2", "fact"]
    assert [x for x, _ in reciprocal_rank_fusion([vector, lexical])] == ["fact", "chatter2", "chatter1"]
    # a lexical leg that counts double puts its first item on top
    assert [x for x, _ in reciprocal_rank_fusion([vector, lexical], [1, 2])][0] == "chatter2"
    # weight 0: the leg adds nothing (its items still come, last)
    assert reciprocal_rank_fusion([vector, lexical], [1, 0]) == reciprocal_rank_fusion([vector])
    # a small k makes rank 1 count far more than rank 2
    small_k = reciprocal_rank_fusion([["x", "y"], ["y", "z", "x"]], k=0)
    assert small_k == [("y", pytest.approx(1 / 2 + 1)), ("x", pytest.approx(1 + 1 / 3)), ("z", pytest.approx(1 / 2))]


def test_rrf_ties_keep_the_order_first_met_and_repeats_count_once():
    assert [x for x, _ in reciprocal_rank_fusion([["a", "b"], ["b", "a"]])] == ["a", "b"]
    assert [x for x, _ in reciprocal_rank_fusion([["b", "a"], ["a", "b"]])] == ["b", "a"]
    assert reciprocal_rank_fusion([["a", "a", "b"]]) == [("a", pytest.approx(1 / 61)), ("b", pytest.approx(1 / 63))]
    assert reciprocal_rank_fusion([]) == [] and reciprocal_rank_fusion([[], []]) == []


@pytest.mark.parametrize(
    ("weights", "k", "says"),
    [([1], 60, "1 weights for 2 rankings"), ([1, -1], 60, "weights must be numbers >= 0"),
     ([1, True], 60, "weights must be numbers"), (None, -1, "k must be a number >= 0"), (None, "60", "k must be")],
)
def test_rrf_bad_arguments_are_refused(weights, k, says):
    with pytest.raises(ValueError, match=says):
        reciprocal_rank_fusion([[1], [2]], weights, k)


@pytest.mark.parametrize(
    ("question", "exact"),
    [
        ("What is 2958?", ["2958"]),
        ("What's LY-30417 for?", ["LY-30417"]),
        ("How is Manon doing?", ["Manon"]),
        ("Is Sägespäne playing this weekend?", ["Sägespäne"]),
        ("What was my 2:04?", ["2:04"]),
        ("Where is FR-TM 381 parked?", ["FR-TM", "381"]),
        ("Who is Dr Kask?", ["Dr", "Kask"]),
        ("Did the NHS write back?", ["NHS"]),
        ("Is my_key still valid?", ["my_key"]),
        ("what did I say about \"ephemeral\" yesterday", ["ephemeral"]),
        ("Manon called?", []),  # a name that opens the question is not told from a capitalised first word
        ("Lunch was fine. Pepper barked. Did Pepper eat?", ["Pepper"]),  # first word of a sentence, then inside one
        ("What's my favourite colour?", []),
        ("I'm sure I told you, didn't I?", []),
        ("", []),
    ],
)
def test_exact_terms_are_names_numbers_and_codes(question, exact):
    assert exact_terms(question) == exact


def test_content_terms_drop_stopwords_and_repeats():
    assert content_terms("What's my favourite colour? My FAVOURITE!") == ["favourite", "colour"]
    assert content_terms("What did I do for a living?") == ["living"]
    assert content_terms("Is LY-30417 mine?") == ["ly", "30417", "mine"]


def test_the_lexical_leg_gets_exact_tokens_only(tmp_path):
    with EventLog.open(tmp_path / "gate.db") as log:
        said = ["My sister Manon is a pilot for Air France.", "What's my favourite film, do you know?",
                "My parking permit number is LY-30417.", "What should I make for dinner?"]
        seqs = [r.seq for r in log.append([[UserSaid("a", "u", "2026-01-01T00:00:00.000Z", t) for t in said]])[0]]

        def lexical(question):
            query = lexical_query(question)
            return [h.seq for h in log.search("a", "u", query, 10)] if query else []

        # every word: filler ("what", "my") ranks chatter; the gate leaves the semantic leg alone instead
        assert [h.seq for h in log.search("a", "u", "What is my favourite colour?", 10)][0] == seqs[1]
        assert lexical("What is my favourite colour?") == []
        assert lexical("How is Manon doing?") == [seqs[0]]
        assert lexical("What's LY-30417 for?") == [seqs[2]]


# -- questions are answered by statements ------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ("What is my job?", True), ("what's my job", True), ("What’s my job", True), ("Do I have a cat", True),
    ("my job?", True), ("你好？", True), ("My job", False), ("Tell me about my pet", False),
    ("", False), ("   ", False),
])
def test_a_query_asks_when_it_ends_with_a_question_mark_or_opens_with_an_interrogative(query, expected):
    assert asks(query) is expected


def test_a_remembered_question_is_demoted_only_when_the_query_is_a_question():
    hits = [Hit(1, "user", "What's on my schedule tomorrow?", "t", 0.95), Hit(2, "user", "I drive the 152 bus.", "t", 0.90),
            Hit(3, "user", "Is it rude to leave early?", "t", 0.70), Hit(4, "user", "I like tea", "t", 0.65)]
    assert QUESTION_DEMOTION == 0.1 and is_question("Why? ") and not is_question("Why? Because.")
    ranked = demoted(hits, "What is my job?")
    assert [h.seq for h in ranked] == [2, 1, 4, 3]
    assert [h.score for h in ranked] == pytest.approx([0.90, 0.85, 0.65, 0.60])
    assert demoted(hits, "my job") == hits  # a statement: nothing changes
    assert demoted(hits[1:2], "What is my job?") == hits[1:2]
