// The agentcast chat page: one user talking to one agent at a time, through agentcast.js.
//
// Every piece of text from users, agents and tools goes into the page as text (textContent,
// text nodes), never as HTML: a message such as `<img src=x onerror=...>` shows as those
// characters. The page is served with a CSP that forbids inline script and style anyway.
//
// What is shown comes from the server's frames: the page subscribes to the agent with
// `after_seq: 0`, so the user's earlier conversation is replayed from the log, then goes live (the
// user's other tabs and devices included). Each turn is shown once, the user's words above the
// answer, whatever the order of its frames (see "the conversation" below).
//
// The status at the top says what the connection is doing: connected (as whom), and during an
// outage each attempt to reconnect with its countdown, until it says the connection is back.
//
// On a server with authentication on (its `connected` frame says `auth: true`; an older server's
// `unauthenticated` answers say so too) the page offers Sign in and asks for a token, sent as `auth`.
// The token is kept in this page's memory only (it is handed to the client and cleared from the
// form): not in localStorage, not in sessionStorage (any script of the origin can read it, and
// browsers write it to disk to restore sessions), never in the URL. A reload asks for it again;
// tokens are short-lived anyway. Without authentication there is nothing to sign in to, and the page
// does not offer it.

import { AgentcastClient } from "/agentcast.js";

const $ = (id) => document.getElementById(id);
const ui = {
  userForm: $("user-form"),
  userId: $("user-id"),
  agent: $("agent"),
  agentText: $("agent-text"),
  agentDescription: $("agent-description"),
  status: $("status"),
  conversation: $("conversation"),
  composer: $("composer"),
  message: $("message"),
  send: $("send"),
  stop: $("stop"),
  searchForm: $("search-form"),
  searchQuery: $("search-query"),
  longTerm: $("long-term"),
  searchResults: $("search-results"),
  searchStatus: $("search-status"),
  clearShort: $("clear-short"),
  clearAll: $("clear-all"),
  signIn: $("sign-in"),
  authDialog: $("auth-dialog"),
  authForm: $("auth-form"),
  authMessage: $("auth-message"),
  token: $("token"),
  authSubmit: $("auth-submit"),
  authCancel: $("auth-cancel"),
};

/** An element with text (never parsed as HTML) and children. */
function el(tag, { cls, text, attrs } = {}, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) if (child) node.append(child);
  return node;
}

function store(key, value) {
  try {
    if (value === undefined) return localStorage.getItem(`agentcast.${key}`);
    localStorage.setItem(`agentcast.${key}`, value);
  } catch {
    /* storage disabled: nothing is remembered across reloads */
  }
  return null;
}

const params = new URLSearchParams(location.search);
let userId = params.get("user") || store("user") || `guest-${Math.random().toString(36).slice(2, 8)}`;
let agentId = params.get("agent") || store("agent") || "";
store("user", userId);
ui.userId.value = userId;

const client = new AgentcastClient({ userId });
const pagePrefix = Math.random().toString(36).slice(2, 8);
let counter = 0;
const nextRequestId = () => `web-${pagePrefix}-${++counter}`;
const isPageRequest = (rid) => typeof rid === "string" && rid.startsWith(`web-${pagePrefix}-`);

// ----- connection state -----

let connection = { state: "connecting" }; // the client's latest "state" event
const link = {
  everOpen: false, // a connection has been open (then a lost one is "reconnecting", else "cannot reach")
  again: false, // the connection is open again after an outage (until the user is switched)
  retryAt: null, // Date.now() of the next attempt to connect, while one is scheduled
  tick: null, // the timer that updates the countdown
};
const auth = {
  needed: false, // the server has authentication on (its `connected` frame, or an `unauthenticated` answer)
  user: null, // the user id of the latest `authenticated`
  expired: false, // the server said `token_expired`
};

/** "0.4" for 351 ms: the countdown in tenths of a second, rounded up (it reaches 0 when the attempt starts). */
const tenths = (ms) => (Math.ceil(ms / 100) / 10).toFixed(1);

