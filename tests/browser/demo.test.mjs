// The demo page of `cargo run --example hyper_server` in headless Chromium: its WebSocket
// and EventSource both show a broadcast; the server then drops the page's streams, events
// are broadcast while they are away, and after the browser's own reconnect the page shows
// every event exactly once, in order.
//
// Needs the example built (target/debug/examples/hyper_server) and Chromium at
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

function startServer(port) {
  const server = spawn(`${root}target/debug/examples/hyper_server`, [], {
    env: { ...process.env, ADDR: `127.0.0.1:${port}` },
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

test("the demo page shows every event once, in order, across a reconnect", async (t) => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const { server, listening } = startServer(port);
  t.after(() => server.kill());
  await listening;

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  t.after(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`${base}/`);
  await page.waitForFunction(() => window.opens.ws >= 1 && window.opens.sse >= 1, null, { timeout: WAIT });

  const post = async (path, body) => {
    const response = await fetch(`${base}${path}`, { method: "POST", body });
    assert.equal(response.status, 200);
    return Number((await response.text()).trim());
  };
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
