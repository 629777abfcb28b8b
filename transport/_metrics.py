"""`Metrics`: one server's Prometheus metrics, in a registry of its own (tests run many servers in one
process), rendered in the Prometheus text format for GET /metrics.

Imports prometheus_client and `actors` (output types), not trio itself: values that live elsewhere
(connections, mailboxes, the journal's counts, the database's size) are read through callables at scrape time.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import actors

#: The Content-Type of the text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Turn latency buckets (seconds): echo turns take milliseconds, LLM turns seconds to minutes.
TURN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The metrics of one server.

    Counted as things happen: turns, errors sent, turn latency, HTTP requests, refused handshakes.
    Read at scrape time from `state`: open connections, each agent's commands queued or running
    (its mailbox depth) and lanes, the journal's events and commits, the database's size in bytes.
    """

    def __init__(self, state: "ScrapeState") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.turns = Counter("agentcast_turns", "Chat turns finished (agent_done sent to the chat's sender), by agent",
                             ["agent_id"], registry=r)
        self.errors = Counter("agentcast_errors", "error frames sent, by code (one per failed command, "
                              "however many subscribers saw it)", ["code"], registry=r)
        self.turn_seconds = Histogram(
            "agentcast_turn_duration_seconds",
            "Seconds from a chat's arrival at the server to its agent_done, by agent",
            ["agent_id"], buckets=TURN_BUCKETS, registry=r,
        )
        self.http_requests = Counter("agentcast_http_requests", "Plain HTTP requests answered, by route and status",
                                     ["route", "status"], registry=r)
        self.handshakes_refused = Counter("agentcast_handshakes_refused",
                                          "WebSocket handshakes refused, by HTTP status", ["status"], registry=r)
        Gauge("agentcast_connections", "Open WebSocket connections", registry=r).set_function(state.connections)
        r.register(_StateCollector(state))
        self._last_output: object = None
        #: Per agent: its children of `turns` and `turn_seconds` (`labels()` costs a few µs a call).
        self._per_agent: dict[str, tuple[Any, Any]] = {}

    def turn_done(self, agent_id: str, seconds: float | None) -> None:
        """Count a finished chat turn of `agent_id`, and observe how long it took when that is known."""
        children = self._per_agent.get(agent_id)
        if children is None:
            children = self._per_agent[agent_id] = (self.turns.labels(agent_id), self.turn_seconds.labels(agent_id))
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def render(self) -> bytes:
        """The text format, as GET /metrics answers it."""
        return generate_latest(self.registry)

    def first_delivery(self, output: actors.Output) -> bool:
        """True the first time this output object is delivered, False for its copies to other recipients.

        An agent delivers one output object to all its recipients in one synchronous call, the command's
        origin first (`actors.Recipients.deliver`), so the first delivery is the one to the connection
        that sent the command: counting there counts each turn or failure once.
        """
        if output is self._last_output:
            return False
        self._last_output = output
        return True


class ScrapeState:
    """Where the scrape-time values come from (callables, so that nothing is copied until a scrape)."""

    def __init__(
        self,
        *,
        connections: Callable[[], int],
        agents: Callable[[], Iterable[tuple[str, int, int]]],
        journal: Callable[[], tuple[int, int]],
        db_bytes: Callable[[], int],
        appends_failing: Callable[[], bool],
        embedding: Callable[[], Iterable[tuple[str, int, int, bool]]] = list,
    ) -> None:
        #: Open connections.
        self.connections = connections
        #: (agent_id, commands queued or running, lanes) for each agent.
        self.agents = agents
        #: (events appended, commits) since the server started.
        self.journal = journal
        #: The database's size in bytes (the file and its WAL), as last measured.
        self.db_bytes = db_bytes
        #: True from an append that failed until one succeeds (as /healthz reports it).
        self.appends_failing = appends_failing
        #: (embedder, vectors stored since the start, messages still to embed, failing) for each embedding worker.
        self.embedding = embedding


class _StateCollector(Collector):
    def __init__(self, state: ScrapeState) -> None:
        self._state = state

    def collect(self):
        mailbox = GaugeMetricFamily("agentcast_mailbox_depth", "Commands queued or running in each agent",
                                    labels=["agent_id"])
        lanes = GaugeMetricFamily("agentcast_lanes", "Users with a lane in memory, per agent", labels=["agent_id"])
        for agent_id, in_flight, lane_count in self._state.agents():
            mailbox.add_metric([agent_id], in_flight)
            lanes.add_metric([agent_id], lane_count)
        events, commits = self._state.journal()
        yield mailbox
        yield lanes
        yield CounterMetricFamily("agentcast_events_appended", "Events appended to the log since the server started",
                                  value=events)
        yield CounterMetricFamily("agentcast_commits", "Group commits since the server started", value=commits)
        yield GaugeMetricFamily("agentcast_database_bytes", "Size of the database file and its WAL, in bytes",
                                value=self._state.db_bytes())
        yield GaugeMetricFamily("agentcast_appends_failing", "1 from an append that failed until one succeeds, else 0",
                                value=1 if self._state.appends_failing() else 0)
        embedded = CounterMetricFamily("agentcast_embedded_messages", "Message vectors stored by the embedding worker "
                                       "since the server started, by embedder", labels=["embedder"])
        backlog = GaugeMetricFamily("agentcast_embedding_backlog", "Messages committed and not embedded yet (the "
                                    "semantic search does not see them; the lexical one does), by embedder",
                                    labels=["embedder"])
        failing = GaugeMetricFamily("agentcast_embedding_failing", "1 while the embedder fails (retried with "
                                    "backoff), else 0, by embedder", labels=["embedder"])
        for label, stored, waiting, is_failing in self._state.embedding():
            embedded.add_metric([label], stored)
            backlog.add_metric([label], waiting)
            failing.add_metric([label], 1 if is_failing else 0)
        yield embedded
        yield backlog
        yield failing

    def describe(self):
        return []
