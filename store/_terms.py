"""The terms of the search index: each word of a message becomes one term naming its (agent, user) too.

Functions on text, and the (re)building of the index from the log. Must not import trio, `actors` or `transport`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata

from ._events import REDACTED, ROLE_OF_TYPE

#: The event types of the messages the index holds (user, agent and fact), for SQL `type IN (...)`.
MESSAGE_TYPES_SQL = ", ".join(f"'{t}'" for t in ROLE_OF_TYPE)

#: A word: a run of letters and digits (like FTS5's unicode61 tokenizer, `_` separates words).
_WORD = re.compile(r"[^\W_]+")

#: For ASCII text, what `_WORD` and case folding do, as one `bytes.translate` table: A-Z become a-z,
#: a-z and 0-9 stay, every other byte becomes a space (then `split()` gives the words). The regex and
#: `casefold` cost several times more, and terms are made for every appended message.
_ASCII_WORDS = bytes(
    c | 0x20 if 65 <= c <= 90 else c if 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256)
)


@functools.lru_cache(maxsize=4096)
def scope_token(agent_id: str, user: str) -> str:
    """The one index token that names an (agent, user) memory; opaque and collision-resistant."""
    digest = hashlib.blake2b(f"{agent_id}\x00{user}".encode(), digest_size=12).hexdigest()
    return "s" + digest


def words(text: str) -> list[str]:
    """The words of `text`, in order: case-folded, accents removed (é is e), split at anything
    but letters and digits."""
    if text.isascii():
        return text.encode().translate(_ASCII_WORDS).decode().split()
    text = text.casefold()
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()
    return _WORD.findall(text)


def term(scope: str, word: str) -> str:
    """The index term of `word` in the memory `scope`: letters a-z and digits only, so that FTS5
    keeps it as one token whatever the word's script (a non-ASCII word is spelled in hex)."""
    return scope + ("w" + word if word.isascii() else "x" + word.encode().hex())


def index_terms(scope: str, text: str) -> str:
    """What the index holds for a message of `scope` saying `text`: the scope token (to find all
    of a memory's messages), then the term of every word."""
    if text.isascii():  # the common case, in one join: every word is ASCII
        found = text.encode().translate(_ASCII_WORDS).decode().split()
        if not found:
            return scope
        prefix = scope + "w"
        return scope + " " + prefix + (" " + prefix).join(found)
    found = words(text)
    if not found:
        return scope
    return " ".join([scope, *(term(scope, w) for w in found)])


def index_is_current(conn) -> bool:
    """True if the index's terms were made with this Python's Unicode version.

    A message's terms are made again, to be deleted, when it is forgotten (the index keeps no
    text): they must come out the same as when it was indexed. Case folding and accent removal
    follow the Unicode database, which changes with Python versions; so the index records the
    version and is rebuilt when it differs.
    """
    row = conn.execute("SELECT unicode FROM memory_index_words").fetchone()
    return row is not None and row[0] == unicodedata.unidata_version


def reindex(conn, *, chunk: int = 10_000) -> None:
    """Rebuild the search index from the log: every message not forgotten. Run in a transaction."""
    conn.execute("INSERT INTO memory_index (memory_index) VALUES ('delete-all')")
    rows = conn.execute(
        "SELECT seq, agent_id, user, payload FROM events "
        f"WHERE type IN ({MESSAGE_TYPES_SQL}) AND payload != ?",
        (REDACTED,),
    )
    while True:
        part = rows.fetchmany(chunk)
        if not part:
            break
        conn.executemany(
            "INSERT INTO memory_index (rowid, terms) VALUES (?, ?)",
            [(seq, index_terms(scope_token(agent, user), json.loads(payload)["content"]))
             for seq, agent, user, payload in part],
        )
    conn.execute("DELETE FROM memory_index_words")
    conn.execute("INSERT INTO memory_index_words (unicode) VALUES (?)", (unicodedata.unidata_version,))
