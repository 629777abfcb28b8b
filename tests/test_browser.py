"""The chat page (transport/static/) in a real headless Chromium driven by Playwright, against real servers
on loopback ports in a thread: echo agents, an `openai` agent on the fake OpenAI server, and auth on."""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
from contextlib import ExitStack, contextmanager
from types import SimpleNamespace

import pytest
import trio

from agentcast.actors import AgentSpec, EchoBrain
from support.fake_openai import error, text, tool_calls
from support import LLM_AGENT, connect, llm_server, running_server, scaled, token_for

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the test extras install it
    sync_playwright = None

CHROMIUM = os.environ.get("AGENTCAST_CHROMIUM") or next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium") if p and os.path.exists(p)),
    None,
)
pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(sync_playwright is None, reason="needs playwright (pip install -e '.[test]')"),
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium; .ci/run does it)"),
]

#: Without the background-networking flags Chromium's own connections fail on a closed network.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT = int(scaled(5) * 1000)  # ms, for every expect() and every Playwright call


@contextmanager
def server_in_thread(open_server):
    """A real server (trio) in a thread, so that Playwright's sync API can drive the browser here.

    `open_server()` is an async context manager yielding a running server (support.running_server,
    support.llm_server). Yields a namespace: `base` (the page's URL), `server`, `call(fn, *args)`
    runs `fn` in the server's trio thread, `wait(afn)` awaits `afn()` there (at most TIMEOUT).
    """
    started = threading.Event()
    box: dict = {}

    async def main():
        box["stop"] = trio.Event()
        async with open_server() as server:
            box["server"], box["token"] = server, trio.lowlevel.current_trio_token()
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
    started.wait(scaled(10))
    if "error" in box:
        raise box["error"]

    def call(fn, *args):
        return trio.from_thread.run_sync(fn, *args, trio_token=box["token"])

    def wait(afn):
        async def bounded():
            with trio.fail_after(TIMEOUT / 1000):
                return await afn()

        return trio.from_thread.run(bounded, trio_token=box["token"])

    try:
        yield SimpleNamespace(base=f"http://127.0.0.1:{box['server'].port}", server=box["server"], call=call, wait=wait)
    finally:
        call(box["stop"].set)
        thread.join(scaled(15))
        if "error" in box:
            raise box["error"]


