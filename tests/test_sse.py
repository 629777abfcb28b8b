"""`actors._sse.SSESplitter`: Server-Sent Events split from a body's reads however the reads cut it (at every
byte, in the middle of a CR LF or of a UTF-8 character), CR LF / CR / LF line ends, multi-line data, comments
(keep-alives), other event kinds, the bound on one event; and the `openai` brain reading such a stream."""
from __future__ import annotations

import json

import pytest

from agentcast.actors._sse import MAX_EVENT_BYTES, SSEError, SSESplitter
from support.fake_openai import FakeOpenAI, Reply, chunk
from support.llm import brain_for, items_of, turn_for

#: A stream with every kind of line: CR LF, CR and LF ends, comments, a multi-line data field, another event
#: kind, an event without data, fields without a space or a value, and characters of 2, 3 and 4 UTF-8 bytes.
STREAM = (
    b": keep-alive\r\n\r\n"
    b"data: caf\xc3\xa9 \xe2\x82\xac\r\n\r\n"
    b"event: ping\ndata: not a message\n\n"
    b"id: 7\nretry: 10\n\n"
    b"data: first line\n: a comment inside\ndata:second line\ndata\ndata:  two spaces\n\n"
    b"event: message\rdata: emoji \xf0\x9f\x98\x80\r\r"
    b"data: {\"a\": 1}\n\n"
    b"data: cut off, never ended\n"
)
EXPECTED = ["caf\u00e9 \u20ac", "first line\nsecond line\n\n two spaces", "emoji \U0001f600", '{"a": 1}']


def split(*reads: bytes) -> list[str]:
    splitter = SSESplitter()
    return [data for read in reads for data in splitter.feed(read)]


def test_a_whole_stream_in_one_read():
    assert split(STREAM) == EXPECTED


@pytest.mark.parametrize("at", range(1, len(STREAM)))
def test_a_stream_cut_in_two_reads_at_every_byte_gives_the_same_events(at):
    assert split(STREAM[:at], STREAM[at:]) == EXPECTED


def test_a_stream_read_one_byte_at_a_time():
    assert split(*(STREAM[i:i + 1] for i in range(len(STREAM)))) == EXPECTED


def test_an_event_is_given_by_the_read_that_ends_it_not_later():
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\n") == []
    assert splitter.feed(b"\n") == ["a"]
    assert splitter.feed(b"data: b\r\n\r") == ["b"]  # CR alone ends a line: no wait for a LF that may follow
    assert splitter.feed(b"\n") == []  # ... and a LF right after it is part of that line end, not another
    assert splitter.feed(b"data: c\r\r") == ["c"]
    assert splitter.feed(b"\ndata: d\n\n") == ["d"]


def test_a_utf8_character_split_across_reads_is_decoded_whole():
    data = "data: \u00e9\u20ac\U0001f600\n\n".encode()
    for at in range(7, 16):  # inside each of the three characters
        assert split(data[:at], data[at:]) == ["\u00e9\u20ac\U0001f600"]


def test_invalid_utf8_is_replaced_not_an_error():
    assert split(b"data: \xff ok\n\n") == ["\ufffd ok"]


def test_crlf_split_between_reads_is_one_line_end():
    assert split(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == ["a\nb"]


def test_comments_and_keepalives_alone_give_nothing():
    assert split(b": ping\n\n", b":\n\n", b"\n\n\n", b": x\r\n\r\n") == []


def test_an_event_longer_than_the_bound_is_an_error():
    splitter = SSESplitter()
    piece = b"data: " + b"x" * (MAX_EVENT_BYTES // 4)
    with pytest.raises(SSEError, match="longer than"):
        for _ in range(5):
            splitter.feed(piece)


async def test_the_brain_reads_events_cut_across_reads_with_crlf_comments_and_multiline_data(nursery, autojump_clock):
    fake = await FakeOpenAI().start(nursery)
    first = json.dumps(chunk("caf\u00e9 "), ensure_ascii=False).encode()
    second = json.dumps(chunk("\U0001f600 done", finish="stop"), ensure_ascii=False)
    stream = (
        b": keep-alive\r\n\r\n"
        b"data: " + first + b"\r\n\r\n"
        # one chunk's JSON over two data lines (joined with LF: whitespace to JSON)
        b"data: " + second[:second.index('"choices"')].encode() + b"\r\ndata: " + second[second.index('"choices"'):].encode() + b"\r\n\r\n"
        b"event: ping\r\ndata: {}\r\n\r\n"
        b"data: [DONE]\r\n\r\n"
    )
    cuts = [3, 20, len(b": keep-alive\r\n\r\ndata: ") + first.index(b"\xc3") + 1, len(stream) - 30, len(stream) - 3]
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    fake.script(Reply(pieces=pieces))
    brain = brain_for(fake)
    assert await items_of(brain, turn_for(brain)) == ["caf\u00e9 ", "\U0001f600 done"]


def test_an_event_that_comes_in_many_small_reads_is_not_copied_whole_at_each():
    import tracemalloc

    splitter = SSESplitter()
    assert splitter.feed(b"data: " + b"x" * 3_000_000) == [] and splitter.feed(b"x") == []
    tracemalloc.start()
    try:
        for _ in range(100):
            assert splitter.feed(b"x") == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000  # not a copy of the 3 MB held at each read
    assert splitter.feed(b"\n\ndata: next") == ["x" * 3_000_101]
    assert splitter.feed(b"\n\n") == ["next"]
