// agentcast.js: a client for the agentcast WebSocket protocol (docs/protocol.md), as one ES module
// with no dependencies, for browsers and Node (Node 22+, or Node 20 with --experimental-websocket,
// or any WebSocket class passed as the `WebSocket` option, e.g. the `ws` package's).
//
//   import { AgentcastClient } from "/agentcast.js";
//   const client = new AgentcastClient("ws://127.0.0.1:5050/ws", { userId: 123 });
//   await client.connect();
//   await client.subscribe("my_agent");
//   const answer = await client.chat("my_agent", "Hello!", { onChunk: (delta) => out.append(delta) });
//   console.log(answer.message, answer.seq);
//
// What it does for you:
// - reconnects after a lost connection, with exponential backoff and jitter, and then sends `auth`
//   (when it has a token) and `set_user` again and re-subscribes each agent with `after_seq` = the
//   highest `seq` it has seen of that agent, so nothing is missed and nothing is shown twice;
// - answers each call's promise from the frames carrying the call's `request_id`; a `chat` in
//   flight when the connection drops is sent again with the same `command_id`, which the server
//   answers from its log rather than running the turn twice;
// - pings the server every `pingInterval` ms and treats a connection that does not answer within
//   `pingTimeout` ms as lost (a browser cannot see WebSocket-level pings);
// - `connect()` rejects (code `cannot_connect`) when the first attempt fails, unless asked to keep
//   trying (`connect({ retry: true })`);
// - `on(type, callback)` like the seed's clients, for every server frame type, plus "*" (every
//   frame) and "state" (connection state changes: "connecting", "open", "reconnecting" once per
//   attempt scheduled, with its number and delay, "closed").

const DEFAULTS = Object.freeze({
  userId: undefined, // sent as `set_user` on every (re)connect when set
  token: undefined, // a string, or a function returning (a promise of) one: sent as `auth` first
  reconnect: true,
  initialDelay: 500, // ms before the first reconnect attempt (before jitter)
  maxDelay: 30000, // backoff ceiling, ms
  factor: 2,
  maxRetries: Infinity, // consecutive failed attempts before giving up ("closed")
  pingInterval: 20000, // ms between keepalive pings (0: none)
  pingTimeout: 10000, // ms to wait for a ping's answer before the connection counts as lost
  connectTimeout: 10000, // ms from opening the socket to the server's `connected` frame
  WebSocket: undefined, // a WebSocket class; default: globalThis.WebSocket
  random: Math.random, // jitter source (tests may pin it)
});

/** The answer a promise is settled with when the server answers a call with an `error` frame. */
export class AgentcastError extends Error {
  constructor(code, message, frame = {}) {
    super(message || code);
    this.name = "AgentcastError";
    /** The server's stable snake_case code (`unknown_agent`, `brain_error`, ...) or one of the
     * client's own: `cannot_connect`, `connection_lost`, `closed`, `timeout`, `cancelled`. */
    this.code = code;
    /** The whole frame that caused it (for `cancelled`: it has `partial`, the text so far). */
    this.frame = frame;
  }
}

// What answers each command: the frame type that settles its promise.
const ANSWERS = {
  ping: "ping",
  auth: "authenticated",
  set_user: "user_set",
  subscribe: "subscribed",
  unsubscribe: "unsubscribed",
  search_memory: "memory_results",
  clear_memory: "memory_cleared",
  list_agents: "agents",
};
// Commands safe to send again after a lost connection (a `chat` is made safe by its `command_id`;
// `clear_memory` is not: it fails with `connection_lost`, as the client cannot know if it happened).
const RESENDABLE = new Set(["ping", "auth", "set_user", "subscribe", "unsubscribe", "search_memory", "list_agents", "chat"]);
// Frames that reflect an event in the log and carry its `seq`.
const LOGGED = new Set(["user_message", "response", "memory_cleared"]);

/** Delay before reconnect attempt number `attempt` (0-based): "equal jitter" exponential backoff. */
export function backoffDelay(attempt, { initialDelay, maxDelay, factor, random = Math.random }) {
  const ceiling = Math.min(maxDelay, initialDelay * Math.pow(factor, attempt));
  return ceiling / 2 + random() * (ceiling / 2);
}

