// The agentcast chat page: one user talking to one agent at a time, through agentcast.js.
//
// Every piece of text from users, agents and tools goes into the page as text (textContent,
// text nodes), never as HTML: a message such as `<img src=x onerror=...>` shows as those
// characters. The page is served with a CSP that forbids inline script and style anyway.
//
// What is shown comes from the server's frames: the page subscribes to the agent with
// `after_seq: 0`, so the user's earlier conversation is replayed from the log, then goes live (the
// user's other tabs and devices included). Turns are keyed by `request_id`.
//
// On a server with authentication on, the server answers `unauthenticated` and the page asks for a
// token (the Sign in dialog), sent as `auth`. The token is kept in this page's memory only (it is
// handed to the client and cleared from the form): not in localStorage, not in sessionStorage (any
// script of the origin can read it, and browsers write it to disk to restore sessions), never in
// the URL. A reload asks for it again; tokens are short-lived anyway.

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

// ----- connection state -----

let connection = { state: "connecting" }; // the client's latest "state" event
const auth = {
  needed: false, // the server answered `unauthenticated`: authentication is on
  user: null, // the user id of the latest `authenticated`
  expired: false, // the server said `token_expired`
};

function showStatus() {
  const { state, delay, attempt, code } = connection;
  let shown = state;
  let text = {
    connecting: "connecting…",
    open: `connected as ${userId}`,
    reconnecting: delay === undefined ? "reconnecting…" : `reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})`,
    closed: "disconnected",
  }[state] || state;
  if (state === "open" && auth.user !== null) {
    text = `signed in as ${auth.user}`;
  } else if (state === "open" && auth.needed) {
    [shown, text] = ["signed-out", "not signed in"];
  } else if (state === "closed" && code === 1008) {
    // The client does not reconnect with a token the server refused: it waits for a new one.
    [shown, text] = ["signed-out", auth.expired ? "signed out: the token expired" : "signed out: not signed in in time"];
  }
  ui.status.dataset.state = shown;
  ui.status.textContent = text;
}

client.on("state", (event) => {
  connection = event;
  if (event.state === "closed" && event.code === 1008) {
    auth.user = null;
    askForToken(auth.expired
      ? "Your token expired. Paste a new one to go on: the conversation resumes where it stopped."
      : "The server closed the connection: it needs a token first.", { error: true });
  }
  showStatus();
});

// ----- the conversation -----

const turns = new Map(); // request_id -> turn
let anonymous = null; // the latest turn of frames without request_id (e.g. from the seed's clients)
let live = false; // false between a switch of user or agent and the new subscription's `subscribed`
const mine = new Set(); // request_ids of this page's running turns (Stop cancels the latest)

