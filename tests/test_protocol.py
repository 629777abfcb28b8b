"""Unit tests of the sans-IO wire codec `transport.protocol`: decode, encode and error codes.

Plain function calls on JSON text (no sockets, no trio), plus a hypothesis property test of `decode`.
"""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcast.transport.protocol import (
    SHOWN_CHARS,
    Auth,
    Cancel,
    COMMAND_TYPES,
    Chat,
    ClearMemory,
    Error,
    ListAgents,
    MemoryCleared,
    MemoryResult,
    MemoryResults,
    Ping,
    Pong,
    ProtocolError,
    Response,
    ResponseChunk,
    SearchMemory,
    SetUser,
    Subscribe,
    ToolCall,
    ToolResult,
    Unsubscribe,
    UserSet,
    ChunkRun,
    decode,
    encode,
    encode_utf8,
    error_frame,
    json_text,
)

COMMAND_CLASSES = (Ping, SetUser, Subscribe, Unsubscribe, Chat, SearchMemory, ClearMemory, Auth, ListAgents, Cancel)


def frame(**fields) -> str:
    return json.dumps(fields)


def decode_error(data) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    return info.value


# -- valid client frames --------------------------------------------------------------


def test_decode_ping():
    assert decode(frame(type="ping")) == Ping()


def test_decode_ping_with_request_id():
    assert decode(frame(type="ping", request_id="r1")) == Ping(request_id="r1")


@pytest.mark.parametrize("user_id", [123, 0, -7, "alice", "123"])
def test_decode_set_user_accepts_int_or_string(user_id):
    cmd = decode(frame(type="set_user", user_id=user_id))
    assert cmd == SetUser(user_id)
    assert type(cmd.user_id) is type(user_id)


def test_decode_subscribe_and_unsubscribe():
    assert decode(frame(type="subscribe", agent_id="echo")) == Subscribe("echo")
    assert decode(frame(type="unsubscribe", agent_id="echo", request_id="x")) == Unsubscribe("echo", "x")


def test_decode_chat():
    assert decode(frame(type="chat", agent_id="echo", message="hello")) == Chat("echo", "hello")


def test_decode_search_memory_defaults():
    cmd = decode(frame(type="search_memory", agent_id="echo", query="colour"))
    assert cmd == SearchMemory("echo", "colour")
    assert cmd.limit == 5
    assert cmd.use_long_term is True


@pytest.mark.parametrize("limit", [1, 42, 100])
def test_decode_search_memory_limit_in_range(limit):
    cmd = decode(frame(type="search_memory", agent_id="a", query="q", limit=limit, use_long_term=False))
    assert cmd.limit == limit
    assert cmd.use_long_term is False


@pytest.mark.parametrize("legs", [["lexical"], ["semantic"], ["lexical", "semantic"], ["semantic", "lexical"]])
def test_search_memory_may_ask_for_its_legs(legs):
    assert decode(frame(type="search_memory", agent_id="a", query="q", legs=legs)).legs == legs
    assert decode(frame(type="search_memory", agent_id="a", query="q")).legs is None  # every leg the agent has


@pytest.mark.parametrize("legs", [[], ["bm25"], ["lexical", "lexical"], "lexical", None, [1], {"lexical": True}, [{}], [["lexical"]]])
def test_search_memory_rejects_bad_legs(legs):
    error = decode_error(frame(type="search_memory", agent_id="a", query="q", legs=legs, request_id="r1"))
    assert error.code == "invalid_field" and error.request_id == "r1"
    assert error.message == ("Field 'legs' of 'search_memory' must be a non-empty list of distinct legs: "
                             "'lexical', 'semantic'")


def test_memory_results_say_which_legs_ran():
    frame_ = MemoryResults("a", "q", [], None, ["lexical", "semantic"])
    assert json.loads(encode(frame_))["legs"] == ["lexical", "semantic"]
    assert "legs" not in json.loads(encode(MemoryResults("a", "q", [])))  # as a server that does not say


def test_decode_clear_memory_defaults_to_short_term():
    cmd = decode(frame(type="clear_memory", agent_id="echo"))
    assert cmd == ClearMemory("echo")
    assert cmd.clear_long_term is False


def test_decode_clear_memory_long_term():
    assert decode(frame(type="clear_memory", agent_id="echo", clear_long_term=True)).clear_long_term is True