function defaultUrl() {
  const loc = globalThis.location;
  if (loc && /^https?:$/.test(loc.protocol)) {
    return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
  }
  return "ws://127.0.0.1:5050/ws";
}

function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

export class AgentcastClient {
  /**
   * @param {string} [url] ws:// or wss:// URL of the server's `/ws`; in a page served by agentcast
   *   the default is the page's own server.
   * @param {object} [options] see DEFAULTS above.
   */
  constructor(url, options = {}) {
    if (typeof url === "object" && url !== null) [url, options] = [undefined, url];
    this.url = url || defaultUrl();
    this.options = { ...DEFAULTS, ...options };
    /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
    this.state = "idle";
    /** The server's `client_id` of the current connection. */
    this.clientId = null;
    /** Whether the server has authentication on (its `connected` frame says); undefined until told. */
    this.serverAuth = undefined;
    /** The user sent with `set_user` (and re-sent after every reconnect). */
    this.userId = this.options.userId;
    /** The highest `seq` seen per agent (of this user); re-subscriptions resume after it. */
    this.lastSeq = new Map();
    this._listeners = new Map();
    this._subscriptions = new Map(); // agent_id -> {resume: boolean}
    this._pending = new Map(); // request_id -> call
    this._queue = []; // frames (calls) waiting for the connection to be ready
    this._socket = null;
    this._attempt = 0;
    this._timer = null;
    this._pingTimer = null;
    this._pingWatch = null;
    this._closedByUser = false;
    this._opened = false; // a connection of this round of attempts reached "open" (see `_lost`)
    this._prefix = randomId().slice(0, 8);
    this._counter = 0;
    this._connectWaiters = [];
    this._cancels = new Map(); // request_id of a chat -> the cancel call waiting for its answer
  }

  // ----- events -----