function showStatus() {
  clearTimeout(link.tick);
  link.tick = null;
  const { state, attempt, code } = connection;
  let shown = state;
  let text;
  if (state === "open") {
    const again = link.again ? " again" : "";
    if (auth.user !== null) text = `signed in${again} as ${auth.user}`;
    else if (auth.needed) [shown, text] = ["signed-out", "not signed in"];
    else text = `connected${again} as ${userId}`;
  } else if (state === "reconnecting" && link.retryAt !== null) {
    const what = link.everOpen ? "connection lost: reconnecting" : "cannot reach the server: trying again";
    const left = link.retryAt - Date.now();
    if (left > 0) {
      text = `${what} in ${tenths(left)} s (attempt ${attempt})`;
      // again when the tenth shown changes
      link.tick = setTimeout(showStatus, left - (Math.ceil(left / 100) - 1) * 100);
    } else {
      text = `${what} now (attempt ${attempt})`;
    }
  } else if (state === "closed" && code === 1008) {
    // The client does not reconnect with a token the server refused: it waits for a new one.
    [shown, text] = ["signed-out", auth.expired ? "signed out: the token expired" : "signed out: not signed in in time"];
  } else {
    text = { connecting: "connecting…", reconnecting: "reconnecting…", closed: "disconnected" }[state] || state;
  }
  ui.status.dataset.state = shown;
  ui.status.textContent = text;
  ui.status.title = connection.reason ? `last close: ${connection.code} ${connection.reason}` : "";
  ui.signIn.hidden = !auth.needed;
}

client.on("state", (event) => {
  const was = connection.state;
  connection = event;
  link.retryAt = event.state === "reconnecting" && typeof event.delay === "number" ? Date.now() + event.delay : null;
  if (event.state === "open") {
    link.again = link.everOpen;
    link.everOpen = true;
  } else if (was === "open") {
    connectionLost(event.state === "closed");
  } else if (event.state === "closed") {
    connectionLost(true);
  }
  if (event.state === "closed" && event.code === 1008) {
    auth.user = null;
    askForToken(auth.expired
      ? "Your token expired. Paste a new one to go on: the conversation resumes where it stopped."
      : "The server closed the connection: it needs a token first.", { error: true });
  }
  showStatus();
});

client.on("connected", (frame) => {
  if (typeof frame.auth !== "boolean") return; // a server that does not say: its answers will
  auth.needed = frame.auth;
  if (!frame.auth) {
    auth.user = null;
    if (ui.authDialog.open) ui.authDialog.close();
  }
  showStatus();
});

// ----- the conversation -----
//
// A turn is one chat: the user's words above the agent's answer, shown once. Its frames come in
// several orders (docs/protocol.md). Live: `agent_thinking`, the chunks and tool frames, then (this
// page's subscription being a resumed one) `user_message` once the turn is committed — before the
// first tool call, or right before the end —, then `response`, `cancelled` or `error`, and
// `agent_done`. From the log (the backlog of the subscription): `user_message`, the tool frames and
// `response`, without `agent_thinking` nor, for an answered turn, `agent_done`. A chat sent again
// after a lost connection (the same `command_id`) is answered from the log: `agent_thinking`, the
// whole answer as one chunk, its `response` again (which the client passes on once: it has that
// `seq`) and `agent_done`, with no `user_message`. Clients choose whether to send a `request_id`
// (the seed's send none) and may use the same one twice.
//
// The server runs the turns of one agent and user one at a time, in order, so their frames never
// interleave. Hence: this page's own chats are found by their request_id (unique to this page);
// any other frame belongs to the turn in progress (`current`) when it can (`continues`), else it
// starts a new turn; and a turn that starts while another has not ended means that one's end was
// lost (a server that crashed mid-turn): it says so instead of thinking forever.

const own = new Map(); // request_id -> this page's chats
let current = null; // the turn whose frames are arriving (or arrived last)
let live = false; // false between a switch of user or agent and the new subscription's `subscribed`
const mine = new Set(); // request_ids of this page's running turns (Stop cancels the latest)