def test_decode_ignores_unknown_extra_fields():
    assert decode(frame(type="ping", extra=[1, 2])) == Ping()


# -- error codes ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b'{"type": "ping"}', b"", bytearray(b"x")])
def test_binary_frame_is_rejected(data):
    assert decode_error(data).code == "binary_frame"


@pytest.mark.parametrize("data", ["", "not json", "{", '{"type": "ping",}', "{'type': 'ping'}"])
def test_invalid_json(data):
    assert decode_error(data).code == "invalid_json"


def test_deeply_nested_json_is_invalid_json_not_recursion_error():
    assert decode_error("[" * 100000).code == "invalid_json"
    assert decode_error('{"a":' * 100000).code == "invalid_json"


def test_absurdly_long_number_is_invalid_json_not_value_error():
    assert decode_error("1" * 5000).code == "invalid_json"
    assert decode_error('{"type": "search_memory", "agent_id": "a", "query": "q", "limit": %s}' % ("9" * 5000)).code == (
        "invalid_json"
    )


@pytest.mark.parametrize("data", ["[]", "[1, 2]", "42", '"ping"', "null", "true"])
def test_json_that_is_not_an_object_is_invalid_message(data):
    assert decode_error(data).code == "invalid_message"


@pytest.mark.parametrize("data", ["{}", '{"type": null}', '{"agent_id": "a"}'])
def test_missing_type(data):
    assert decode_error(data).code == "missing_type"


@pytest.mark.parametrize(
    ("type_", "shown"),
    [("dance", "dance"), ("PING", "PING"), ("", ""), (5, "5"), (True, "true"), (["ping"], '["ping"]'), ("user_set", "user_set")],
)
def test_unknown_type(type_, shown):
    error = decode_error(frame(type=type_))
    assert error.code == "unknown_type"
    assert error.message == f"Unknown message type: {shown}"


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"type": "set_user"}, "user_id"),
        ({"type": "subscribe"}, "agent_id"),
        ({"type": "unsubscribe"}, "agent_id"),
        ({"type": "chat", "agent_id": "a"}, "message"),
        ({"type": "chat", "message": "hi"}, "agent_id"),
        ({"type": "search_memory", "agent_id": "a"}, "query"),
        ({"type": "clear_memory"}, "agent_id"),
    ],
)
def test_missing_field(fields, missing):
    error = decode_error(json.dumps(fields))
    assert error.code == "missing_field"
    assert missing in error.message


@pytest.mark.parametrize("user_id", [True, False, 1.5, 1.0, None, "", [], [1], {}])
def test_set_user_rejects_bad_user_id(user_id):
    error = decode_error(frame(type="set_user", user_id=user_id))
    assert error.code == "invalid_field"
    assert "user_id" in error.message


@pytest.mark.parametrize("message", ["", "   ", "\n\t ", 5, None, True, ["hi"], {"text": "hi"}])
def test_chat_rejects_empty_or_non_string_message(message):
    error = decode_error(frame(type="chat", agent_id="a", message=message))
    assert error.code == "invalid_field"
    assert "message" in error.message


@pytest.mark.parametrize("agent_id", ["", 5, None, ["a"], "x" * 257])
def test_bad_agent_id(agent_id):
    error = decode_error(frame(type="subscribe", agent_id=agent_id))
    assert error.code == "invalid_field"
    assert "agent_id" in error.message


@pytest.mark.parametrize("limit", ["5", 0, 101, -1, True, False, 2.5, 5.0, None])
def test_search_memory_rejects_bad_limit(limit):
    error = decode_error(frame(type="search_memory", agent_id="a", query="q", limit=limit))
    assert error.code == "invalid_field"
    assert "limit" in error.message


@pytest.mark.parametrize("query", ["", "  ", 3, None])
def test_search_memory_rejects_bad_query(query):
    error = decode_error(frame(type="search_memory", agent_id="a", query=query))
    assert error.code == "invalid_field"
    assert "query" in error.message


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"type": "search_memory", "agent_id": "a", "query": "q", "use_long_term": "false"}, "use_long_term"),
        ({"type": "search_memory", "agent_id": "a", "query": "q", "use_long_term": 0}, "use_long_term"),
        ({"type": "search_memory", "agent_id": "a", "query": "q", "use_long_term": None}, "use_long_term"),
        ({"type": "clear_memory", "agent_id": "a", "clear_long_term": "false"}, "clear_long_term"),
        ({"type": "clear_memory", "agent_id": "a", "clear_long_term": 1}, "clear_long_term"),
        ({"type": "clear_memory", "agent_id": "a", "clear_long_term": "true"}, "clear_long_term"),
    ],
)
def test_booleans_must_be_json_booleans(fields, name):
    error = decode_error(json.dumps(fields))
    assert error.code == "invalid_field"
    assert name in error.message