function scrollToEnd() {
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

function system(text, { error = false } = {}) {
  ui.conversation.append(el("li", { cls: error ? "system error" : "system", text }));
  scrollToEnd();
}

function newTurn(key) {
  const userText = el("span", { cls: "text" });
  const userMsg = el("div", { cls: "msg user", attrs: { hidden: "" } }, el("span", { cls: "who", text: `You (${userId})` }), userText);
  const body = el("span", { cls: "body" });
  const thinking = el("span", { cls: "thinking", attrs: { hidden: "", "aria-label": "thinking" } },
    el("span", { cls: "dot" }), el("span", { cls: "dot" }), el("span", { cls: "dot" }), " thinking");
  const usage = el("span", { cls: "usage", attrs: { hidden: "" } });
  const agentMsg = el("div", { cls: "msg agent", attrs: { hidden: "" } },
    el("span", { cls: "who", text: agentId }), body, thinking, usage);
  const node = el("li", { cls: "turn" }, userMsg, agentMsg);
  if (key) node.dataset.requestId = key;
  ui.conversation.append(node);
  const turn = { node, userMsg, userText, agentMsg, body, thinking, usage, text: null, streamed: "", tools: new Map() };
  if (key) turns.set(key, turn);
  return turn;
}

function turnOf(frame, { startsTurn = false } = {}) {
  const rid = frame.request_id;
  if (typeof rid === "string") return turns.get(rid) || newTurn(rid);
  if (startsTurn || !anonymous) anonymous = newTurn(null);
  return anonymous;
}

function setUserText(turn, text, seq) {
  turn.userText.textContent = text;
  turn.userMsg.hidden = false;
  if (seq !== undefined) turn.userMsg.dataset.seq = seq;
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

function finish(turn, rid) {
  turn.thinking.hidden = true;
  if (rid) mine.delete(rid);
  ui.stop.disabled = mine.size === 0;
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

const render = {
  user_message(frame) {
    setUserText(turnOf(frame, { startsTurn: true }), frame.message, frame.seq);
  },
  agent_thinking(frame) {
    const turn = turnOf(frame);
    showAgent(turn);
    resetAnswer(turn); // a chat resent after a lost connection streams its answer again
    turn.thinking.hidden = false;
  },
  response_chunk(frame) {
    const turn = turnOf(frame);
    showAgent(turn);
    textSegment(turn).appendData(frame.delta);
    turn.streamed += frame.delta;
  },
  tool_call(frame) {
    const turn = turnOf(frame);
    showAgent(turn);
    showTool(turn, frame);
  },
  tool_result(frame) {
    const tool = showTool(turnOf(frame), frame);
    const failed = frame.error !== undefined;
    tool.node.classList.toggle("failed", failed);
    tool.result.textContent = failed ? `error: ${frame.error}` : JSON.stringify(frame.result ?? null, null, 2);
  },
  response(frame) {
    const turn = turnOf(frame);
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
    turn.thinking.hidden = true;
    if (typeof frame.request_id !== "string") anonymous = null;
  },
  cancelled(frame) {
    const turn = turnOf(frame);
    showAgent(turn);
    if (!turn.streamed && frame.partial) textSegment(turn).appendData(frame.partial);
    turn.agentMsg.classList.add("cancelled");
    turn.agentMsg.append(el("span", { cls: "stopped", text: " (stopped)" }));
    finish(turn, frame.request_id);
  },
  agent_done(frame) {
    finish(turnOf(frame), frame.request_id);
  },
  memory_cleared(frame) {
    if (frame.clear_long_term) {
      ui.conversation.replaceChildren();
      turns.clear();
      anonymous = null;
      system(`Memory forgotten: ${frame.forgotten ?? 0} messages erased.`);
    } else {
      system("Short-term memory cleared (long-term search still finds older messages).");
    }
  },
  error(frame) {
    if (typeof frame.request_id === "string" && turns.has(frame.request_id)) {
      const turn = turns.get(frame.request_id);
      showAgent(turn);
      turn.agentMsg.append(el("span", { cls: "msg-error", text: `\n⚠ ${frame.message}` }));
      turn.agentMsg.classList.add("error");
      finish(turn, frame.request_id);
    } else if (!frame.request_id || !frame.request_id.startsWith(`web-${pagePrefix}-`)) {
      // (the page's own calls show their errors where they were made)
      system(`Error: ${frame.message}`, { error: true });
    }
  },
};

client.on("*", (frame) => {
  if (frame.type === "subscribed" && frame.agent_id === agentId) live = true;
  if (!live || !render[frame.type]) return;
  if (frame.agent_id !== undefined && frame.agent_id !== agentId) return; // another agent's
  render[frame.type](frame);
  scrollToEnd();
});

function resetView() {
  live = false;
  ui.conversation.replaceChildren();
  turns.clear();
  mine.clear();
  anonymous = null;
  ui.stop.disabled = true;
  ui.searchResults.replaceChildren();
  ui.searchStatus.textContent = "";
}

/** Show `agentId`'s conversation with this user: the log's backlog, then live. */
function openConversation() {
  resetView();
  if (!agentId) return;
  client.subscribe(agentId, { afterSeq: 0, requestId: nextRequestId() }).catch((err) => system(`Could not open ${agentId}: ${err.message}`, { error: true }));
}

// ----- sending, stopping -----

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.message.value;
  if (!text.trim() || !agentId) return;
  ui.message.value = "";
  const rid = nextRequestId();
  const turn = newTurn(rid);
  setUserText(turn, text);
  mine.add(rid);
  ui.stop.disabled = false;
  client.chat(agentId, text, { requestId: rid }).catch((err) => {
    // Server errors were shown from their frames once live; this is for the client's own (closed,
    // timeout) and the server's before the conversation was open (e.g. `unauthenticated`).
    if (!live || !err.frame || !err.frame.type) render.error({ type: "error", request_id: rid, message: err.message });
    finish(turn, rid);
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
  const mine = typeof frame.request_id === "string" && frame.request_id.startsWith(`web-${pagePrefix}-`);
  if (frame.code === "unauthenticated") {
    auth.needed = true;
    auth.user = null;
    showStatus();
    if (!ui.authDialog.open) askForToken("This server needs you to sign in with a token.");
  } else if (frame.code === "invalid_token" && !mine) {
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

client.connect().then(loadAgents, (err) => system(`Could not connect: ${err.message}`, { error: true }));
ui.message.focus();

// For tests and the curious: the page's client.
window.agentcast = client;