function scrollToEnd() {
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

function system(text, { error = false } = {}) {
  ui.conversation.append(el("li", { cls: error ? "system error" : "system", text }));
  scrollToEnd();
}

function newTurn(rid, { ours = false } = {}) {
  const userText = el("span", { cls: "text" });
  const userMsg = el("div", { cls: "msg user", attrs: { hidden: "" } }, el("span", { cls: "who", text: `You (${userId})` }), userText);
  const body = el("span", { cls: "body" });
  const thinking = el("span", { cls: "thinking", attrs: { hidden: "", "aria-label": "thinking" } },
    el("span", { cls: "dot" }), el("span", { cls: "dot" }), el("span", { cls: "dot" }), " thinking");
  const note = el("span", { cls: "note", attrs: { hidden: "" } });
  const usage = el("span", { cls: "usage", attrs: { hidden: "" } });
  const agentMsg = el("div", { cls: "msg agent", attrs: { hidden: "" } },
    el("span", { cls: "who", text: agentId }), body, thinking, note, usage);
  const node = el("li", { cls: "turn" }, userMsg, agentMsg);
  if (rid !== null) node.dataset.requestId = rid;
  const turn = {
    node, userMsg, userText, agentMsg, body, thinking, note, usage,
    rid, // its request_id, or null
    ours, // sent by this page
    text: null, // the text node answer deltas go to
    streamed: "", // the answer's text so far
    tools: new Map(), // call_id -> its tool call
    userSeq: undefined, // the seq of its `user_message`
    started: false, // a frame of the turn came
    ended: null, // "answered", "failed" or "cancelled"
    closed: false, // it ended (or its answer did): more frames with its request_id are a chat sent again
    repeat: false, // an answered chat sent again: its frames repeat what is shown
  };
  // A turn of another connection goes before this page's chats still waiting for their turn: the
  // server runs those after it.
  const waiting = ours ? undefined : [...own.values()].find((t) => !t.started && !t.closed);
  ui.conversation.insertBefore(node, waiting ? waiting.node : null);
  return turn;
}

/** Whether `frame`, with the same request_id as `turn` (or both none), goes on with `turn`. */
function continues(turn, frame) {
  switch (frame.type) {
    case "agent_thinking":
      return turn.rid !== null; // the same chat sent again; without ids, a turn starts with it
    case "user_message":
      return turn.userSeq === undefined && !turn.closed;
    case "agent_done":
      return true;
    default:
      return !turn.closed || turn.rid !== null;
  }
}

/** The turn `frame` belongs to (one of this page's chats, or the turn in progress); null if none. */
function findTurn(frame) {
  const rid = typeof frame.request_id === "string" ? frame.request_id : null;
  if (rid !== null && own.has(rid)) return own.get(rid);
  if (current && current.rid === rid && continues(current, frame)) return current;
  return null;
}

/** The turn `frame` belongs to, made if it starts one; it becomes the turn in progress. */
function turnFor(frame) {
  let turn = findTurn(frame);
  if (!turn) {
    if (frame.type === "agent_done") return null; // the end of a turn that is not shown
    turn = newTurn(typeof frame.request_id === "string" ? frame.request_id : null);
  }
  if (turn !== current) {
    if (current && current.started && !current.closed) cutOff(current, "The rest of this answer did not arrive.");
    if (current) current.repeat = false;
    current = turn;
  }
  turn.started = true;
  turn.note.hidden = true; // news of the turn: whatever the note said is over
  return turn;
}

function setUserText(turn, text, seq) {
  turn.userText.textContent = text;
  turn.userMsg.hidden = false;
  if (seq !== undefined) {
    turn.userMsg.dataset.seq = seq;
    turn.userSeq = seq;
  }
}

/** The text segment answer deltas go to (a new one after each tool call). */
function textSegment(turn) {
  if (!turn.text) {
    turn.text = document.createTextNode("");
    turn.body.append(turn.text);
  }
  return turn.text;
}

function showAgent(turn) {
  turn.agentMsg.hidden = false;
}

function resetAnswer(turn) {
  turn.body.replaceChildren();
  turn.text = null;
  turn.streamed = "";
  turn.tools.clear();
}

/** The same chat runs again (sent again after a lost connection, its last run failed): a fresh answer. */
function reopen(turn) {
  resetAnswer(turn);
  turn.agentMsg.classList.remove("cancelled", "error");
  for (const mark of turn.agentMsg.querySelectorAll(".stopped, .msg-error")) mark.remove();
  turn.usage.hidden = true;
  turn.ended = null;
  turn.closed = false;
}

/** The turn is over, or waits no more on this connection: no more thinking; Stop is for the running ones. */
function finish(turn) {
  turn.thinking.hidden = true;
  if (turn.ours) mine.delete(turn.rid);
  ui.stop.disabled = mine.size === 0;
}

function end(turn, how) {
  turn.ended = how;
  turn.closed = true;
  finish(turn);
}

/** Say on `turn` why it will not go on (it stays open: frames that still come complete it). */
function cutOff(turn, why) {
  turn.thinking.hidden = true;
  turn.note.textContent = why;
  turn.note.hidden = false;
  showAgent(turn);
}

/** The connection dropped (`forGood`: and will not come back by itself): the turn under way says so. */
function connectionLost(forGood) {
  if (!current || !current.started || current.closed) return;
  cutOff(current, forGood ? "Disconnected before the end of this answer."
    : "Connection lost: the rest of this answer comes when it is back.");
}

function showTool(turn, frame) {
  let tool = turn.tools.get(frame.call_id);
  if (!tool) {
    const args = typeof frame.arguments === "string" ? frame.arguments : JSON.stringify(frame.arguments ?? {}, null, 2);
    tool = {
      node: el("details", { cls: "tool" }, el("summary", { text: `🔧 ${frame.tool}` }), el("pre", { cls: "args", text: args })),
      result: el("pre", { cls: "result", text: "running…" }),
    };
    tool.node.append(tool.result);
    tool.node.dataset.callId = frame.call_id;
    turn.tools.set(frame.call_id, tool);
    turn.body.append(tool.node);
    turn.text = null; // the answer goes on after the tool call
  }
  return tool;
}

function showError(turn, message) {
  showAgent(turn);
  turn.agentMsg.append(el("span", { cls: "msg-error", text: `\n⚠ ${message}` }));
  turn.agentMsg.classList.add("error");
}

// Errors that end a chat turn as it runs (`agent_done` follows); `internal_error` may stand for one
// frame of a turn that goes on. Answers to a `cancel` carry the chat's request_id but are about the cancel.
const TURN_FAILURES = new Set(["brain_error", "agent_error"]);
const CANCEL_ANSWERS = new Set(["nothing_to_cancel", "unknown_type"]);

const render = {
  user_message(frame, turn) {
    setUserText(turn, frame.message, frame.seq);
  },
  agent_thinking(frame, turn) {
    if (turn.ended === "answered") {
      turn.repeat = true; // answered again from the log: the answer shown stays
      return;
    }
    if (turn.ended || turn.streamed || turn.tools.size) reopen(turn);
    showAgent(turn);
    turn.thinking.hidden = false;
  },
  response_chunk(frame, turn) {
    if (turn.repeat) return;
    showAgent(turn);
    textSegment(turn).appendData(frame.delta);
    turn.streamed += frame.delta;
  },
  tool_call(frame, turn) {
    if (turn.repeat) return;
    showAgent(turn);
    showTool(turn, frame);
  },
  tool_result(frame, turn) {
    if (turn.repeat) return;
    showAgent(turn);
    const tool = showTool(turn, frame);
    const failed = frame.error !== undefined;
    tool.node.classList.toggle("failed", failed);
    tool.result.textContent = failed ? `error: ${frame.error}` : JSON.stringify(frame.result ?? null, null, 2);
  },
  response(frame, turn) {
    showAgent(turn);
    // The deltas add up to the message; a replayed answer (no chunks) is set whole.
    if (turn.streamed !== frame.message && turn.tools.size === 0) {
      resetAnswer(turn);
      textSegment(turn).appendData(frame.message);
      turn.streamed = frame.message;
    }
    turn.agentMsg.dataset.seq = frame.seq;
    if (frame.usage) {
      turn.usage.textContent = `${frame.usage.prompt_tokens} + ${frame.usage.completion_tokens} tokens`;
      turn.usage.hidden = false;
    }
    end(turn, "answered"); // a replayed answer has no `agent_done`
  },
  cancelled(frame, turn) {
    showAgent(turn);
    if (!turn.streamed && frame.partial) {
      textSegment(turn).appendData(frame.partial);
      turn.streamed = frame.partial;
    }
    turn.agentMsg.classList.add("cancelled");
    if (!turn.agentMsg.querySelector(".stopped")) turn.agentMsg.append(el("span", { cls: "stopped", text: " (stopped)" }));
    end(turn, "cancelled");
  },
  agent_done(frame, turn) {
    turn.repeat = false;
    if (!turn.ours && turn.userSeq === undefined && (turn.ended === null || turn.ended === "cancelled")) {
      // Another connection's chat that ended with neither the user's message nor a new answer: one
      // sent again after a lost connection and answered from the log. Its turn is shown already.
      turn.node.remove();
      if (current === turn) current = null;
      return;
    }
    turn.closed = true;
    finish(turn);
  },
  memory_cleared(frame) {
    if (frame.clear_long_term) {
      ui.conversation.replaceChildren();
      own.clear();
      current = null;
      system(`Memory forgotten: ${frame.forgotten ?? 0} messages erased.`);
    } else {
      system("Short-term memory cleared (long-term search still finds older messages).");
    }
  },
  error(frame) {
    const rid = frame.request_id;
    if (CANCEL_ANSWERS.has(frame.code) && typeof rid === "string" && own.has(rid)) return; // see Stop
    let turn = null;
    if (TURN_FAILURES.has(frame.code) || frame.code === "internal_error") {
      turn = findTurn(frame) && turnFor(frame);
    } else if (typeof rid === "string" && own.has(rid)) {
      turn = own.get(rid); // this page's chat, refused (busy, too_long, ...): the server never ran it
    }
    if (!turn) {
      if (!isPageRequest(rid)) system(`Error: ${frame.message}`, { error: true }); // (the page's own calls show theirs)
      return;
    }
    showError(turn, frame.message);
    if (frame.code !== "internal_error") end(turn, "failed");
  },
};

const TURN_FRAMES = new Set(["user_message", "agent_thinking", "response_chunk", "tool_call", "tool_result",
  "response", "cancelled", "agent_done"]);

client.on("*", (frame) => {
  if (frame.type === "subscribed" && frame.agent_id === agentId) {
    live = true;
    ui.conversation.setAttribute("aria-busy", "false");
  }
  if (!live || !render[frame.type]) return;
  if (frame.agent_id !== undefined && frame.agent_id !== agentId) return; // another agent's
  if (TURN_FRAMES.has(frame.type)) {
    const turn = turnFor(frame);
    if (turn) render[frame.type](frame, turn);
  } else {
    render[frame.type](frame);
  }
  scrollToEnd();
});

function resetView() {
  live = false;
  ui.conversation.setAttribute("aria-busy", "true");
  ui.conversation.replaceChildren();
  own.clear();
  current = null;
  mine.clear();
  ui.stop.disabled = true;
  ui.searchResults.replaceChildren();
  ui.searchStatus.textContent = "";
}

/** Show `agentId`'s conversation with this user: the log's backlog, then live. */
function openConversation() {
  resetView();
  if (!agentId) {
    ui.conversation.setAttribute("aria-busy", "false"); // nothing to load
    return;
  }
  client.subscribe(agentId, { afterSeq: 0, requestId: nextRequestId() }).catch((err) => system(`Could not open ${agentId}: ${err.message}`, { error: true }));
}

// ----- sending, stopping -----

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.message.value;
  if (!text.trim() || !agentId) return;
  ui.message.value = "";
  const rid = nextRequestId();
  const turn = newTurn(rid, { ours: true });
  own.set(rid, turn);
  setUserText(turn, text);
  mine.add(rid);
  ui.stop.disabled = false;
  client.chat(agentId, text, { requestId: rid }).catch((err) => {
    // Server errors were shown from their frames once live; this is for the client's own (closed,
    // timeout) and the server's before the conversation was open (e.g. `unauthenticated`).
    if (!live || !err.frame || !err.frame.type) {
      if (!turn.closed) {
        showError(turn, err.message);
        end(turn, "failed");
      }
    }
    finish(turn);
  });
  scrollToEnd();
});

ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => {
  const rid = [...mine].pop();
  if (!rid) return;
  client.cancel(agentId, { requestId: rid }).catch((err) => {
    if (err.code === "unknown_type") system("This server cannot stop a running answer.", { error: true });
  });
});

