"""Memory search over a recorder: lexical (BM25), semantic (cosine over message vectors) or both fused by
reciprocal rank (`search_memory`).

Written against `store.Recorder` only (any backend). Must not import trio, `actors` or `transport`; the query's
vector is made by the caller (an embedder lives in `actors`).

A hybrid search fuses three rankings of the (agent, user)'s memory with RRF (`store._fusion`):

- the semantic leg: the messages nearest the query's vector (centred on the memory's mean), where a remembered
  question is demoted when the query is a question itself (`store._fusion.demoted`); it goes first, so that
  equal fused scores are decided by meaning (a fact and a near miss that both hold the name asked for);
- the lexical leg over the whole memory, given only the query's exact tokens (names, numbers, codes, quoted
  words: `store._fusion.lexical_query`), so that everyday words never outrank meaning and exact matches stay in
  the top ranks;
- the lexical leg with the whole query over the messages not embedded yet (after the embedding cursor), so
  that what was said a moment ago, or a history still being embedded, is found as a lexical search finds it.
"""
from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen

from ._fusion import QUESTION_DEMOTION, demoted, lexical_query, reciprocal_rank_fusion
from ._recorder import Hit, Recorder

#: The legs of a search, by the names the wire protocol uses.
LEXICAL, SEMANTIC = "lexical", "semantic"
LEGS = (LEXICAL, SEMANTIC)

#: How many results each leg gives the fusion (whatever the limit asked).
DEPTH = 50


@frozen
class QueryVector:
    """The query's vector, made by the embedding `model` (the name its vectors are stored under)."""

    model: str
    vector: Sequence[float]


@frozen
class SearchResult:
    """What a search found (best first) and which legs ranked it (`LEXICAL`, `SEMANTIC`, in that order)."""

    hits: tuple[Hit, ...]
    legs: tuple[str, ...]


def search_memory(log: Recorder, agent_id: str, user: str, query: str, limit: int, *, since_seq: int = 0,
                  semantic: QueryVector | None = None, lexical: bool = True) -> SearchResult:
    """The best `limit` messages of (agent_id, user)'s memory for `query`, with seq >= `since_seq`.

    Without `semantic`: the lexical leg alone, the query as it is (`Recorder.search`: scores are BM25). Without
    `lexical`: the semantic leg alone (scores are cosines, demoted for questions). With both: the hybrid search
    described above (scores are RRF sums). Reads as of one moment.
    """
    if semantic is None:
        if not lexical:
            raise ValueError("a search needs a leg: lexical, semantic or both")
        return SearchResult(tuple(log.search(agent_id, user, query, limit, since_seq=since_seq)), (LEXICAL,))
    with log.snapshot():
        near = demoted(log.nearest(agent_id, user, semantic.model, semantic.vector, max(DEPTH, limit),
                                   since_seq=since_seq, centred=True), query, QUESTION_DEMOTION)
        if not lexical:
            return SearchResult(tuple(near[:limit]), (SEMANTIC,))
        rankings: list[list[Hit]] = [near]  # first: equal fused scores go by meaning
        exact = lexical_query(query)
        if exact:
            rankings.append(log.search(agent_id, user, exact, DEPTH, since_seq=since_seq))
        embedded_to = log.embedding_cursor(agent_id, semantic.model)
        rankings.append(log.search(agent_id, user, query, DEPTH, since_seq=max(since_seq, embedded_to + 1)))
    by_seq = {hit.seq: hit for ranking in rankings for hit in ranking}
    fused = reciprocal_rank_fusion([[hit.seq for hit in ranking] for ranking in rankings])[:limit]
    hits = tuple(Hit(seq, by_seq[seq].role, by_seq[seq].content, by_seq[seq].at, score) for seq, score in fused)
    return SearchResult(hits, (LEXICAL, SEMANTIC))
