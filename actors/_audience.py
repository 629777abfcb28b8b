"""Who hears an agent: `Audience` (the outboxes subscribed per (agent, user), and the backlogs under way to
them), `Recipients` (who gets the outputs of one command) and `Backlog` (a resume's, until withdrawn).

Owns the subscriptions and the delivery of one output to each recipient once; nothing here awaits or
does I/O. Imports only the actors' messages; must not import `transport`, trio or the store.
"""
from __future__ import annotations

from collections.abc import Sequence

from ._messages import LiveOutbox, Outbox, Output, is_live

_HELD, _LIVE, _TAIL = "held", "live", "tail"


class Audience:
    """Who hears an agent's turns: the outboxes subscribed per (agent, user).

    A subscription is *live* (`subscribe`), *held* (`subscribe(held=True)`: registered for a
    `ResumeCommand` that has not delivered its backlog yet; hears nothing) or a *tail* (a resume made
    it live: it also hears each user message as it is committed, so it sees every logged event).
    """

    def __init__(self) -> None:
        self._subscribers: dict[tuple[str, str], dict[Outbox, str]] = {}
        #: The backlogs being delivered, by (agent, user, outbox): at most one each (a user's resumes run in its lane).
        self._backlogs: dict[tuple[str, str, Outbox], Backlog] = {}

    def subscribe(self, agent_id: str, user: str, outbox: Outbox, *, held: bool = False) -> None:
        """Subscribe `outbox` (live). With `held`, register it for a pending `ResumeCommand` instead; an
        existing subscription then stays as it is until the resume has delivered its backlog."""
        subs = self._subscribers.setdefault((agent_id, user), {})
        if held:
            subs.setdefault(outbox, _HELD)
        else:
            subs[outbox] = _LIVE

    def subscribed(self, agent_id: str, user: str, outbox: Outbox) -> bool:
        """True while `outbox` has a subscription (of any kind) to `agent_id` under `user`."""
        subs = self._subscribers.get((agent_id, user))
        return subs is not None and outbox in subs

    def tail(self, agent_id: str, user: str, outbox: Outbox) -> None:
        """Make `outbox`'s subscription a tail (a resume delivered its backlog); nothing if it has none."""
        subs = self._subscribers.get((agent_id, user))
        if subs is not None and outbox in subs:
            subs[outbox] = _TAIL

    def release(self, agent_id: str, user: str, outbox: Outbox) -> None:
        """Drop `outbox`'s subscription if it is still held (its resume failed); a live one stays."""
        subs = self._subscribers.get((agent_id, user))
        if subs is not None and subs.get(outbox) == _HELD:
            self.unsubscribe(agent_id, user, outbox)

    def unsubscribe(self, agent_id: str, user: str, outbox: Outbox) -> None:
        """Drop `outbox`'s subscription to `agent_id` under `user`; a backlog under way to it stops at once."""
        key = (agent_id, user)
        subs = self._subscribers.get(key)
        if subs is not None:
            subs.pop(outbox, None)
            if not subs:
                del self._subscribers[key]
        if self._backlogs:
            backlog = self._backlogs.pop((agent_id, user, outbox), None)
            if backlog is not None:
                backlog.withdrawn = True

    def backlog(self, agent_id: str, user: str, outbox: Outbox) -> "Backlog":
        """Register a backlog about to be delivered to `outbox`: it is `withdrawn` as soon as that
        subscription is dropped (unsubscribed, the connection's user switched or gone), even if the
        outbox subscribes again meanwhile. `end_backlog` unregisters it."""
        backlog = self._backlogs[(agent_id, user, outbox)] = Backlog()
        return backlog

    def end_backlog(self, agent_id: str, user: str, outbox: Outbox, backlog: "Backlog") -> None:
        key = (agent_id, user, outbox)
        if self._backlogs.get(key) is backlog:
            del self._backlogs[key]

    def recipients(self, agent_id: str, user: str, origin: Outbox) -> "Recipients":
        """`origin`, then every other outbox subscribed to `agent_id` under `user`: each once."""
        subs = self._subscribers.get((agent_id, user))
        others = [o for o, kind in subs.items() if o is not origin and kind != _HELD] if subs else []
        return Recipients(self, agent_id, user, origin, others)

    def hears(self, agent_id: str, user: str, outbox: Outbox) -> bool:
        """True while `outbox` is subscribed (live or tail) to `agent_id` under `user`."""
        subs = self._subscribers.get((agent_id, user))
        return subs is not None and subs.get(outbox, _HELD) != _HELD

    def tails(self, agent_id: str, user: str, outbox: Outbox) -> bool:
        """True while `outbox` is a tail subscriber (a resumed one) of `agent_id` under `user`."""
        subs = self._subscribers.get((agent_id, user))
        return subs is not None and subs.get(outbox) == _TAIL


class Backlog:
    """A resume's backlog under way (`Audience.backlog`): `withdrawn` once its subscription is dropped."""

    __slots__ = ("withdrawn",)

    def __init__(self) -> None:
        self.withdrawn = False


class Recipients:
    """Who gets the outputs of one command: its origin, and the subscribers it had when it
    started that still are subscribed under the same user when an output is delivered (a
    connection that switches user mid-turn gets nothing more of the old user's turn)."""

    __slots__ = ("_audience", "_agent_id", "_user", "_origin", "_others")

    def __init__(self, audience: Audience, agent_id: str, user: str, origin: Outbox, others: list[Outbox]) -> None:
        self._audience = audience
        self._agent_id = agent_id
        self._user = user
        self._origin = origin
        self._others = others

    def deliver(self, output: Output, also: Sequence[Outbox] = ()) -> None:
        """Deliver `output` to the recipients, and to each outbox of `also` that is not one of them
        (e.g. a tab that cancelled a turn begun before it subscribed): each outbox once."""
        self._origin.deliver(output)
        for outbox in self._others:
            if self._audience.hears(self._agent_id, self._user, outbox):
                outbox.deliver(output)
        for outbox in also:
            if not self.reaches(outbox):
                outbox.deliver(output)

    def hold(self) -> list[LiveOutbox]:
        """Ask the recipients that can (a `LiveOutbox`) to keep what they are given until `release`:
        what was delivered so far and what comes next then go out together. Returns them, for `release`."""
        origin = self._origin
        held: list[LiveOutbox] = [origin] if is_live(origin) else []
        for outbox in self._others:
            if is_live(outbox) and self._audience.hears(self._agent_id, self._user, outbox):
                held.append(outbox)
        for outbox in held:
            outbox.hold()
        return held

    @staticmethod
    def release(held: Sequence[LiveOutbox]) -> None:
        """End the `hold` that returned `held`."""
        for outbox in held:
            outbox.release()

    def reaches(self, outbox: Outbox) -> bool:
        """True if `deliver` gives its outputs to `outbox` now."""
        if outbox is self._origin:
            return True
        return outbox in self._others and self._audience.hears(self._agent_id, self._user, outbox)

    def deliver_to_tails(self, output: Output) -> None:
        """Deliver `output` to those of the recipients (the origin too) that are tail subscribers."""
        for outbox in (self._origin, *self._others):
            if self._audience.tails(self._agent_id, self._user, outbox):
                outbox.deliver(output)
