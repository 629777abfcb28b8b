"""The chat page (transport/static/) in a real headless Chromium driven by Playwright, against a real
server on a loopback port in a thread. Imports support, actors and transport.server; no transport internals."""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
from contextlib import contextmanager

import pytest
import trio

from actors import AgentSpec, EchoBrain
from support import GatedBrain, running_server

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the test extras install it
    sync_playwright = None

CHROMIUM = os.environ.get("AGENTCAST_CHROMIUM") or next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium") if p and os.path.exists(p)),
    None,
)
pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="needs playwright (pip install -e '.[test]')"),
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium; .ci/run does it)"),
]

#: Without the background-networking flags Chromium's own connections fail on a closed network.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT = 5000  # ms, for every expect()


@contextmanager
def server_in_thread(db: str, specs):
    """A real server (trio) in a thread, so that Playwright's sync API can drive the browser here.

    Yields (port, call): `call(fn, *args)` runs `fn` in the server's trio thread.
    """
    started = threading.Event()
    box: dict = {}

    async def main():
        box["stop"] = trio.Event()
        async with running_server(db, specs) as server:
            box["port"], box["token"] = server.port, trio.lowlevel.current_trio_token()
            started.set()
            await box["stop"].wait()

    def run():
        try:
            trio.run(main)
        except BaseException as exc:  # noqa: B036 - reported in the test's thread
            box["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=run, name="agentcast-server", daemon=True)
    thread.start()
    started.wait(10)
    if "error" in box:
        raise box["error"]

    def call(fn, *args):
        return trio.from_thread.run_sync(fn, *args, trio_token=box["token"])

    try:
        yield box["port"], call
    finally:
        call(box["stop"].set)
        thread.join(15)
        if "error" in box:
            raise box["error"]


GATED = GatedBrain()
SPECS = [
    AgentSpec("streamy", EchoBrain(delay=0.03, chunks=6), description="Echoes slowly, to watch it stream"),
    AgentSpec("my_agent", EchoBrain(), description="Echoes at once"),
    AgentSpec("gated", GATED, description="Answers when the test says so"),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with server_in_thread(str(tmp_path_factory.mktemp("browser") / "agentcast.db"), SPECS) as (port, call):
        yield f"http://127.0.0.1:{port}", call


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, live):
    """`open_page(user, agent, route=None)`: a page in a fresh browser context (a separate person)."""
    base, _ = live
    contexts = []

    def open_page(user, agent="streamy", route=None):
        context = browser.new_context(viewport={"width": 1100, "height": 720})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.js_errors = errors
        if route is not None:
            page.route_web_socket("**/ws", route)
        page.goto(f"{base}/?user={user}&agent={agent}")
        expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=TIMEOUT)
        return page

    yield open_page
    for context in contexts:
        context.close()


def send(page, text):
    page.fill("#message", text)
    page.press("#message", "Enter")


def last_answer(page):
    return page.locator("#conversation .turn .msg.agent").last


def watch_answers(page):
    """Record every text the last answer shows while it streams (and whether 'thinking' showed)."""
    page.evaluate("""() => {
      window.seen = []; window.thinkingShown = false;
      new MutationObserver(() => {
        const turns = document.querySelectorAll('#conversation .turn');
        const last = turns[turns.length - 1];
        if (!last) return;
        const thinking = last.querySelector('.thinking');
        if (thinking && !thinking.hidden) window.thinkingShown = true;
        const text = last.querySelector('.msg.agent .body').textContent;
        if (window.seen[window.seen.length - 1] !== text) window.seen.push(text);
      }).observe(document.getElementById('conversation'), {subtree: true, childList: true, characterData: true, attributes: true});
    }""")


def test_two_users_each_see_only_their_own_streamed_answers(open_page, tmp_path):
    alice, bob = open_page("alice"), open_page("bob")
    expect(alice.locator("#agent option")).to_have_text(["streamy", "my_agent", "gated"])
    expect(alice.locator("#agent")).to_have_value("streamy")
    expect(alice.locator("#agent-description")).to_have_text("Echoes slowly, to watch it stream")
    for page in (alice, bob):
        watch_answers(page)
    send(alice, "alice: the launch code is 1234")
    send(bob, "bob: lunch at noon")
    for page, who in ((alice, "alice: the launch code is 1234"), (bob, "bob: lunch at noon")):
        answer = last_answer(page)
        expect(answer.locator(".body")).to_contain_text(f"You said: {who}")
        expect(page.locator("#conversation .turn .msg.agent[data-seq]")).to_have_count(1)
        expect(answer.locator(".thinking")).to_be_hidden()
        seen = page.evaluate("window.seen")
        full = answer.locator(".body").text_content()
        # token by token: the answer grew through several prefixes before it was whole
        growing = [s for s in seen if s and full.startswith(s)]
        assert len(growing) >= 3 and growing[-1] == full, seen
        assert page.evaluate("window.thinkingShown")
    assert "bob" not in alice.locator("#conversation").text_content()
    assert "alice" not in bob.locator("#conversation").text_content()
    assert not alice.js_errors and not bob.js_errors, alice.js_errors + bob.js_errors


