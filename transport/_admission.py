"""Admission counting: the connections each user has open across a server, against `max_connections_per_user`.

Owns the per-user counts, a `collections.Counter` shared by a server's connections (the server makes it,
each connection counts itself in and out, and moves its count when its user changes). Pure bookkeeping:
no I/O, no trio; must not import trio-websocket, the actors or the store.
"""
from __future__ import annotations

from collections import Counter


def enter(users: Counter[str], user: str) -> None:
    """A connection of `user` opened (or took on that user)."""
    users[user] += 1


def leave(users: Counter[str], user: str) -> None:
    """A connection of `user` closed (or left that user); a user with none is forgotten."""
    left = users[user] - 1
    if left:
        users[user] = left
    else:
        del users[user]


def over_cap(users: Counter[str], user: str, cap: int) -> bool:
    """True if `user` has more than `cap` connections (this one counted)."""
    return users[user] > cap


def move(users: Counter[str], old: str, new: str, cap: int) -> bool:
    """Move a connection from user `old` to user `new`; False (nothing moved) if `new` already has `cap`
    connections. A move to the same user always succeeds."""
    if new != old and users[new] >= cap:
        return False
    leave(users, old)
    enter(users, new)
    return True
