// A browser client of the fanout.v1 WebSocket protocol (PROTOCOL.md): many topics on
// one connection, subscribe and unsubscribe at any time, reconnect with backoff, and
// every topic resumed after a reconnect with nothing missed and nothing twice.
//
//   import { FanoutClient } from "./fanout.js";
//   const client = new FanoutClient("/events", {
//     onEvent: ({ topic, id, type, data }) => console.log(topic, data),
//     onLost: (topic) => console.warn("events of", topic, "were lost"),
//   });
//   await client.subscribe("room:42");
//   await client.unsubscribe("room:42");
//   client.close();
//
// No dependencies; an ES module for any browser with WebSocket.

const PROTOCOL = "fanout.v1";

export class FanoutClient {
  // `url`: the stream endpoint, absolute (ws:, wss:) or relative to the page.
  // Options: onEvent({topic, id, type, data, dataBase64}), onLost(topic),
  // onLagged(topic, missed), onOpen(), onClose(code), minDelay (ms, 250),
  // maxDelay (ms, 10 000).
  constructor(url, options = {}) {
    this.url = absolute(url);
    this.options = options;
    this.minDelay = options.minDelay ?? 250;
    this.maxDelay = options.maxDelay ?? 10_000;
    // topic -> { position: last id received or subscribed at, null before any reply }
    this.topics = new Map();
    // req -> { resolve, reject } of commands waiting for their reply
    this.pending = new Map();
    this.nextReq = 1;
    this.delay = this.minDelay;
    this.closed = false;
    this.socket = null;
    this.open();
  }

  // Subscribes to `topic`, now and after every reconnect; resolves when the server has
  // said ok, rejects with the server's reason when it refuses (then the topic is dropped).
  subscribe(topic) {
    if (this.topics.has(topic)) return Promise.resolve();
    this.topics.set(topic, { position: null });
    return this.command({ type: "subscribe", topic }).catch((error) => {
      this.topics.delete(topic);
      throw error;
    });
  }

  // Unsubscribes from `topic`; nothing more of it is handed over from now on.
  unsubscribe(topic) {
    if (!this.topics.delete(topic)) return Promise.resolve();
    return this.command({ type: "unsubscribe", topic });
  }

  // Closes the connection for good.
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.socket?.close(1000);
    for (const { reject } of this.pending.values()) reject(new Error("client closed"));
    this.pending.clear();
  }

  // Sends a command and waits for its reply; while disconnected it is sent on the next
  // open (as part of resubscribing) rather than now.
  command(command) {
    const req = this.nextReq++;
    return new Promise((resolve, reject) => {
      this.pending.set(req, { resolve, reject, command });
      if (this.socket?.readyState === WebSocket.OPEN) {
        this.send({ ...command, req });
      }
    });
  }

  send(command) {
    this.socket.send(JSON.stringify(command));
  }

  open() {
    const socket = new WebSocket(this.url, PROTOCOL);
    this.socket = socket;
    socket.onopen = () => {
      if (socket.protocol !== PROTOCOL) {
        socket.close(1002);
        return;
      }
      this.delay = this.minDelay;
      // Every topic again, from where it was left; then what waits besides.
      const resent = new Set();
      for (const [topic, state] of this.topics) {
        const since = state.position;
        const waiting = [...this.pending].find(
          ([, p]) => p.command.type === "subscribe" && p.command.topic === topic,
        );
        const req = waiting ? waiting[0] : this.nextReq++;
        if (waiting) resent.add(req);
        this.send(since === null ? { type: "subscribe", topic, req } : { type: "subscribe", topic, since, req });
      }
      // What else waits is settled: an unsubscribe is done, as the new connection never
      // held its topic, and so is a subscribe of a topic unsubscribed since.
      for (const [req, p] of this.pending) {
        if (!resent.has(req)) {
          this.pending.delete(req);
          p.resolve();
        }
      }
      this.options.onOpen?.();
    };
    socket.onmessage = (message) => this.receive(JSON.parse(message.data));
    socket.onclose = (close) => {
      if (this.socket !== socket) return;
      this.options.onClose?.(close.code);
      if (this.closed) return;
      // Exponential backoff with jitter, so that clients do not all return at once.
      const wait = this.delay * (0.5 + Math.random() / 2);
      this.delay = Math.min(this.delay * 2, this.maxDelay);
      this.timer = setTimeout(() => this.open(), wait);
    };
  }

  receive(frame) {
    switch (frame.type) {
      case "event": {
        const state = this.topics.get(frame.topic);
        if (!state) return; // unsubscribed; its last events may still have been on the way
        if (frame.id !== undefined) state.position = frame.id;
        this.options.onEvent?.({
          topic: frame.topic,
          id: frame.id,
          type: frame.event ?? "message",
          data: frame.data,
          dataBase64: frame.data_base64,
        });
        return;
      }
      case "ok": {
        const waiting = this.pending.get(frame.req);
        this.pending.delete(frame.req);
        if (waiting?.command.type === "subscribe" || waiting === undefined) {
          // Where the stream stands in the topic until its first event comes.
          const topic = waiting?.command.topic;
          const state = topic !== undefined ? this.topics.get(topic) : undefined;
          if (state && state.position === null && frame.position !== undefined) {
            state.position = frame.position;
          }
        }
        waiting?.resolve();
        return;
      }
      case "error": {
        const waiting = this.pending.get(frame.req);
        this.pending.delete(frame.req);
        waiting?.reject(Object.assign(new Error(frame.reason), { status: frame.status }));
        return;
      }
      case "lost":
        this.options.onLost?.(frame.topic);
        return;
      case "lagged":
        this.options.onLagged?.(frame.topic, frame.missed);
        return;
      default:
        // A later version's frame: ignored.
    }
  }
}

function absolute(url) {
  const resolved = new URL(url, location.href);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}