// ----- user and agent -----

ui.userForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const next = ui.userId.value.trim();
  if (!next || next === String(userId)) return;
  const previous = userId;
  try {
    await client.setUser(next, { requestId: nextRequestId() });
  } catch (err) {
    // E.g. `forbidden`: a signed-in connection may only be the token's user. Nothing changed.
    client.userId = previous; // what the client sends again after a reconnect
    ui.userId.value = String(previous);
    const hint = err.code === "forbidden" ? " (to be someone else, reload the page and sign in with their token)" : "";
    system(`Could not switch to ${next}: ${err.message}${hint}`, { error: true });
    return;
  }
  userId = next;
  store("user", userId);
  link.again = false;
  openConversation(); // resubscribes from the start of the new user's log
  showStatus();
});

// ----- signing in -----

function askForToken(message, { error = false } = {}) {
  ui.authMessage.textContent = message;
  ui.authMessage.classList.toggle("error", error);
  if (!ui.authDialog.open) ui.authDialog.showModal();
  ui.token.focus();
}

ui.signIn.addEventListener("click", () => askForToken(auth.user === null ? ""
  : `Signed in as ${auth.user}. A new token for the same user extends the session.`));
ui.authCancel.addEventListener("click", () => ui.authDialog.close());

ui.authForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = ui.token.value.trim();
  ui.token.value = ""; // not left in the page: the client keeps it, in memory
  if (!token) return;
  ui.authSubmit.disabled = true;
  ui.authMessage.classList.remove("error");
  ui.authMessage.textContent = "signing in…";
  try {
    await client.auth(token, { requestId: nextRequestId() }); // the `authenticated` listener does the rest
    ui.authDialog.close();
  } catch (err) {
    const message = {
      auth_disabled: "This server has authentication off: no token is needed (choose a user instead).",
      forbidden: `${err.message}. To sign in as another user, reload the page.`,
    }[err.code] || `Not signed in: ${err.message}`;
    askForToken(message, { error: err.code !== "auth_disabled" });
  } finally {
    ui.authSubmit.disabled = false;
  }
});