  /** Call `callback(frame)` for every server frame of `type` ("*": every frame; "state": state changes). */
  on(type, callback) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(callback);
    return this;
  }

  off(type, callback) {
    this._listeners.get(type)?.delete(callback);
    return this;
  }

  _emit(type, payload) {
    for (const key of [type, type === "state" ? null : "*"]) {
      if (key === null) continue;
      for (const callback of this._listeners.get(key) || []) {
        try {
          callback(payload);
        } catch (err) {
          console.error(`agentcast: a "${key}" listener failed:`, err);
        }
      }
    }
  }

  _setState(state, detail = {}) {
    // "reconnecting" is told again for every attempt scheduled (its number and delay change).
    if (this.state === state && !(state === "reconnecting" && detail.attempt !== undefined)) return;
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  // ----- connection -----

  /**
   * Open the connection; resolves once the server said `connected` (and `auth`/`set_user` were sent).
   * If that first attempt fails it rejects with code `cannot_connect`, unless `retry` is true: then it
   * keeps trying with the reconnection backoff (state "reconnecting", up to `maxRetries` attempts).
   * Once open, a lost connection is reconnected as the `reconnect` option says.
   */
  connect({ retry = false } = {}) {
    this._closedByUser = false;
    if (this.state === "open") return Promise.resolve(this);
    const ready = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject, retry }));
    if (!this._socket && !this._timer) this._start();
    return ready;
  }

  /** A new round of attempts, from idle or closed. */
  _start() {
    this._attempt = 0;
    this._opened = false;
    this._open();
  }

  /** Close for good: no reconnect; calls still waiting are rejected with code `closed`. */
  close(code = 1000, reason = "") {
    this._closedByUser = true;
    clearTimeout(this._timer);
    this._timer = null;
    clearTimeout(this._connectTimer);
    this._stopPing();
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      this._detach(socket);
      try {
        socket.close(code, reason);
      } catch {
        /* already closing */
      }
    }
    this._failAll("closed", "The client was closed");
    this._setState("closed", { code, reason });
    for (const w of this._connectWaiters.splice(0)) w.reject(new AgentcastError("closed", "The client was closed"));
  }

  _open() {
    const WS = this.options.WebSocket || globalThis.WebSocket;
    if (!WS) {
      throw new Error(
        "agentcast: no WebSocket class: use a browser, Node 22+, `node --experimental-websocket` " +
          "(Node 20), or pass { WebSocket } (e.g. from the ws package)",
      );
    }
    this._setState(this._attempt === 0 && this.state !== "reconnecting" ? "connecting" : "reconnecting");
    let socket;
    try {
      socket = new WS(this.url);
    } catch (err) {
      this._lost(null, { code: 1006, reason: String(err) });
      return;
    }
    this._socket = socket;
    const handlers = {
      message: (event) => this._onMessage(socket, event),
      close: (event) => this._lost(socket, { code: event.code, reason: event.reason }),
      // Browsers follow an error with a close event, Node 20's WebSocket not always: either ends it.
      error: () => this._drop(socket, 1006, "connection failed"),
    };
    socket._agentcastHandlers = handlers;
    for (const [name, fn] of Object.entries(handlers)) socket.addEventListener(name, fn);
    // A handshake can hang (or fail without any event, in Node 20): give up on it after a while.
    this._connectTimer = setTimeout(() => this._drop(socket, 4002, "connect timeout"), this.options.connectTimeout);
  }

  /** Give up on `socket` now (without waiting for a close handshake) and reconnect. */
  _drop(socket, code, reason) {
    if (socket !== this._socket) return;
    this._detach(socket);
    try {
      socket.close(code >= 4000 ? code : 1000, reason);
    } catch {
      /* not open yet, or already closing */
    }
    this._lost(socket, { code, reason });
  }

  _detach(socket) {
    const handlers = socket._agentcastHandlers || {};
    for (const [name, fn] of Object.entries(handlers)) socket.removeEventListener(name, fn);
  }

  async _ready(socket, hello) {
    clearTimeout(this._connectTimer);
    this.clientId = hello.client_id;
    if (typeof hello.auth === "boolean") this.serverAuth = hello.auth;
    // Everything below is pipelined: the server handles a connection's frames in order.
    const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    if (socket !== this._socket) return; // lost meanwhile
    // Calls in flight when the last connection dropped, then calls made while disconnected;
    // `auth` and `set_user` go first, then the subscriptions, then the rest.
    const calls = [...[...this._pending.values()].filter((call) => call.sent), ...this._queue.splice(0)];
    const kinds = new Set(calls.map((call) => call.frame.type));
    const first = calls.filter((call) => call.frame.type === "auth" || call.frame.type === "set_user");
    const rest = calls.filter((call) => !first.includes(call));
    if (token && !kinds.has("auth")) this._sendNow({ type: "auth", token, request_id: this._nextId("auth") });
    for (const call of first.filter((c) => c.frame.type === "auth")) this._sendCall(call);
    if (this.userId !== undefined && this.userId !== null && !kinds.has("set_user")) {
      this._sendNow({ type: "set_user", user_id: this.userId, request_id: this._nextId("user") });
    }
    for (const call of first.filter((c) => c.frame.type === "set_user")) this._sendCall(call);
    const subscribing = new Set(rest.filter((c) => c.frame.type === "subscribe").map((c) => c.frame.agent_id));
    for (const [agentId, sub] of this._subscriptions) {
      if (!subscribing.has(agentId)) this._sendNow(this._subscribeFrame(agentId, sub, this._nextId("sub")));
    }
    for (const call of rest) {
      if (call.frame.type === "subscribe" && this._subscriptions.has(call.frame.agent_id)) {
        // resume from what has been seen by now, under the same request_id
        call.frame = this._subscribeFrame(call.frame.agent_id, this._subscriptions.get(call.frame.agent_id),
          call.frame.request_id);
      }
      this._sendCall(call);
    }
    this._attempt = 0;
    this._opened = true;
    this._setState("open", { clientId: this.clientId });
    this._startPing();
    for (const w of this._connectWaiters.splice(0)) w.resolve(this);
  }

  _lost(socket, { code, reason }) {
    if (socket !== null && socket !== this._socket) return; // an old socket's late event
    if (socket) this._detach(socket);
    this._socket = null;
    clearTimeout(this._connectTimer);
    this._stopPing();
    if (this._closedByUser) return;
    // Calls that cannot be sent again safely fail now; the others wait for the next connection.
    for (const [rid, call] of this._pending) {
      if (call.sent && !RESENDABLE.has(call.frame.type)) {
        this._pending.delete(rid);
        call.reject(new AgentcastError("connection_lost", `The connection was lost before '${call.frame.type}' was answered`));
      }
    }
    // 1008 is the server refusing the connection's authentication (the token expired, or none came
    // within its deadline): the same token would be refused again, so stop, unless a token function
    // can give a fresh one. `auth(newToken)` (or `connect()`) opens the connection again.
    const authRefused = code === 1008 && typeof this.options.token !== "function";
    // Before the first connection of a round opened, only a `connect({ retry: true })` keeps trying.
    const keepTrying = this._opened ? this.options.reconnect : this._connectWaiters.some((w) => w.retry);
    if (!keepTrying || authRefused || this._attempt >= this.options.maxRetries) {
      const [errorCode, message] = this._opened
        ? ["connection_lost", `The connection closed (${code}${reason ? ": " + reason : ""})`]
        : ["cannot_connect", `Cannot connect to ${this.url}: ${reason || `closed with code ${code}`}` +
            (this._attempt ? ` (after ${this._attempt + 1} attempts)` : "")];
      this._failAll(errorCode, message);
      this._setState("closed", { code, reason });
      for (const w of this._connectWaiters.splice(0)) w.reject(new AgentcastError(errorCode, message));
      return;
    }
    const delay = backoffDelay(this._attempt, this.options);
    this._attempt += 1;
    this._setState("reconnecting", { code, reason, delay, attempt: this._attempt });
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
  }

  _failAll(code, message) {
    for (const call of [...this._pending.values(), ...this._queue]) call.reject(new AgentcastError(code, message));
    this._pending.clear();
    this._queue = [];
  }

  _startPing() {
    const { pingInterval, pingTimeout } = this.options;
    if (!pingInterval) return;
    this._pingTimer = setInterval(() => {
      if (this._pingWatch) return; // one at a time
      const socket = this._socket;
      this._pingWatch = setTimeout(() => {
        this._pingWatch = null;
        // No answer: the connection is dead even if the socket does not know yet. Drop it now
        // (a close handshake could wait a long time on a dead network) and reconnect.
        this._drop(socket, 4000, "keepalive timeout");
      }, pingTimeout);
      this.ping().then(
        () => {
          clearTimeout(this._pingWatch);
          this._pingWatch = null;
        },
        () => {},
      );
    }, pingInterval);
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    clearTimeout(this._pingWatch);
    this._pingTimer = null;
    this._pingWatch = null;
  }

  // ----- frames -----

  _onMessage(socket, event) {
    if (socket !== this._socket) return;
    let frame;
    try {
      frame = JSON.parse(typeof event.data === "string" ? event.data : String(event.data));
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    if (frame.type === "connected") {
      this._ready(socket, frame).catch((err) => {
        console.error("agentcast: could not get a token:", err);
        socket.close(4001, "no token");
      });
    }
    if ((frame.type === "user_set" || frame.type === "authenticated") && String(frame.user_id) !== String(this._seqUser)) {
      // Sequence numbers are per user: another user's highest seq says nothing about this one's.
      this._seqUser = frame.user_id;
      this.lastSeq.clear();
    }
    let duplicate = false;
    if (LOGGED.has(frame.type) && typeof frame.seq === "number" && frame.agent_id !== undefined) {
      const last = this.lastSeq.get(frame.agent_id);
      if (last !== undefined && frame.seq <= last) duplicate = true;
      else this.lastSeq.set(frame.agent_id, frame.seq);
    }
    this._settle(frame);
    // A logged event seen before (a resumed subscription may repeat what arrived just before it)
    // is not shown twice. Its call, if any, was settled above all the same.
    if (!duplicate) this._emit(frame.type, frame);
  }

  _settle(frame) {
    const rid = frame.request_id;
    if (typeof rid === "string" && this._cancels.has(rid)) {
      const cancel = this._cancels.get(rid);
      if (frame.type === "cancelled") {
        this._cancels.delete(rid);
        cancel.resolve(frame);
      } else if (frame.type === "error" && ["nothing_to_cancel", "unknown_type"].includes(frame.code)) {
        this._cancels.delete(rid);
        cancel.reject(new AgentcastError(frame.code, frame.message, frame));
        return; // about the cancel, not the chat
      } else if (frame.type === "agent_done") {
        this._cancels.delete(rid);
        cancel.reject(new AgentcastError("nothing_to_cancel", "The turn ended before it was cancelled", frame));
      }
    }
    if (typeof rid !== "string" || !this._pending.has(rid)) return;
    const call = this._pending.get(rid);
    if (call.onFrame) {
      try {
        call.onFrame(frame);
      } catch (err) {
        console.error("agentcast: an onFrame callback failed:", err);
      }
    }
    if (call.frame.type === "chat") {
      if (frame.type === "response_chunk") {
        call.text += frame.delta;
        if (call.onChunk) {
          try {
            call.onChunk(frame.delta, frame);
          } catch (err) {
            console.error("agentcast: an onChunk callback failed:", err);
          }
        }
      } else if (frame.type === "response") {
        call.result = frame;
      } else if (frame.type === "error" || frame.type === "cancelled") {
        // An error ends the call at once (a `brain_error`'s agent_done is then left to listeners).
        call.error = frame.type === "error"
          ? new AgentcastError(frame.code, frame.message, frame)
          : new AgentcastError("cancelled", "The turn was cancelled", frame);
        this._finish(rid, call);
      } else if (frame.type === "agent_done") {
        this._finish(rid, call);
      }
      return;
    }
    if (frame.type === "error") {
      call.error = new AgentcastError(frame.code, frame.message, frame);
      this._finish(rid, call);
    } else if (frame.type === ANSWERS[call.frame.type]) {
      call.result = frame;
      this._finish(rid, call);
    }
  }

  _finish(rid, call) {
    this._pending.delete(rid);
    clearTimeout(call.timer);
    if (call.error) call.reject(call.error);
    else if (call.result) call.resolve(call.result);
    else if (call.frame.type === "chat") call.resolve({ type: "response", agent_id: call.frame.agent_id, message: call.text });
  }

  _nextId(kind) {
    this._counter += 1;
    return `${kind}-${this._prefix}-${this._counter}`;
  }

  _sendCall(call) {
    call.sent = true;
    this._sendNow(call.frame);
  }

  _sendNow(frame) {
    this._socket.send(JSON.stringify(frame));
  }

  /**
   * Send `frame` and resolve with the frame that answers it (see ANSWERS; a chat: its `response`).
   * Sent now when connected, else when the connection is (re)established.
   * options: requestId, timeout (ms), onFrame(frame) for every frame carrying the call's request_id.
   */
  request(frame, { requestId, timeout, onFrame, onChunk } = {}) {
    const rid = requestId || frame.request_id || this._nextId(frame.type);
    frame = { ...frame, request_id: rid };
    return new Promise((resolve, reject) => {
      if (this._closedByUser) {
        reject(new AgentcastError("closed", "The client is closed"));
        return;
      }
      const call = { frame, resolve, reject, onFrame, onChunk, text: "", sent: false, result: null, error: null };
      this._pending.set(rid, call);
      if (timeout) {
        call.timer = setTimeout(() => {
          this._pending.delete(rid);
          this._queue = this._queue.filter((c) => c !== call);
          reject(new AgentcastError("timeout", `No answer to '${frame.type}' within ${timeout} ms`));
        }, timeout);
      }
      if (this.state === "open" && this._socket) {
        this._sendCall(call);
      } else {
        this._queue.push(call);
        // idle, or gave up earlier: a new call is a reason to try again (once, as `connect()` does)
        if (!this._socket && !this._timer) this._start();
      }
    });
  }

  /** Send a frame without waiting for anything (dropped, returning false, when not connected). */
  send(frame) {
    if (this.state !== "open" || !this._socket) return false;
    this._sendNow(frame);
    return true;
  }

  // ----- commands -----

  ping(options) {
    return this.request({ type: "ping" }, options);
  }

  /**
   * Authenticate with a token. Resolves with `authenticated`; the token is then kept (in memory) and
   * sent again after reconnects. A refused token (`invalid_token`, `forbidden`) is not kept.
   */
  async auth(token, options) {
    const answer = await this.request({ type: "auth", token }, options);
    this.options.token = token;
    return answer;
  }

  /** Switch the connection's user (kept and re-sent after reconnects). Resolves with `user_set`. */
  setUser(userId, options) {
    this.userId = userId;
    return this.request({ type: "set_user", user_id: userId }, options);
  }

  _subscribeFrame(agentId, sub, requestId) {
    const frame = { type: "subscribe", agent_id: agentId, request_id: requestId };
    const seen = this.lastSeq.get(agentId);
    if (seen !== undefined) frame.after_seq = seen;
    else if (sub.afterSeq !== undefined) frame.after_seq = sub.afterSeq;
    return frame;
  }

  /**
   * Subscribe to an agent's turns of this user (from other tabs and devices too). With `afterSeq`
   * (0: everything), the user's logged events after it are replayed first (`user_message`,
   * `response`, `memory_cleared`). Re-subscribed after every reconnect, resuming after the
   * highest `seq` seen. Resolves with `subscribed`.
   */
  subscribe(agentId, { afterSeq, ...options } = {}) {
    const sub = { afterSeq };
    this._subscriptions.set(agentId, sub);
    if (afterSeq !== undefined) this.lastSeq.delete(agentId);
    const frame = this._subscribeFrame(agentId, sub, undefined);
    delete frame.request_id;
    return this.request(frame, options);
  }

  unsubscribe(agentId, options) {
    this._subscriptions.delete(agentId);
    return this.request({ type: "unsubscribe", agent_id: agentId }, options);
  }

  /**
   * One chat turn. Resolves with the `response` frame (`message`: the whole answer, `seq`) once
   * the turn is committed; `onChunk(delta, frame)` gets the answer as it streams; `onFrame(frame)`
   * every frame of the turn (`agent_thinking`, `tool_call`, `tool_result`, ...). Rejects with an
   * AgentcastError (`code` from the server, e.g. `brain_error`, or `cancelled`). A `commandId`
   * (one is made if absent) makes the automatic resend after a lost connection safe.
   */
  chat(agentId, message, { onChunk, onFrame, requestId, commandId, timeout } = {}) {
    const frame = { type: "chat", agent_id: agentId, message, command_id: commandId || randomId() };
    return this.request(frame, { requestId, onChunk, onFrame, timeout });
  }

  /**
   * Ask the agent to stop this user's running turn on `agentId` (with `requestId`: only if the
   * running turn is that chat). The chat's promise then rejects with code `cancelled` (its
   * `error.frame.partial` is the answer so far). With `requestId`, resolves with the `cancelled`
   * frame or rejects with `nothing_to_cancel` (`unknown_type` on servers without cancel); without,
   * resolves once sent.
   */
  cancel(agentId, { requestId } = {}) {
    const frame = { type: "cancel", agent_id: agentId };
    if (!requestId) return Promise.resolve(this.send(frame));
    frame.request_id = requestId;
    return new Promise((resolve, reject) => {
      // The answers carry the chat's request_id: they are told apart from the chat's own frames.
      this._cancels.set(requestId, { resolve, reject });
      if (!this.send(frame)) {
        this._cancels.delete(requestId);
        reject(new AgentcastError("connection_lost", "Not connected"));
      }
    });
  }

  /** Resolves with the results (best first): [{role, content, timestamp, score, source}]. `legs`: the legs of the
   * search to run, ["lexical"] and/or ["semantic"] (default: every leg the agent has). */
  async searchMemory(agentId, query, { limit = 5, useLongTerm = true, legs, ...options } = {}) {
    const frame = { type: "search_memory", agent_id: agentId, query, limit, use_long_term: useLongTerm };
    if (legs !== undefined) frame.legs = legs;
    return (await this.request(frame, options)).results;
  }

  /** Resolves with the `memory_cleared` frame (`forgotten`, `seq`). */
  clearMemory(agentId, { clearLongTerm = false, ...options } = {}) {
    return this.request({ type: "clear_memory", agent_id: agentId, clear_long_term: clearLongTerm }, options);
  }

  /** Resolves with [{agent_id, description}]; rejects with code `unknown_type` on servers without it. */
  async listAgents(options) {
    return (await this.request({ type: "list_agents" }, options)).agents;
  }
}

export default AgentcastClient;
