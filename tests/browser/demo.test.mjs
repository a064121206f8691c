// The demo page of `cargo run --example hyper_server` in headless Chromium: its WebSocket
// and EventSource both show a broadcast; the server then drops the page's streams, events
// are broadcast while they are away, and after the browser's own reconnect the page shows
// every event exactly once, in order. Then the same for one EventSource on three topics
// and one WebSocket through client/fanout.js, which subscribes and unsubscribes at
// runtime. Then, over HTTPS (a certificate the demo makes, which the browser is told to
// ignore) and HTTP/2, twenty EventSources and one WebSocket all get their events, and the
// demo's /metrics shows that they travelled over HTTP/2. A WebSocket negotiates
// permessage-deflate, and compressed messages go both ways.
//
// Needs the example built with `--features http2,metrics`
// (target/debug/examples/hyper_server) and Chromium at
// /usr/bin/chromium (or $CHROMIUM). Run: npm test --prefix tests/browser

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import net from "node:net";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { chromium } from "playwright-core";

const root = fileURLToPath(new URL("../../", import.meta.url));
const WAIT = 15_000;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function startServer(port, env = {}) {
  const server = spawn(`${root}target/debug/examples/hyper_server`, [], {
    env: { ...process.env, ADDR: `127.0.0.1:${port}`, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start")), WAIT);
    server.on("exit", (code) => reject(new Error(`the server exited with ${code}`)));
    server.stdout.on("data", (chunk) => {
      if (chunk.toString().includes("listening")) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { server, listening };
}

const lists = (page) =>
  page.evaluate(() => ({
    ws: [...document.querySelectorAll("#ws li")].map((li) => li.textContent),
    sse: [...document.querySelectorAll("#sse li")].map((li) => li.textContent),
    opens: window.opens,
  }));

async function waitForBoth(page, expected) {
  await page.waitForFunction(
    (n) =>
      document.querySelectorAll("#ws li").length >= n &&
      document.querySelectorAll("#sse li").length >= n,
    expected.length,
    { timeout: WAIT },
  );
  const seen = await lists(page);
  assert.deepEqual(seen.ws, expected, "WebSocket list");
  assert.deepEqual(seen.sse, expected, "EventSource list");
}

function launch(extra = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      ...extra,
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

// A demo server of its own and the demo page open in a fresh browser, both ended with
// the test; `post` sends to the server and returns the number its answer holds.
async function openDemo(t) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const { server, listening } = startServer(port);
  t.after(() => server.kill());
  await listening;
  const browser = await launch();
  t.after(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`${base}/`);
  const post = async (path, body) => {
    const response = await fetch(`${base}${path}`, { method: "POST", body });
    assert.equal(response.status, 200, path);
    return Number((await response.text()).trim());
  };
  return { page, post };
}

test("the demo page shows every event once, in order, across a reconnect", async (t) => {
  const { page, post } = await openDemo(t);
  await page.waitForFunction(() => window.opens.ws >= 1 && window.opens.sse >= 1, null, { timeout: WAIT });

  assert.equal(await post("/publish/demo", "one"), 2, "the page's two streams");
  await waitForBoth(page, ["one"]);

  // The server drops both streams; events go out while they are away.
  assert.equal(await post("/disconnect/demo"), 2);
  await post("/publish/demo", "two");
  await post("/publish/demo", "three");

  // After the browser's own reconnect, and one more live event, each list holds every
  // event exactly once, in order.
  await page.waitForFunction(() => window.opens.ws >= 2 && window.opens.sse >= 2, null, { timeout: WAIT });
  await post("/publish/demo", "four");
  await waitForBoth(page, ["one", "two", "three", "four"]);

  mkdirSync(`${root}target/browser`, { recursive: true });
  const screenshot = `${root}target/browser/demo.png`;
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
});

test("a WebSocket negotiates permessage-deflate: compressed commands are read, a large event arrives whole", async (t) => {
  const { page, post } = await openDemo(t);
  // Once the extension is negotiated Chromium compresses what it sends: the subscribe
  // is answered only if the server inflated it.
  const extensions = await page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const socket = new WebSocket(`ws://${location.host}/events`, "fanout.v1");
        window.deflated = [];
        socket.onopen = () => socket.send(JSON.stringify({ type: "subscribe", topic: "deflate", req: 1 }));
        socket.onmessage = (message) => {
          const frame = JSON.parse(message.data);
          window.deflated.push(frame);
          if (frame.type === "ok") resolve(socket.extensions);
        };
        socket.onclose = (close) => reject(new Error(`closed with ${close.code}`));
        window.deflateSocket = socket;
      }),
  );
  assert.match(extensions, /^permessage-deflate/);
  // Over the compression threshold: sent compressed, inflated by the browser.
  const large = JSON.stringify(Array.from({ length: 80 }, (_, i) => ({ id: i, name: `item ${i}`, price: i * 1.25 })));
  assert.equal(await post("/publish/deflate", large), 1);
  const data = await page.waitForFunction(
    () => window.deflated.find((frame) => frame.type === "event")?.data,
    null,
    { timeout: WAIT },
  );
  assert.equal(await data.jsonValue(), large);
});

test("one EventSource and one WebSocket carry several topics, resumed whole after a drop", async (t) => {
  const { page, post } = await openDemo(t);
  await page.waitForFunction(() => window.multiOpens?.ws >= 1 && window.multiOpens?.sse >= 1, null, { timeout: WAIT });
  await page.evaluate(() => window.multiReady);

  const lists = () =>
    page.evaluate(() => {
      const of = (id) => [...(document.getElementById(id)?.querySelectorAll("li") ?? [])].map((li) => li.textContent);
      const out = {};
      for (const transport of ["ws", "sse"]) {
        for (const topic of ["alpha", "beta", "gamma", "delta"]) out[`${transport} ${topic}`] = of(`multi-${transport}-${topic}`);
      }
      return out;
    });
  const waitFor = async (expected) => {
    await page
      .waitForFunction(
        (expected) =>
          Object.entries(expected).every(
            ([key, items]) => (document.getElementById(`multi-${key.replace(" ", "-")}`)?.children.length ?? 0) >= items.length,
          ),
        expected,
        { timeout: WAIT },
      )
      .catch(() => {});
    const seen = await lists();
    for (const [key, items] of Object.entries(expected)) assert.deepEqual(seen[key], items, key);
  };

  for (const topic of ["alpha", "beta", "gamma"]) {
    assert.equal(await post(`/publish/${topic}`, `${topic} 1`), 2, `both streams hold ${topic}`);
  }
  // At runtime: one more topic for the WebSocket, and one less.
  await page.evaluate(() => window.fanout.subscribe("delta"));
  assert.equal(await post("/publish/delta", "delta 1"), 1);
  await page.evaluate(() => window.fanout.unsubscribe("beta"));
  assert.equal(await post("/publish/beta", "beta 2"), 1, "only the EventSource holds beta now");
  await waitFor({
    "ws alpha": ["alpha 1"], "ws beta": ["beta 1"], "ws gamma": ["gamma 1"], "ws delta": ["delta 1"],
    "sse alpha": ["alpha 1"], "sse beta": ["beta 1", "beta 2"], "sse gamma": ["gamma 1"],
  });

  // The server drops both connections (both hold alpha); events go on while they are away.
  assert.equal(await post("/disconnect/alpha"), 2);
  await post("/publish/alpha", "alpha 2");
  await post("/publish/gamma", "gamma 2");
  await post("/publish/delta", "delta 2");
  await post("/publish/beta", "beta 3");
  await page.waitForFunction(() => window.multiOpens.ws >= 2 && window.multiOpens.sse >= 2, null, { timeout: WAIT });
  // Resubscribed (the WebSocket) and resumed (both) before the next live events.
  await page.waitForFunction(() => window.fanout.pending.size === 0, null, { timeout: WAIT });
  for (const topic of ["alpha", "gamma", "delta"]) await post(`/publish/${topic}`, `${topic} 3`);

  await waitFor({
    "ws alpha": ["alpha 1", "alpha 2", "alpha 3"],
    "ws beta": ["beta 1"],
    "ws gamma": ["gamma 1", "gamma 2", "gamma 3"],
    "ws delta": ["delta 1", "delta 2", "delta 3"],
    "sse alpha": ["alpha 1", "alpha 2", "alpha 3"],
    "sse beta": ["beta 1", "beta 2", "beta 3"],
    "sse gamma": ["gamma 1", "gamma 2", "gamma 3"],
  });
  mkdirSync(`${root}target/browser`, { recursive: true });
  const screenshot = `${root}target/browser/topics.png`;
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
});

test("over HTTPS and HTTP/2, twenty EventSources and a WebSocket all receive their events", async (t) => {
  const TOPICS = 20;
  const port = await freePort();
  const base = `https://localhost:${port}`;
  const { server, listening } = startServer(port, { TLS_SELF_SIGNED: "1" });
  t.after(() => server.kill());
  await listening;
  const browser = await launch(["--ignore-certificate-errors"]);
  t.after(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`${base}/`);

  // Over HTTP/1.1 the browser would hold back all but six of these.
  await page.evaluate(async (topics) => {
    window.h2 = { sse: {}, ws: [] };
    const opened = [];
    for (let i = 0; i < topics; i++) {
      const topic = `h2-${i}`;
      window.h2.sse[topic] = [];
      const source = new EventSource(`/events/${topic}`);
      source.onmessage = (event) => window.h2.sse[topic].push(event.data);
      opened.push(new Promise((resolve) => (source.onopen = resolve)));
    }
    const socket = new WebSocket(`wss://${location.host}/events/h2-ws`);
    socket.onmessage = (event) => window.h2.ws.push(event.data.split("\n").pop());
    opened.push(new Promise((resolve) => (socket.onopen = resolve)));
    await Promise.all(opened);
  }, TOPICS);

  const post = (path, body) =>
    page.evaluate(
      async ({ path, body }) => (await fetch(path, { method: "POST", body })).text(),
      { path, body },
    );
  for (let i = 0; i < TOPICS; i++) {
    assert.equal((await post(`/publish/h2-${i}`, `event ${i}`)).trim(), "1", `h2-${i}`);
  }
  assert.equal((await post("/publish/h2-ws", "to the socket")).trim(), "1");
  await page.waitForFunction(
    (topics) =>
      Object.values(window.h2.sse).filter((list) => list.length > 0).length === topics &&
      window.h2.ws.length > 0,
    TOPICS,
    { timeout: WAIT },
  );
  const seen = await page.evaluate(() => window.h2);
  for (let i = 0; i < TOPICS; i++) assert.deepEqual(seen.sse[`h2-${i}`], [`event ${i}`]);
  assert.deepEqual(seen.ws, ["to the socket"]);

  // The server's side: the WebSocket and the event streams travelled over HTTP/2.
  const metrics = await page.evaluate(async () => (await fetch("/metrics")).text());
  const sample = (series) => {
    const line = metrics.split("\n").find((line) => line.startsWith(`${series} `));
    return line ? Number(line.split(" ")[1]) : 0;
  };
  assert.ok(sample('fanout_connections{transport="websocket",version="HTTP/2"}') >= 1, metrics);
  assert.ok(sample('fanout_connections{transport="sse",version="HTTP/2"}') >= TOPICS, metrics);
});
