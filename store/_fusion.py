"""Hybrid search's pure parts: reciprocal rank fusion of rankings, and the words of a query the lexical leg is given.

Functions on lists and text only (no SQLite, no numpy). Must not import trio, `actors` or `transport`.

Reciprocal rank fusion (RRF) scores each item ``sum(weight / (k + rank))`` over the rankings it is
in (rank 1 is the best), so only ranks count, not the legs' incomparable scores.

The lexical gate: BM25 over every word of a question ("what", "my", "favourite") lets any chatter
that shares an everyday word take a top rank in the lexical leg, and with RRF's flat curve (k=60)
that outweighs the differences between semantic ranks. So the lexical leg is given only the
question's exact tokens (`exact_terms`): the words a user types to find something verbatim — names,
numbers and codes. A question without any is answered by the semantic leg alone.

Questions are answered by statements: a sentence-embedding model puts a question near other questions
("What's my job?" near "What's on my schedule tomorrow?") more than near the statement that answers it
("I drive the number 152 bus"). So when the query is a question, the semantic leg lowers the cosine of every
remembered message that is itself a question by `QUESTION_DEMOTION` (`demoted`): a remembered question still
comes first when nothing else is close, but a statement about as close goes before it.
"""
from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

import attrs

from ._recorder import Hit

K = TypeVar("K", bound=Hashable)

#: RRF's constant: a larger k flattens the curve (rank 1 counts less against rank 10).
DEFAULT_K = 60

#: English function words and chat filler: what `content_terms` leaves out.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can cannot could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just let me more most my myself no nor not now
of off on once only or other ought our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves us
also ever get got still s t d ll m re ve don didn doesn isn aren wasn weren won wouldn couldn shouldn haven hasn
hadn can't i'm i've i'd i'll it's what's that's there's let's don't didn't doesn't isn't
""".split())

#: A token of a question: letters, digits and the joiners that hold codes together (AB-12, v2.1, 9:30, my_key).
_TOKEN = re.compile(r"[^\W_]+(?:[-_.:/'’][^\W_]+)*")
#: Where a new sentence starts (its first word is capitalised whatever it is).
_SENTENCE_END = re.compile(r"[.!?]\s*$")
#: Text between double quotes: quoted words are looked for verbatim.
_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]+)[\"“”«»]")
#: Capitalised words that are not names.
_NOT_NAMES = frozenset({"i", "i'm", "i've", "i'd", "i'll", "i’m", "i’ve", "i’d", "i’ll"})


def reciprocal_rank_fusion(
    rankings: Sequence[Iterable[K]], weights: Sequence[float] | None = None, k: float = DEFAULT_K
) -> list[tuple[K, float]]:
    """Fuse `rankings` (each best first) into one: (item, score), best first.

    An item scores ``weights[leg] / (k + rank)`` in each ranking it appears in (rank 1 is the
    first; an item repeated in one ranking counts once, at its best rank), summed over rankings.
    Items with equal scores keep the order in which they were first met, reading the rankings in
    the order given (so the first ranking breaks ties). `weights` default to 1 each.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings: give one weight per ranking")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or not w >= 0 for w in weights):
        raise ValueError("weights must be numbers >= 0")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k >= 0:
        raise ValueError(f"k must be a number >= 0, not {k!r}")
    scores: dict[K, float] = {}
    for ranking, weight in zip(rankings, weights):
        seen: set = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    order = {item: n for n, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda pair: (-pair[1], order[pair[0]]))


def _is_exact(token: str, starts_sentence: bool) -> bool:
    if any(c.isdigit() for c in token):  # numbers, dates, times, codes with digits
        return True
    letters = [c for c in token if c.isalpha()]
    if "_" in token or (len(letters) >= 2 and sum(c.isupper() for c in letters) >= 2):  # my_key, NHS, McAdams, iPhone
        return True
    if token.casefold() in _NOT_NAMES:
        return False
    return token[0].isupper() and not starts_sentence  # a name: capitalised inside a sentence


def exact_terms(query: str) -> list[str]:
    """The tokens of `query` that are looked for verbatim: names, numbers and codes, in order, once each.

    A token is exact if it holds a digit ("4471", "9:30", "B12"), an underscore, two capitals or
    more ("NHS", "McAdams"), or is capitalised and not the first word of a sentence ("Did Lena
    call?" -> "Lena"; "I" and its contractions excepted); and every word between double quotes
    is. A name that opens the question ("Lena called?") is not seen: the semantic leg is left
    to find it.
    """
    found: list[str] = []
    for match in _TOKEN.finditer(query):
        token = match.group()
        starts_sentence = not query[: match.start()].strip() or bool(_SENTENCE_END.search(query[: match.start()]))
        if _is_exact(token, starts_sentence) and token not in found:
            found.append(token)
    for quoted in _QUOTED.findall(query):
        for token in _TOKEN.findall(quoted):
            if token not in found:
                found.append(token)
    return found


def content_terms(query: str) -> list[str]:
    """The words of `query` that are not `STOPWORDS` (case-folded), in order, once each."""
    found: list[str] = []
    for token in _TOKEN.findall(query):
        for word in re.split(r"[-_.:/]", token.casefold().replace("’", "'")):
            if word and word not in STOPWORDS and word.replace("'", "") not in STOPWORDS and word not in found:
                found.append(word)
    return found


def lexical_query(query: str) -> str:
    """What the lexical leg of a hybrid search is given for `query`: its exact tokens (`exact_terms`),
    space-separated; empty when it has none (then only the semantic leg ranks)."""
    return " ".join(exact_terms(query))


#: How much lower the cosine of a remembered question is ranked, when the query is a question too.
QUESTION_DEMOTION = 0.1

#: Words that open a question in English (a question typed without its question mark).
_INTERROGATIVES = frozenset("""
what what's whats which who who's whom whose where where's when when's why how how's do does did is are am was
were can could should would will shall may might have has had
""".split())
#: Question marks: Latin, full-width (CJK), Arabic, Greek.
_QUESTION_MARKS = ("?", "\uff1f", "\u061f", "\u037e")


def is_question(text: str) -> bool:
    """True if `text` ends with a question mark (of any script)."""
    return text.rstrip().endswith(_QUESTION_MARKS)


def asks(query: str) -> bool:
    """True if `query` is a question: it ends with a question mark, or opens with an English interrogative
    word ("what", "do", "is", ...; a chat question often goes without its question mark)."""
    if is_question(query):
        return True
    first = _TOKEN.search(query)
    return first is not None and first.group().casefold().replace("\u2019", "'") in _INTERROGATIVES


def demoted(hits: Sequence[Hit], query: str, amount: float = QUESTION_DEMOTION) -> list[Hit]:
    """`hits` (a semantic ranking, best first) with the score of each remembered question lowered by `amount`
    when `query` is a question (`asks`), re-ordered by score (equal scores keep their order); unchanged otherwise."""
    if not asks(query) or not any(is_question(h.content) for h in hits):
        return list(hits)
    lowered = [attrs.evolve(h, score=h.score - amount) if is_question(h.content) else h for h in hits]
    return sorted(lowered, key=lambda h: -h.score)
