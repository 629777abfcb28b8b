"""The chat page (transport/static/) in a real headless Chromium driven by Playwright, against a real
server on a loopback port in a thread. Imports support, actors and transport.server; no transport internals."""
from __future__ import annotations

import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

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
    alice.screenshot(path="/tmp/web-shot.png")
    assert not alice.js_errors and not bob.js_errors, alice.js_errors + bob.js_errors