XSS = '<img src=x onerror="window.pwned = 1"><script>window.pwned = 2</script><b>bold?</b>'


def test_markup_in_a_message_shows_as_text_on_every_page_of_the_user(open_page):
    laptop, phone = open_page("mallory"), open_page("mallory")  # the same user: phone sees laptop's turns
    expect(phone.locator("#status")).to_have_attribute("data-state", "open")
    send(laptop, XSS)
    for page in (laptop, phone):
        turn = page.locator("#conversation .turn").last
        expect(turn.locator(".msg.user .text")).to_have_text(XSS)
        expect(turn.locator(".msg.agent .body")).to_contain_text("You said: " + XSS)
        expect(turn.locator(".msg.agent")).to_have_attribute("data-seq", re.compile(r"^\d+$"))
    laptop.fill("#search-query", "bold")
    laptop.click("#search")
    expect(laptop.locator("#search-results li").first).to_contain_text(XSS)
    for page in (laptop, phone):
        assert page.locator("#conversation img, #conversation script, #conversation b, #search-results img").count() == 0
        assert page.evaluate("window.pwned") is None
        assert not page.js_errors, page.js_errors


def test_reload_shows_the_conversation_again_and_search_finds_it(open_page, tmp_path):
    page = open_page("carol", agent="my_agent")
    send(page, "My favourite colour is turquoise.")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(1)
    send(page, "And I live in Lisbon.")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(2)
    page.reload()
    expect(page.locator("#status")).to_have_attribute("data-state", "open")
    expect(page.locator("#user-id")).to_have_value("carol")
    # the backlog from the log: both turns, in order
    expect(page.locator("#conversation .turn .msg.user .text")).to_have_text(
        ["My favourite colour is turquoise.", "And I live in Lisbon."])
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(2)

    page.fill("#search-query", "favourite colour")
    page.click("#search")
    first = page.locator("#search-results li").first
    expect(first).to_contain_text("My favourite colour is turquoise.")
    expect(first).to_have_attribute("data-source", "short_term")
    # AGENTCAST_SCREENSHOT=docs/chat-page.png makes the README's picture of the page
    page.screenshot(path=os.environ.get("AGENTCAST_SCREENSHOT") or str(tmp_path / "chat-page.png"))

    page.click("#clear-short")  # short-term emptied; long-term search still finds it
    expect(page.locator("#conversation .system")).to_contain_text("Short-term memory cleared")
    page.uncheck("#long-term")
    page.click("#search")
    expect(page.locator("#search-status")).to_have_text("nothing found")
    page.check("#long-term")
    page.click("#search")
    expect(page.locator("#search-results li").first).to_have_attribute("data-source", "long_term")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#clear-all")
    expect(page.locator("#conversation .system")).to_contain_text("4 messages erased")
    page.click("#search")
    expect(page.locator("#search-status")).to_have_text("nothing found")
    assert not page.js_errors, page.js_errors


def test_switching_user_resends_set_user_and_shows_that_users_conversation(open_page):
    page = open_page("dave", agent="my_agent")
    send(page, "dave was here")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(1)
    page.evaluate("() => { window.sentFrames = []; const s = window.agentcast._sendNow.bind(window.agentcast);"
                  " window.agentcast._sendNow = (f) => { window.sentFrames.push(f); s(f); }; }")
    page.fill("#user-id", "erin")
    page.click("#user-switch")
    expect(page.locator("#status")).to_have_text("connected as erin")
    expect(page.locator("#conversation .turn")).to_have_count(0)
    send(page, "erin now")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(1)
    sent = page.evaluate("window.sentFrames")
    assert [(f["type"], f.get("user_id"), f.get("after_seq")) for f in sent][:2] == [
        ("set_user", "erin", None), ("subscribe", None, 0)]  # then erin's log from the start
    assert "dave was here" not in page.locator("#conversation").text_content()
    page.fill("#user-id", "dave")
    page.click("#user-switch")
    expect(page.locator("#conversation .turn .msg.user .text")).to_have_text(["dave was here"])
    assert not page.js_errors, page.js_errors