client.on("authenticated", (frame) => {
  auth.needed = true;
  auth.user = frame.user_id;
  auth.expired = false;
  client.userId = frame.user_id; // set_user after a reconnect names the token's user
  if (String(userId) !== String(frame.user_id)) {
    userId = frame.user_id;
    ui.userId.value = String(userId);
    store("user", String(userId));
    if (agents === "loaded") openConversation();
  }
  if (agents === "none") loadAgents();
  showStatus();
});

client.on("error", (frame) => {
  if (frame.code === "unauthenticated") {
    auth.needed = true;
    auth.user = null;
    showStatus();
    if (!ui.authDialog.open) askForToken("This server needs you to sign in with a token.");
  } else if (frame.code === "invalid_token" && !isPageRequest(frame.request_id)) {
    // the client's own `auth` after a reconnect: the token it kept is no longer accepted
    auth.user = null;
    showStatus();
    askForToken(`Your token was refused when reconnecting: ${frame.message}`, { error: true });
  } else if (frame.code === "token_expired") {
    auth.expired = true; // the server closes the connection (1008) right after: see the "state" listener
  }
});

let opened = null; // the agent whose conversation is shown
function chooseAgent(next) {
  if (next === opened) return;
  if (opened) client.unsubscribe(opened).catch(() => {});
  opened = next;
  agentId = next;
  store("agent", agentId);
  openConversation();
}