@pytest.mark.parametrize("request_id", [5, True, ["r"], {"id": "r"}])
def test_non_string_request_id_is_invalid_field(request_id):
    error = decode_error(frame(type="ping", request_id=request_id))
    assert error.code == "invalid_field"
    assert "request_id" in error.message
    assert error.request_id is None


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "chat", "agent_id": "a", "message": "\ud800"},
        {"type": "chat", "agent_id": "a", "message": "ok \udfff ok"},
        {"type": "chat", "agent_id": "\ud800", "message": "hi"},
        {"type": "search_memory", "agent_id": "a", "query": "\ud83d"},
        {"type": "set_user", "user_id": "\udc00"},
        {"type": "ping", "request_id": "\ud800"},
    ],
)
def test_lone_surrogates_in_text_fields_are_invalid_field(fields):
    data = json.dumps(fields)  # ensure_ascii: the surrogate travels as a "\udXXX" escape
    assert "\\ud" in data
    error = decode_error(data)
    assert error.code == "invalid_field"


def test_surrogate_pair_escape_is_accepted():
    assert decode('{"type": "chat", "agent_id": "a", "message": "\\ud83d\\ude00"}').message == "\U0001F600"


# -- request_id echo in errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"request_id": "r7"}, "missing_type"),
        ({"type": "dance", "request_id": "r7"}, "unknown_type"),
        ({"type": "chat", "agent_id": "a", "request_id": "r7"}, "missing_field"),
        ({"type": "chat", "agent_id": "a", "message": " ", "request_id": "r7"}, "invalid_field"),
        ({"type": "search_memory", "agent_id": "a", "query": "q", "limit": 0, "request_id": "r7"}, "invalid_field"),
    ],
)
def test_error_echoes_usable_request_id(fields, code):
    error = decode_error(json.dumps(fields))
    assert error.code == code
    assert error.request_id == "r7"


@pytest.mark.parametrize("request_id", [5, None, "\ud800"])
def test_error_has_no_request_id_when_frame_had_no_usable_one(request_id):
    error = decode_error(json.dumps({"type": "dance", "request_id": request_id}))
    assert error.code == "unknown_type"
    assert error.request_id is None


def test_error_frame_carries_code_message_request_id_and_agent():
    error = decode_error(frame(type="chat", agent_id="a", request_id="r1"))
    assert error_frame(error, "a") == Error("missing_field", error.message, "a", "r1")
    wire = json.loads(encode(error_frame(error, "a")))
    assert wire == {"type": "error", "code": "missing_field", "message": error.message, "agent_id": "a", "request_id": "r1"}


# -- client-chosen ids: at most 256 bytes as UTF-8, never echoed when longer ----------------------------

EMOJI = "\U0001F600"  # 1 character, 4 bytes in UTF-8

#: Every client-chosen id field, in a frame that is valid apart from it.
ID_FIELDS = [
    ("request_id", lambda v: {"type": "ping", "request_id": v}),
    ("agent_id", lambda v: {"type": "subscribe", "agent_id": v, "request_id": "r"}),
    ("agent_id", lambda v: {"type": "chat", "agent_id": v, "message": "hi", "request_id": "r"}),
    ("command_id", lambda v: {"type": "chat", "agent_id": "a", "message": "hi", "command_id": v, "request_id": "r"}),
    ("user_id", lambda v: {"type": "set_user", "user_id": v, "request_id": "r"}),
]


@pytest.mark.parametrize(("name", "make"), ID_FIELDS)
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_ids_are_bounded_in_utf8_bytes_not_characters(name, make, ensure_ascii):
    for fits in ["x" * 256, EMOJI * 64, "\x01" * 256, "é" * 128]:  # 256 bytes each as UTF-8
        command = decode(json.dumps(make(fits), ensure_ascii=ensure_ascii))
        assert getattr(command, name) == fits
    for too_long in ["x" * 257, EMOJI * 65, "é" * 128 + "x"]:  # 65 characters but 260 bytes, ...
        error = decode_error(json.dumps(make(too_long), ensure_ascii=ensure_ascii))
        assert error.code == "invalid_field"
        assert f"Field '{name}'" in error.message and "256 bytes" in error.message
        assert too_long not in error.message