SPECS = [
    AgentSpec("streamy", EchoBrain(delay=0.03, chunks=6), description="Echoes slowly, to watch it stream"),
    AgentSpec("my_agent", EchoBrain(), description="Echoes at once"),
]
#: The `openai` agent LLM_AGENT's tools (its model is the fake; each test scripts its replies).
TOOLS = ["current_time", "search_memory"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server with SPECS and an `openai` agent on the fake OpenAI server (`live.server.fake`)."""
    db = str(tmp_path_factory.mktemp("browser") / "agentcast.db")
    with server_in_thread(lambda: llm_server(db, brain={"tools": TOOLS}, others=SPECS)) as live:
        yield live


SECRET_ENV = "AGENTCAST_BROWSER_TEST_SECRET"
SECRET = b"s" * 40


@pytest.fixture(scope="module")
def auth_live(tmp_path_factory):
    """A server with authentication on (secret SECRET) and an echo agent."""
    db = str(tmp_path_factory.mktemp("browser-auth") / "agentcast.db")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(SECRET_ENV, SECRET.decode())
        specs = [AgentSpec("my_agent", EchoBrain())]
        with server_in_thread(lambda: running_server(db, specs, auth_secret_env=SECRET_ENV)) as live:
            yield live


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, live):
    """`open_page(user, agent, route=None, server=live, state="open", clock=False)`: a page in a fresh browser
    context (a separate person), once its status is `state`. `page.sockets`: its WebSockets."""
    contexts = []

    def open_page(user, agent="streamy", route=None, server=live, state="open", clock=False):
        context = browser.new_context(viewport={"width": 1100, "height": 720})
        contexts.append(context)
        if clock:  # the page's timers run on Playwright's clock (`page.clock.pause_at`, `run_for`)
            context.clock.install()
        page = context.new_page()
        page.set_default_timeout(TIMEOUT)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.js_errors = errors
        page.sockets = []
        page.on("websocket", lambda ws: page.sockets.append(ws))
        if route is not None:
            page.route_web_socket("**/ws", route)
        page.goto(f"{server.base}/?user={user}&agent={agent}")
        expect(page.locator("#status")).to_have_attribute("data-state", state, timeout=TIMEOUT)
        return page

    yield open_page
    for context in contexts:
        context.close()


def send(page, text):
    page.fill("#message", text)
    page.press("#message", "Enter")


def last_answer(page):
    return page.locator("#conversation .turn .msg.agent").last


def record_sent(page):
    """From now on `window.sentFrames` holds every frame the page's client sends."""
    page.evaluate("() => { window.sentFrames = []; const s = window.agentcast._sendNow.bind(window.agentcast);"
                  " window.agentcast._sendNow = (f) => { window.sentFrames.push(f); s(f); }; }")


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
    expect(alice.locator("#agent option")).to_have_text(["streamy", "my_agent", LLM_AGENT])
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
    record_sent(page)
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


def test_without_list_agents_the_agent_id_is_typed(open_page):
    """A server without `list_agents`: a WebSocket route in front of the page answers it unknown_type."""

    def route(ws):
        server = ws.connect_to_server()

        def from_page(message):
            frame = json.loads(message)
            if frame["type"] == "list_agents":
                ws.send(json.dumps({"type": "error", "code": "unknown_type", "request_id": frame["request_id"],
                                    "message": "Unknown message type: list_agents"}))
            else:
                server.send(message)

        ws.on_message(from_page)
        server.on_message(lambda message: ws.send(message))

    page = open_page("frank", agent="my_agent", route=route)
    expect(page.locator("#agent")).to_be_hidden()
    expect(page.locator("#agent-text")).to_have_value("my_agent")
    send(page, "typed agent")
    expect(last_answer(page).locator(".body")).to_contain_text("You said: typed agent")
    expect(page.locator("#conversation .system")).to_have_count(0)  # no error shown for the missing command
    assert not page.js_errors, page.js_errors


# -- a real model: the `openai` brain on the fake OpenAI server -----------------------------------


def test_a_real_models_tool_calls_render_inline_and_a_brain_error_shows(open_page, live):
    fake = live.server.fake
    asked = live.call(lambda: len(fake.requests))  # by the other tests, if they ran first
    live.call(fake.script,
              tool_calls(("call_1", "current_time", {}), ("call_2", "search_memory", {"query": "green tea"})),
              text("It is ", "teatime.", usage=(12, 5)),
              error(503, "overloaded"),
              text("Back again."))
    page = open_page("heidi", agent=LLM_AGENT)
    send(page, "I drink <b>green tea</b>. What time is it?")
    turn = page.locator("#conversation .turn").last
    tools = turn.locator("details.tool")
    expect(tools.locator("summary")).to_have_text(["🔧 current_time", "🔧 search_memory"])
    expect(tools.nth(0).locator(".result")).to_contain_text('"weekday"')
    expect(tools.nth(1).locator(".args")).to_have_text('{\n  "query": "green tea"\n}')
    # the tool found this very message in heidi's memory: shown as text, not markup
    expect(tools.nth(1).locator(".result")).to_contain_text("I drink <b>green tea</b>. What time is it?")
    answer = turn.locator(".msg.agent")
    expect(answer.locator(".body")).to_contain_text("It is teatime.")
    expect(answer).to_have_attribute("data-seq", re.compile(r"^\d+$"))
    expect(answer.locator(".usage")).to_have_text("12 + 5 tokens")
    # the tool calls come inline, before the text the model wrote after them
    assert answer.locator(".body").evaluate("(b) => [...b.childNodes].map((n) => n.nodeName)") == [
        "DETAILS", "DETAILS", "#text"]
    assert page.locator("#conversation b").count() == 0

    send(page, "And tomorrow?")
    failed = page.locator("#conversation .turn").last.locator(".msg.agent")
    expect(failed.locator(".msg-error")).to_have_text("\n⚠ the model server failed (HTTP 503): overloaded")
    expect(failed).to_have_class(re.compile(r"\berror\b"))
    expect(failed.locator(".thinking")).to_be_hidden()
    expect(page.locator("#stop")).to_be_disabled()
    send(page, "Still there?")
    expect(last_answer(page).locator(".body")).to_have_text("Back again.")
    assert live.call(lambda: len(fake.requests)) == asked + 4
    assert not page.js_errors, page.js_errors


def test_stop_cancels_a_stalled_stream_the_partial_stays_and_the_next_message_works(open_page, live):
    fake = live.server.fake
    asked = live.call(lambda: len(fake.requests))  # by the other tests, if they ran first
    live.call(fake.script, text("Once upon", " a time", stall_after=1), text("Short answer."))
    page = open_page("ivan", agent=LLM_AGENT)
    record_sent(page)
    send(page, "Tell me a long story")
    turn = page.locator("#conversation .turn").last
    expect(turn.locator(".msg.agent .body")).to_have_text("Once upon")
    live.wait(fake.stalled.wait)  # the model sends nothing more: only Stop ends this turn
    expect(turn.locator(".thinking")).to_be_visible()
    page.click("#stop")
    answer = turn.locator(".msg.agent")
    expect(answer).to_have_class(re.compile(r"\bcancelled\b"))
    expect(answer.locator(".stopped")).to_have_text(" (stopped)")
    expect(answer.locator(".body")).to_have_text("Once upon")  # the partial answer stays
    expect(answer.locator(".thinking")).to_be_hidden()
    expect(page.locator("#stop")).to_be_disabled()
    live.wait(fake.disconnected.wait)  # the HTTP stream to the model was closed
    sent = page.evaluate("window.sentFrames")
    chat = next(f for f in sent if f["type"] == "chat")
    assert [f for f in sent if f["type"] == "cancel"] == [
        {"type": "cancel", "agent_id": LLM_AGENT, "request_id": chat["request_id"]}]
    send(page, "A short one, then")
    expect(last_answer(page).locator(".body")).to_have_text("Short answer.")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(1)
    assert live.call(lambda: len(fake.requests)) == asked + 2
    assert not page.js_errors, page.js_errors


# -- authentication on ------------------------------------------------------------------------


def test_with_auth_on_the_page_signs_in_with_a_token_and_shows_what_is_refused(open_page, auth_live):
    page = open_page("alice", agent="my_agent", server=auth_live, state="signed-out")
    status, dialog, message = page.locator("#status"), page.locator("#auth-dialog"), page.locator("#auth-message")
    expect(status).to_have_text("not signed in")
    expect(dialog).to_be_visible()
    expect(message).to_have_text("This server needs you to sign in with a token.")
    page.fill("#token", token_for(b"not the server's secret, 40 bytes long!!", "alice"))
    page.click("#auth-submit")
    expect(message).to_contain_text("Not signed in: Token signature is invalid")
    expect(message).to_have_class("error")
    expect(status).to_have_text("not signed in")
    expect(page.locator("#token")).to_have_value("")

    good = token_for(SECRET, "alice")
    page.fill("#token", good)
    page.press("#token", "Enter")
    expect(dialog).to_be_hidden()
    expect(status).to_have_text("signed in as alice")
    expect(status).to_have_attribute("data-state", "open")
    expect(page.locator("#agent")).to_have_value("my_agent")
    send(page, "signed in at last")
    expect(last_answer(page).locator(".body")).to_contain_text("You said: signed in at last")

    page.fill("#user-id", "bob")  # the token is alice's: the server refuses, the page says so
    page.click("#user-switch")
    expect(page.locator("#conversation .system.error")).to_have_text(
        "Could not switch to bob: This connection is authenticated as user alice; set_user may name only it"
        " (to be someone else, reload the page and sign in with their token)")
    expect(page.locator("#user-id")).to_have_value("alice")
    expect(status).to_have_text("signed in as alice")
    send(page, "still alice")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(2)
    # the token is in the client's memory only: not in the URL, the storages or the document
    kept = page.evaluate("() => JSON.stringify([location.href, {...localStorage}, {...sessionStorage},"
                         " document.documentElement.outerHTML, document.cookie])")
    assert good not in kept
    assert not page.js_errors, page.js_errors


def test_an_expired_token_signs_the_page_out_and_a_new_one_resumes_without_reconnect_loops(open_page, auth_live):
    page = open_page("ivy", agent="my_agent", server=auth_live, state="signed-out")
    page.fill("#token", token_for(SECRET, "ivy", ttl=4))  # expires in 3 to 4 s
    page.press("#token", "Enter")
    status = page.locator("#status")
    expect(status).to_have_text("signed in as ivy")
    send(page, "before it expired")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(1)

    expect(status).to_have_text("signed out: the token expired", timeout=int(scaled(6) * 1000))
    expect(status).to_have_attribute("data-state", "signed-out")
    expect(page.locator("#auth-dialog")).to_be_visible()
    expect(page.locator("#auth-message")).to_contain_text("Your token expired")
    expect(page.locator("#conversation .system.error")).to_contain_text("The token expired at")
    # closed for good until a new token: no reconnect scheduled, one socket so far
    assert page.evaluate("[window.agentcast.state, window.agentcast._timer]") == ["closed", None]
    assert len(page.sockets) == 1

    page.fill("#token", token_for(SECRET, "ivy"))
    page.press("#token", "Enter")
    expect(status).to_have_text("signed in again as ivy")
    send(page, "after a new token")
    expect(page.locator("#conversation .turn .msg.user .text")).to_have_text(["before it expired", "after a new token"])
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(2)
    assert len(page.sockets) == 2
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
    expect(page.locator("#status")).to_have_text("connected again as grace")
    send(page, "after the drop")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(2)
    expect(page.locator("#conversation .turn .msg.user .text")).to_have_text(["before the drop", "after the drop"])
    assert len(sockets) == 2 and page.evaluate("window.states") == ["reconnecting", "open"]
    again = [(f["type"], f.get("user_id"), f.get("agent_id"), f.get("after_seq")) for f in sockets[1][1]]
    assert again[:2] == [("set_user", "grace", None, None), ("subscribe", None, "my_agent", seq)]
    assert not page.js_errors, page.js_errors


# -- turns from the user's other connections, in whatever order their frames come ---------------


def shown_turns(page):
    """The conversation as the person sees it: per turn, the user's words (None if not shown), the answer's
    text, whether 'thinking' still shows, and the answer's marks (cancelled, error, a note)."""
    return page.evaluate("""() => [...document.querySelectorAll('#conversation .turn')].map((t) => {
      const user = t.querySelector('.msg.user'), agent = t.querySelector('.msg.agent');
      const note = agent.querySelector('.note');
      return {
        user: user.hidden ? null : user.querySelector('.text').textContent,
        user_first: user.compareDocumentPosition(agent) === Node.DOCUMENT_POSITION_FOLLOWING,
        answer: agent.hidden ? null : agent.querySelector('.body').textContent,
        thinking: !agent.querySelector('.thinking').hidden,
        marks: ['cancelled', 'error'].filter((c) => agent.classList.contains(c)).concat(note && !note.hidden ? ['note'] : []),
      };
    })""")


def test_turns_from_another_connection_of_the_user_show_once_with_or_without_request_id(open_page, live):
    """The seed's clients send no request_id; the page, a resumed subscriber, gets `agent_thinking` and the
    chunks live, then `user_message` once committed, then `response` and `agent_done`."""
    page = open_page("zoe", agent="streamy")

    async def phone():
        async with connect(live.server.port) as other:
            await other.request({"type": "set_user", "user_id": "zoe"}, "user_set")
            await other.request({"type": "chat", "agent_id": "streamy", "message": "from the phone"}, "agent_done")
            await other.request({"type": "chat", "agent_id": "streamy", "message": "with an id",
                                 "request_id": "phone-1"}, "agent_done")

    live.wait(phone)
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(2)
    expected = [
        {"user": text, "user_first": True, "answer": f"You said: {text}\n(I remember {n} earlier messages of our conversation.)",
         "thinking": False, "marks": []}
        for n, text in ((0, "from the phone"), (2, "with an id"))
    ]
    assert shown_turns(page) == expected
    send(page, "and from the page")
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(3)
    assert [t["user"] for t in shown_turns(page)] == ["from the phone", "with an id", "and from the page"]
    page.reload()  # the same turns again, from the log
    expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(3)
    assert shown_turns(page)[:2] == expected
    assert not page.js_errors, page.js_errors


def injecting_route(sockets):
    """A WebSocket route that passes everything through and keeps each page-side socket in `sockets`, so the
    test can send the page frames of its own (`sockets[-1].send(json.dumps(frame))`)."""

    def route(ws):
        server = ws.connect_to_server()
        ws.on_message(lambda message: server.send(message))
        server.on_message(lambda message: ws.send(message))
        sockets.append(ws)

    return route


def turn_frames(kind, seq, text, rid=None):
    """The frames a resumed subscriber gets for one turn of the same user made elsewhere (see protocol.md)."""
    base = {"agent_id": "my_agent"} | ({"request_id": rid} if rid else {})
    answer = f"re: {text}"
    live = [dict(base, type="agent_thinking"), dict(base, type="response_chunk", delta=answer[:3]),
            dict(base, type="response_chunk", delta=answer[3:])]
    said = dict(base, type="user_message", message=text, seq=seq)
    response = dict(base, type="response", message=answer, seq=seq + 1)
    done = dict(base, type="agent_done")
    return {
        "live": [*live, said, response, done],
        "backlog": [said, response],
        "tools": [dict(base, type="agent_thinking"), dict(base, type="response_chunk", delta="Let me look. "), said,
                  dict(base, type="tool_call", call_id="c1", tool="current_time", arguments={}),
                  dict(base, type="tool_result", call_id="c1", tool="current_time", result={"hour": 5}),
                  dict(base, type="response_chunk", delta=answer),
                  dict(response, message="Let me look. " + answer), done],
        "cancelled": [*live[:2], said, dict(base, type="cancelled", partial=answer[:3]), done],
        "failed": [dict(base, type="agent_thinking"), said,
                   dict(base, type="error", code="brain_error", message="the model is down"), done],
        "backlog_cancelled": [said, dict(base, type="cancelled", partial=answer[:3]), done],
        # a chat sent again after a lost connection, answered from the log: no user_message, and its
        # `response` repeats a seq the page has seen (the client passes it on once)
        "retry": [dict(base, type="agent_thinking"), dict(base, type="response_chunk", delta=answer), response, done],
    }[kind]


def test_turn_frames_in_every_order_the_server_sends_show_each_turn_once(open_page):
    sockets = []
    page = open_page("orders", agent="my_agent", route=injecting_route(sockets))
    expect(page.locator("#conversation")).to_have_attribute("aria-busy", "false")  # subscribed: frames are shown
    script = [("live", None), ("live", "elsewhere-1"), ("backlog", None), ("backlog", "elsewhere-2"),
              ("tools", None), ("cancelled", None), ("failed", None), ("backlog_cancelled", "elsewhere-3"),
              ("live", None), ("retry", None), ("live", "elsewhere-4"), ("retry", "elsewhere-4"),
              ("retry", "python-fresh-id")]
    seq, last = 100, {}
    for n, (kind, rid) in enumerate(script):
        if kind == "retry":
            frames = turn_frames("retry", last["seq"], last["text"], rid)
        else:
            last = {"seq": seq, "text": f"turn {n} ({kind})"}
            frames = turn_frames(kind, seq, last["text"], rid)
            seq += 2
        for frame in frames:
            sockets[-1].send(json.dumps(frame))
    expect(page.locator("#conversation .turn")).to_have_count(10)
    expect(page.locator("#conversation .thinking:visible")).to_have_count(0)
    turns = shown_turns(page)
    assert [(t["user"], t["user_first"]) for t in turns] == [
        (f"turn {n} ({kind})", True) for n, (kind, _) in enumerate(script) if kind != "retry"]
    assert [(t["answer"], t["marks"]) for t in turns] == [
        ("re: turn 0 (live)", []), ("re: turn 1 (live)", []), ("re: turn 2 (backlog)", []),
        ("re: turn 3 (backlog)", []), ("Let me look. 🔧 current_time{}{\n  \"hour\": 5\n}re: turn 4 (tools)", []),
        ("re:", ["cancelled"]), ("", ["error"]), ("re:", ["cancelled"]),
        ("re: turn 8 (live)", []), ("re: turn 10 (live)", []),
    ]
    assert not any(t["thinking"] for t in turns)
    assert not page.js_errors, page.js_errors


# -- what the page says about the connection and about signing in -------------------------------


def test_without_authentication_sign_in_is_offered_nowhere(open_page):
    page = open_page("nobody", agent="my_agent")
    expect(page.locator("#conversation")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#sign-in")).to_be_hidden()
    expect(page.get_by_role("button", name=re.compile("sign in", re.I))).to_have_count(0)
    expect(page.get_by_text(re.compile(r"\bsign in\b", re.I)).filter(visible=True)).to_have_count(0)
    assert page.evaluate("window.agentcast.serverAuth") is False
    assert not page.js_errors, page.js_errors


def test_with_authentication_sign_in_is_offered(open_page, auth_live):
    page = open_page("somebody", agent="my_agent", server=auth_live, state="signed-out")
    page.click("#auth-cancel")
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("window.agentcast.serverAuth") is True
    page.click("#sign-in")
    expect(page.locator("#auth-dialog")).to_be_visible()
    assert not page.js_errors, page.js_errors


def countdown(text):
    """(seconds, attempt) of a status such as 'reconnecting in 0.4 s (attempt 1)'."""
    found = re.fullmatch(r"connection lost: reconnecting in (\d+\.\d) s \(attempt (\d+)\)", text)
    assert found, text
    return float(found[1]), int(found[2])


def test_during_an_outage_the_status_follows_every_attempt_and_says_when_the_server_is_back(open_page, tmp_path):
    db, specs = str(tmp_path / "outage.db"), [AgentSpec("my_agent", EchoBrain())]
    with ExitStack() as running:
        first = running.enter_context(server_in_thread(lambda: running_server(db, specs, port=0)))
        port = first.server.port
        page = open_page("olga", agent="my_agent", server=first, clock=True)
        status = page.locator("#status")
        send(page, "before the outage")
        expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(1)
        expect(status).to_have_text("connected as olga")
        page.clock.pause_at(page.evaluate("Date.now()") + 1000)  # from now on the page's time moves when we say
        running.close()  # the server stops (closing the page's connection with 1001)

        for attempt in (1, 2, 3):
            expect(status).to_have_text(re.compile(rf"\(attempt {attempt}\)$"))
            expect(status).to_have_attribute("data-state", "reconnecting")
            left, shown = countdown(status.text_content())
            assert shown == attempt and 0 < left <= 0.5 * 2 ** (attempt - 1)  # the client's backoff
            if left >= 0.3:
                page.clock.run_for(200)  # the countdown follows the page's clock
                expect(status).to_have_text(f"connection lost: reconnecting in {left - 0.2:.1f} s (attempt {attempt})")
            page.clock.run_for(int(left * 1000))  # the attempt is made, and refused: no server

        expect(status).to_have_text(re.compile(r"\(attempt 4\)$"))
        with server_in_thread(lambda: running_server(db, specs, port=port)) as second:
            left, _ = countdown(status.text_content())
            page.clock.run_for(int(left * 1000) + 100)
            expect(status).to_have_text("connected again as olga")
            expect(status).to_have_attribute("data-state", "open")
            page.clock.resume()
            send(page, "after the outage")
            expect(page.locator("#conversation .msg.agent[data-seq]")).to_have_count(2)
            expect(page.locator("#conversation .turn .msg.user .text")).to_have_text(["before the outage", "after the outage"])
            assert second.server.port == port
        # (Chromium logs each refused attempt to the console itself)
        refused = re.compile(r"WebSocket connection to '.*' failed: .*ERR_CONNECTION_REFUSED")
        assert not [e for e in page.js_errors if not refused.fullmatch(e)], page.js_errors


def test_a_turn_cut_by_a_lost_connection_says_so_and_is_completed_by_the_backlog(open_page):
    sockets = []
    page = open_page("cut", agent="my_agent", route=injecting_route(sockets))
    conversation = page.locator("#conversation")
    expect(conversation).to_have_attribute("aria-busy", "false")

    def inject(frames):
        for frame in frames:
            sockets[-1].send(json.dumps(frame))

    first, second, third = (turn_frames(kind, seq, f"turn {seq}") for kind, seq in (
        ("live", 100), ("live", 102), ("live", 104)))
    inject(first[:3])  # agent_thinking and the chunks, and then the connection drops
    expect(conversation.locator(".thinking:visible")).to_have_count(1)
    sockets[-1].close(code=1012, reason="restarting")
    expect(conversation.locator(".note")).to_have_text("Connection lost: the rest of this answer comes when it is back.")
    expect(conversation.locator(".thinking:visible")).to_have_count(0)
    expect(page.locator("#status")).to_have_text("connected again as cut")
    inject(turn_frames("backlog", 100, "turn 100"))  # the turn, from the log: it completes the one shown
    expect(conversation.locator(".note:visible")).to_have_count(0)
    assert [(t["user"], t["answer"], t["thinking"], t["marks"]) for t in shown_turns(page)] == [
        ("turn 100", "re: turn 100", False, [])]

    inject(second[:3])  # cut again; this time the server lost the turn: the next turn comes instead
    sockets[-1].close(code=1012, reason="restarting")
    expect(page.locator("#status")).to_have_text("connected again as cut")
    inject(third)
    expect(conversation.locator(".turn")).to_have_count(3)
    assert [(t["user"], t["answer"], t["thinking"], t["marks"]) for t in shown_turns(page)] == [
        ("turn 100", "re: turn 100", False, []), (None, "re: turn 102", False, ["note"]),
        ("turn 104", "re: turn 104", False, [])]
    expect(conversation.locator(".note:visible")).to_have_text("The rest of this answer did not arrive.")
    assert not page.js_errors, page.js_errors


def test_the_pages_own_chat_cut_off_mid_answer_shows_once_after_the_reconnect(open_page):
    """The server finishes the turn; back, the page gets it from the log (`user_message`, `response`), then
    the answer to its chat sent again (same `command_id`): `agent_thinking`, the whole answer, `agent_done`."""
    sockets = []
    page = open_page("kim", agent="streamy", route=injecting_route(sockets))
    expect(page.locator("#conversation")).to_have_attribute("aria-busy", "false")
    record_sent(page)
    send(page, "cut me off")
    answer = last_answer(page)
    expect(answer.locator(".body")).to_contain_text("You said")  # streaming
    sockets[-1].close(code=1012, reason="restarting")
    expect(page.locator("#status")).to_have_text("connected again as kim")
    expect(answer).to_have_attribute("data-seq", re.compile(r"^\d+$"))
    page.wait_for_function("() => window.agentcast._pending.size === 0")  # the chat sent again was answered
    expect(page.locator("#stop")).to_be_disabled()
    assert shown_turns(page) == [{
        "user": "cut me off", "user_first": True, "thinking": False, "marks": [],
        "answer": "You said: cut me off\n(I remember 0 earlier messages of our conversation.)"}]
    chats = [f for f in page.evaluate("window.sentFrames") if f["type"] == "chat"]
    assert len(chats) == 2 and chats[0] == chats[1]  # sent again, the same
    assert not page.js_errors, page.js_errors