let descriptions = new Map();
function describe() {
  ui.agentDescription.textContent = descriptions.get(agentId) || "";
}

ui.agent.addEventListener("change", () => {
  chooseAgent(ui.agent.value);
  describe();
});
ui.agentText.addEventListener("change", () => {
  const next = ui.agentText.value.trim();
  if (next) chooseAgent(next);
});

let agents = "none"; // "loading", "loaded"
async function loadAgents() {
  if (agents !== "none") return;
  agents = "loading";
  let list;
  try {
    list = await client.listAgents({ requestId: nextRequestId() });
  } catch (err) {
    agents = "none";
    if (err.code === "unauthenticated") {
      if (auth.user !== null) loadAgents(); // signed in meanwhile
      return; // else once signed in
    }
    agents = "loaded";
    // A server without `list_agents` (or any failure): type the agent id instead.
    ui.agent.hidden = true;
    ui.agentText.hidden = false;
    ui.agentText.value = agentId || "my_agent";
    chooseAgent(ui.agentText.value);
    if (err.code !== "unknown_type") system(`Could not list the agents: ${err.message}`, { error: true });
    return;
  }
  agents = "loaded";
  descriptions = new Map(list.map((a) => [a.agent_id, a.description || ""]));
  ui.agent.replaceChildren(...list.map((a) => el("option", { text: a.agent_id, attrs: { value: a.agent_id } })));
  ui.agent.disabled = false;
  const pick = descriptions.has(agentId) ? agentId : list[0]?.agent_id || "";
  ui.agent.value = pick;
  chooseAgent(pick);
  describe();
}