@pytest.mark.parametrize("too_long", ["r" * 65_000, EMOJI * 65, "r" * 257], ids=["65000 ASCII", "65 emoji", "257 ASCII"])
def test_a_too_long_request_id_is_refused_and_never_echoed_whatever_the_frame(too_long):
    """The answer to a frame with a too-long request_id is a short error without it: echoing it back
    (in a pong, or in the error about something else) let a client make the server queue what it sent."""
    frames = [{"type": name, "request_id": too_long} for name in COMMAND_TYPES]  # most miss a field too
    frames += [
        {"type": "ping", "request_id": too_long},
        {"type": "chat", "agent_id": "a", "message": "hi", "request_id": too_long},
        {"type": "no such type", "request_id": too_long},
        {"request_id": too_long},
        {"type": "x" * 65_000, "request_id": too_long},
        {"type": ["x" * 1000], "request_id": too_long},
    ]
    for fields in frames:
        error = decode_error(json.dumps(fields))
        assert error.request_id is None
        assert len(error.message) < 200, error.message
    assert decode_error(json.dumps({"type": "ping", "request_id": too_long})).message == (
        "Field 'request_id' of 'ping' must be a string of at most 256 bytes (UTF-8)")


def test_an_unknown_type_is_quoted_at_most_shown_chars_characters():
    error = decode_error(frame(type="y" * 65_000))
    assert error.code == "unknown_type"
    assert error.message == "Unknown message type: " + "y" * SHOWN_CHARS + "...[65000 characters]"


@pytest.mark.parametrize("user_id", [10**256 - 1, -(10**255 - 1), 0, -1, 2**64],
                         ids=["10**256-1", "-(10**255-1)", "0", "-1", "2**64"])
def test_integer_user_ids_of_at_most_256_characters_are_taken(user_id):
    assert len(str(user_id)) <= 256
    assert decode(frame(type="set_user", user_id=user_id)).user_id == user_id


@pytest.mark.parametrize("user_id", [10**256, -(10**255), 10**4000], ids=["10**256", "-(10**255)", "10**4000"])
def test_integer_user_ids_longer_than_256_characters_are_refused_like_long_strings(user_id):
    error = decode_error(frame(type="set_user", user_id=user_id, request_id="r"))
    assert error.code == "invalid_field" and error.request_id == "r"
    assert error.message == ("Field 'user_id' of 'set_user' must be an integer of at most 256 digits (a minus "
                             "sign counts as one) or a non-empty string of at most 256 bytes (UTF-8)")


def test_an_integer_beyond_pythons_digit_limit_is_a_clean_error():
    """json refuses integers of more than 4300 digits with a ValueError that tells the reader to call
    sys.set_int_max_str_digits(): not a message for a client."""
    for data in ['{"type": "set_user", "user_id": %s}' % ("1" * 5000), '{"type": "ping", "n": %s}' % ("9" * 5000)]:
        error = decode_error(data)
        assert error.code == "invalid_json"
        assert error.message == "Message has an integer with too many digits to read (a user id has at most 256)"


# -- encode -------------------------------------------------------------------------------


def test_encode_has_type_tag_and_omits_none_request_id():
    wire = json.loads(encode(Response("echo", "hi", 3)))
    assert wire == {"type": "response", "agent_id": "echo", "message": "hi", "seq": 3}


def test_encode_keeps_request_id_when_set():
    assert json.loads(encode(Response("echo", "hi", 3, "r9")))["request_id"] == "r9"


def test_encode_keeps_clear_long_term_false():
    wire = json.loads(encode(MemoryCleared("echo", False, 0, 4)))
    assert wire == {"type": "memory_cleared", "agent_id": "echo", "clear_long_term": False, "forgotten": 0, "seq": 4}


@pytest.mark.parametrize("user_id", [123, "123"])
def test_encode_user_set_keeps_json_type_of_user_id(user_id):
    wire = json.loads(encode(UserSet(user_id)))
    assert wire == {"type": "user_set", "user_id": user_id}
    assert type(wire["user_id"]) is type(user_id)