def test_without_list_agents_the_agent_is_typed_and_tool_calls_and_stop_render(open_page, live):
    """A server without `list_agents` (answered unknown_type) and, until the llm branch lands, the
    tool_call / tool_result / cancelled frames injected by a WebSocket route in front of the page."""
    _, call = live
    to_server = []

    def route(ws):
        server = ws.connect_to_server()

        def from_page(message):
            frame = json.loads(message)
            to_server.append(frame)
            if frame["type"] == "list_agents":
                ws.send(json.dumps({"type": "error", "code": "unknown_type", "request_id": frame["request_id"],
                                    "message": "Unknown message type: list_agents"}))
            elif frame["type"] == "cancel":
                rid = frame["request_id"]
                ws.send(json.dumps({"type": "cancelled", "agent_id": "gated", "partial": "", "request_id": rid}))
                ws.send(json.dumps({"type": "agent_done", "agent_id": "gated", "request_id": rid}))
            else:
                server.send(message)

        def from_server(message):
            ws.send(message)
            frame = json.loads(message)
            if frame["type"] == "agent_thinking":
                rid = frame["request_id"]
                ws.send(json.dumps({"type": "tool_call", "agent_id": "gated", "call_id": "c1", "tool": "lookup",
                                    "arguments": {"q": "<img src=x onerror=alert(1)>"}, "request_id": rid}))
                ws.send(json.dumps({"type": "tool_result", "agent_id": "gated", "call_id": "c1", "tool": "lookup",
                                    "result": {"found": "<b>yes</b>"}, "request_id": rid}))

        ws.on_message(from_page)
        server.on_message(from_server)

    page = open_page("frank", agent="gated", route=route)
    expect(page.locator("#agent")).to_be_hidden()
    expect(page.locator("#agent-text")).to_have_value("gated")
    send(page, "use a tool, then wait")
    turn = page.locator("#conversation .turn").last
    tool = turn.locator("details.tool")
    expect(tool.locator("summary")).to_have_text("🔧 lookup")
    expect(tool.locator(".result")).to_contain_text('"found": "<b>yes</b>"')
    expect(turn.locator(".thinking")).to_be_visible()
    expect(page.locator("#stop")).to_be_enabled()
    page.click("#stop")
    expect(turn.locator(".stopped")).to_have_text(" (stopped)")
    expect(turn.locator(".thinking")).to_be_hidden()
    expect(page.locator("#stop")).to_be_disabled()
    cancel = next(f for f in to_server if f["type"] == "cancel")
    chat = next(f for f in to_server if f["type"] == "chat")
    assert cancel == {"type": "cancel", "agent_id": "gated", "request_id": chat["request_id"]}
    assert page.locator("#conversation img, #conversation b").count() == 0
    call(GATED.gate.set)  # let the server's turn end
    assert not page.js_errors, page.js_errors


def test_a_dropped_connection_reconnects_and_resumes_without_duplicates(open_page):
    sockets = []

    def route(ws):
        server, sent = ws.connect_to_server(), []
        ws.on_message(lambda message: (sent.append(json.loads(message)), server.send(message)))
        sockets.append((ws, sent))

    page = open_page("grace", agent="my_agent", route=route)
    send(page, "before the drop")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(1)
    page.evaluate("() => { window.states = []; window.agentcast.on('state', (s) => window.states.push(s.state)); }")
    seq = int(page.locator("#conversation .msg.agent[data-seq]").get_attribute("data-seq"))
    sockets[0][0].close(code=1012, reason="restarting")
    page.wait_for_function("() => window.states.includes('reconnecting') && window.agentcast.state === 'open'")
    expect(page.locator("#status")).to_have_text("connected as grace")
    send(page, "after the drop")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(2)
    expect(page.locator("#conversation .turn .msg.user .text")).to_have_text(["before the drop", "after the drop"])
    assert len(sockets) == 2 and page.evaluate("window.states") == ["reconnecting", "open"]
    again = [(f["type"], f.get("user_id"), f.get("agent_id"), f.get("after_seq")) for f in sockets[1][1]]
    assert again[:2] == [("set_user", "grace", None, None), ("subscribe", None, "my_agent", seq)]
    assert not page.js_errors, page.js_errors