// ----- memory -----

ui.searchForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = ui.searchQuery.value;
  if (!query.trim() || !agentId) return;
  ui.searchStatus.textContent = "searching…";
  try {
    const results = await client.searchMemory(agentId, query, { limit: 10, useLongTerm: ui.longTerm.checked, requestId: nextRequestId() });
    ui.searchResults.replaceChildren(...results.map((r) => el("li", { attrs: { "data-source": r.source } },
      el("span", { cls: "meta", text: `${r.role} · ${r.source.replace("_", "-")} · ${r.timestamp}` }),
      document.createTextNode(r.content))));
    ui.searchStatus.textContent = results.length ? `${results.length} found` : "nothing found";
  } catch (err) {
    ui.searchStatus.textContent = `Search failed: ${err.message}`;
  }
});

async function clear(clearLongTerm) {
  if (!agentId) return;
  try {
    await client.clearMemory(agentId, { clearLongTerm, requestId: nextRequestId() });
    ui.searchResults.replaceChildren();
    ui.searchStatus.textContent = "";
  } catch (err) {
    system(`Could not clear memory: ${err.message}`, { error: true });
  }
}
ui.clearShort.addEventListener("click", () => clear(false));
ui.clearAll.addEventListener("click", () => {
  if (confirm(`Erase everything ${agentId} remembers of ${userId}? This cannot be undone.`)) clear(true);
});

// ----- start -----

// The status shows each attempt while the server cannot be reached; it rejects only if the client is
// closed for good (e.g. the server refused the page's authentication).
client.connect({ retry: true }).then(loadAgents, (err) => system(`Could not connect: ${err.message}`, { error: true }));
ui.message.focus();

// For tests and the curious: the page's client.
window.agentcast = client;