def test_encode_ping_answer_has_type_ping():
    assert json.loads(encode(Pong())) == {"type": "ping"}
    assert json.loads(encode(Pong("r1"))) == {"type": "ping", "request_id": "r1"}


def test_encode_memory_results_nests_results():
    frame_ = MemoryResults("echo", "colour", [MemoryResult("user", "turquoise", "2024-01-01T00:00:00Z", 1.5, "long_term")])
    wire = json.loads(encode(frame_))
    assert wire["type"] == "memory_results"
    assert wire["results"] == [
        {"role": "user", "content": "turquoise", "timestamp": "2024-01-01T00:00:00Z", "score": 1.5, "source": "long_term"}
    ]


def test_encode_keeps_non_ascii_text():
    assert "café ☕" in encode(Response("echo", "café ☕", 1))


# -- property: decode never raises anything but ProtocolError --------------------------------

any_text = st.one_of(st.text(), st.text(st.characters(exclude_categories=())))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(any_text, children, max_size=4)),
    max_leaves=12,
)
FIELD_NAMES = ["agent_id", "user_id", "message", "query", "limit", "use_long_term", "clear_long_term", "request_id"]
field_values = st.one_of(
    st.sampled_from(["echo", "hello there", "r1", 123, 5, 1, 100, True, False]),  # plausible values
    st.sampled_from(["", " ", "5", "false", "\ud800", "x" * 300, 0, 101, 2.5, None]),  # edge values
    st.integers(min_value=-2, max_value=102),
    json_values,
)
command_like = st.builds(
    lambda type_, fields, extra: {**extra, **fields, "type": type_},
    st.sampled_from(sorted(COMMAND_TYPES)),
    st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=8),
    st.dictionaries(any_text, json_values, max_size=2),
)

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def assert_decodes_or_protocol_error(data):
    try:
        result = decode(data)
    except ProtocolError as exc:
        assert isinstance(exc.code, str) and exc.code
        assert exc.request_id is None or isinstance(exc.request_id, str)
        return None
    assert isinstance(result, COMMAND_CLASSES)
    return result


@PROPERTY
@given(any_text)
def test_decode_any_text_returns_command_or_protocol_error(text):
    assert_decodes_or_protocol_error(text)


@PROPERTY
@given(st.binary())
def test_decode_any_bytes_is_binary_frame_error(data):
    assert decode_error(data).code == "binary_frame"


@PROPERTY
@given(st.one_of(json_values, command_like), st.booleans())
def test_decode_any_json_value_returns_command_or_protocol_error(value, ensure_ascii):
    result = assert_decodes_or_protocol_error(json.dumps(value, ensure_ascii=ensure_ascii))
    if result is not None:
        assert result.TYPE == value["type"]


words = st.text(min_size=1).filter(str.strip)
#: Ids of at most 256 bytes as UTF-8 (64 characters are at most 256 bytes).
ids = st.one_of(st.text(min_size=1, max_size=64), st.text(st.characters(max_codepoint=127), min_size=1, max_size=256))
request_ids = st.one_of(st.none(), st.just(""), ids)


def without_none(**fields):
    return {k: v for k, v in fields.items() if v is not None}


valid_commands = st.one_of(
    st.builds(
        lambda u, r: (without_none(type="set_user", user_id=u, request_id=r), SetUser(u, r)),
        st.one_of(st.integers(), ids),
        request_ids,
    ),
    st.builds(
        lambda a, m, r: (without_none(type="chat", agent_id=a, message=m, request_id=r), Chat(a, m, r)),
        ids,
        words,
        request_ids,
    ),
    st.builds(
        lambda a, q, n, lt, r: (
            without_none(type="search_memory", agent_id=a, query=q, limit=n, use_long_term=lt, request_id=r),
            SearchMemory(a, q, n, lt, r),
        ),
        ids,
        words,
        st.integers(min_value=1, max_value=100),
        st.booleans(),
        request_ids,
    ),
    st.builds(
        lambda a, c, r: (without_none(type="clear_memory", agent_id=a, clear_long_term=c, request_id=r), ClearMemory(a, c, r)),
        ids,
        st.booleans(),
        request_ids,
    ),
)


@settings(max_examples=150, deadline=None, database=None)
@given(valid_commands)
def test_decode_accepts_every_valid_command(case):
    fields, expected = case
    assert decode(json.dumps(fields)) == expected


