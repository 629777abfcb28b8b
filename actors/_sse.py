"""Server-Sent Events split from the bytes of a streamed HTTP body, as they are read (the `openai` brain's stream).

`SSESplitter` is fed each read of the body and gives the `data` of every event completed by it, decoded once
per event. It follows the event-stream format of the HTML standard: lines end with CR LF, LF or CR (one may
be split across two reads); an empty line ends an event; a line that starts with ":" is a comment (a
keep-alive); a field's value is what follows its first ":" less one space; the `data` lines of one event are
joined with LF; an event whose `event` field names another kind than `message` is not a message and is
skipped, as is one without `data`. An event is split only at line ends (ASCII), so a UTF-8 character split
across reads is decoded whole. Pure: imports nothing of agentcast, no I/O.
"""
from __future__ import annotations

#: The most bytes of one event held while waiting for its end (a stream that never ends one is an error).
MAX_EVENT_BYTES = 4 * 1024 * 1024
#: The bytes of an event not ended yet past which the next reads extend it in place (below, an event that
#: spans two reads is joined as bytes, which is cheaper).
GROW_IN_PLACE = 65_536


class SSEError(ValueError):
    """The stream is not one of Server-Sent Events (its text says how)."""


class SSESplitter:
    """Turns the reads of an event stream into the `data` of its message events (`feed`)."""

    __slots__ = ("_pending", "_after_cr")

    def __init__(self) -> None:
        self._pending: bytes | bytearray = b""  # the start of an event not ended yet (line ends already made LF)
        self._after_cr = False  # the last read ended with CR: an LF that starts the next one ends no other line

    def feed(self, data: bytes) -> list[str]:
        """The `data` of each message event that `data` (the next read of the body) completes, in order."""
        if self._after_cr:
            self._after_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\r" in data:
            self._after_cr = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        pending = self._pending
        if pending:
            searched = len(pending) - 1  # the pending bytes hold no "\n\n": only one across the join is new
            pending += data  # a bytearray (an event that spans reads) grows in place
            data = pending
        else:
            searched = 0
        end = data.rfind(b"\n\n", searched)
        if end < 0:
            if len(data) > MAX_EVENT_BYTES:
                raise SSEError(f"an event longer than {MAX_EVENT_BYTES} bytes")
            # past GROW_IN_PLACE bytes, kept in a bytearray that the next reads extend: an event that comes in
            # many reads is not copied whole at each (which would cost the square of its length)
            self._pending = data if len(data) < GROW_IN_PLACE or type(data) is bytearray else bytearray(data)
            return []
        self._pending = data[end + 2:]
        messages = []
        for event in data[:end].split(b"\n\n"):
            if event.startswith(b"data:") and b"\n" not in event:  # the usual event: one data line
                value = event[5:]
                messages.append((value[1:] if value[:1] == b" " else value).decode("utf-8", "replace"))
                continue
            lines = None
            kind = b""
            for line in event.split(b"\n"):
                if not line or line[:1] == b":":
                    continue
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    if lines is None:
                        lines = [value]
                    else:
                        lines.append(value)
                elif name == b"event":
                    kind = value
            if lines is not None and kind in (b"", b"message"):
                messages.append(b"\n".join(lines).decode("utf-8", "replace"))
        if len(self._pending) > MAX_EVENT_BYTES:
            raise SSEError(f"an event longer than {MAX_EVENT_BYTES} bytes")
        return messages