def test_encode_never_raises_a_frame_it_cannot_encode_becomes_an_internal_error():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    for frame in (ToolCall("a", "c1", "t", deep, "r1"), ToolResult("a", "c1", "t", {1j}, None, "r1")):
        assert json.loads(encode(frame)) == {
            "type": "error", "code": "internal_error", "message": f"The server could not encode a {frame.TYPE} frame",
            "agent_id": "a", "request_id": "r1",
        }


# -- encode_utf8: the bytes the server writes ------------------------------------------------

#: One text field's values: any text (lone surrogates too), and the characters JSON must escape.
wire_text = st.one_of(st.text(st.characters(exclude_categories=())), st.sampled_from(['"', "\\", "\n\t\x00\x1f\x7f", "\u2028"]))
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), wire_text),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(wire_text, children, max_size=4)),
    max_leaves=12,
)
server_frames = st.one_of(
    st.builds(ResponseChunk, wire_text, wire_text, st.one_of(st.none(), wire_text)),
    st.builds(Response, wire_text, wire_text, st.integers(0, 2**70), st.one_of(st.none(), wire_text)),
    st.builds(Error, wire_text, wire_text, st.one_of(st.none(), wire_text), st.one_of(st.none(), wire_text)),
    st.builds(UserSet, st.one_of(st.integers(), wire_text), st.one_of(st.none(), wire_text)),
    st.builds(ToolCall, wire_text, wire_text, wire_text, json_value, st.one_of(st.none(), wire_text)),
    st.builds(MemoryResults, wire_text, wire_text, st.lists(st.builds(
        MemoryResult, st.sampled_from(["user", "agent"]), wire_text, wire_text, st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(["short_term", "long_term"])), max_size=3)),
)


def _as_sent(text: str) -> str:
    """`text` as UTF-8 can carry it: each lone surrogate becomes U+FFFD."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


@settings(max_examples=300, deadline=None, database=None)
@given(server_frames)
def test_encode_utf8_is_the_json_of_encode_as_utf8(frame_):
    data = encode_utf8(frame_)
    assert isinstance(data, bytes)
    expected = json.loads(_as_sent(encode(frame_)))
    assert json.loads(data.decode("utf-8")) == expected


def test_encode_utf8_replaces_a_lone_surrogate_and_keeps_big_integers():
    assert json.loads(encode_utf8(ResponseChunk("a", "x\ud800y", "r"))) == {
        "type": "response_chunk", "agent_id": "a", "delta": "x\ufffdy", "request_id": "r"}
    assert json.loads(encode_utf8(UserSet(10**30))) == {"type": "user_set", "user_id": 10**30}


def test_encode_utf8_never_raises_either():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert json.loads(encode_utf8(ToolCall("a", "c1", "t", deep, "r1")))["code"] == "internal_error"
    assert json.loads(encode_utf8(ToolResult("a", "c1", "t", {1j}, None, "r1")))["code"] == "internal_error"


def test_encode_utf8_returns_bytes_that_hold_only_their_own_length():
    """orjson's own result keeps its whole write buffer (4 KiB at least): frames waiting for a slow client
    would each hold that much."""
    import tracemalloc

    frames = [ResponseChunk("a", f"delta {i}", "r") for i in range(200)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [encode_utf8(f) for f in frames]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown / len(kept) < 512, grown / len(kept)


# -- ChunkRun: adjacent chunks of a turn as the one frame they are sent as ------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(agent_id=wire_text, request_id=st.one_of(st.none(), wire_text), deltas=st.lists(wire_text, min_size=1, max_size=6))
def test_a_chunk_run_is_the_frame_of_its_deltas_joined(agent_id, request_id, deltas):
    run = ChunkRun(ResponseChunk(agent_id, deltas[0], request_id))
    for delta in deltas[1:]:
        assert run.continued_by(ResponseChunk(agent_id, delta, request_id))
        run.add(json_text(delta))
    data = run.encode()
    assert run.size == len(data)
    merged = ResponseChunk(agent_id, "".join(deltas), request_id)
    assert json.loads(data.decode("utf-8")) == json.loads(_as_sent(encode(merged)))
    if _as_sent(encode(merged)) == encode(merged):  # no lone surrogate: the very bytes encode_utf8 makes
        assert data == encode_utf8(merged)
    assert not run.continued_by(ResponseChunk(agent_id + "x", "d", request_id))
    assert not run.continued_by(ResponseChunk(agent_id, "d", (request_id or "") + "x"))
