// make e2e: a real Better Auth server and page on :3000, the Go API (on 127.0.0.1:8001)
// verifying its tokens through the JWKS behind a recording proxy on :8000 (proxy.mjs), and
// headless Chromium driving the pages. First the API by hand (index.html: fetch and
// EventSource, no code of ours on the client side), then the shipped client (app.html,
// client/dist) through the scenarios of feed.mjs, tabs.mjs and reconnects.mjs; last, every
// exchange the proxy saw is checked against openapi.json (validate.mjs) and the document is
// linted. Prints each check and "N passed, M failed"; exits non-zero on failure.
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";
import { startAuthServer, origin } from "./server.mjs";
import { startProxy, isEventStream } from "./proxy.mjs";
import { makeValidator } from "./validate.mjs";
import { results, check, eq, section } from "./harness.mjs";
import { restartScenario, offlineScenario, lateListScenario } from "./feed.mjs";
import { tenTabsScenario, conflictScenario, refusedOriginScenario } from "./tabs.mjs";
import { reconnectScenario } from "./reconnects.mjs";
import { firstListScenario, tokenFailureScenario, stopDuringTokenScenario, lostConditionalScenario, plainHttpScenario,
  timeoutScenario, createAgainScenario, nodeFollowScenario } from "./defects.mjs";
import { offlineWritesScenario } from "./offline.mjs";
import { packageScenario } from "./package.mjs";

const apiBin = process.env.TASKFLOW_API_BIN;
const apiURL = "http://localhost:8000"; // the proxy: what the browser and every check use
const upstreamPort = 8001;
// A name for this machine that is not a secure context (as a LAN address is): Chromium maps
// it to 127.0.0.1, and the API allows it as an origin.
const insecureOrigin = "http://lan.test:3000";
if (!apiBin || !process.env.DATABASE_URL) {
  console.error("run through make e2e (it builds the API and starts the database)");
  process.exit(2);
}
const started = Date.now();

async function waitFor(url, what) {
  for (let i = 0; i < 100; i++) {
    try { if ((await fetch(url)).ok) return; } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not answer at ${url}`);
}

const authServer = await startAuthServer();
// The jwks endpoint creates the signing key on first use; do it before the API starts so
// that its first fetch finds it.
await waitFor(`${origin}/api/auth/jwks`, "Better Auth");
const proxy = await startProxy({ port: 8000, upstreamPort });

// The API process; restart() stops it as a deploy would (SIGTERM) and starts it again.
const api = {
  proc: undefined,
  start() {
    this.proc = spawn(apiBin, [], {
      stdio: ["ignore", "ignore", "inherit"], // its access log would drown the checks
      env: {
        PATH: process.env.PATH,
        DATABASE_URL: process.env.DATABASE_URL,
        JWT_JWKS_URL: `${origin}/api/auth/jwks`,
        CORS_ORIGINS: `${origin},${insecureOrigin}`,
        PORT: String(upstreamPort),
        LOG_FORMAT: "text",
        MAX_WRITES_PER_USER: "200", // the writers of the scenarios are not to be limited
      },
    });
    return waitFor(`http://127.0.0.1:${upstreamPort}/readyz`, "the Go API");
  },
  async stop() {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill("SIGTERM");
    await once(p, "exit");
  },
  async restart() {
    await this.stop();
    await this.start();
  },
};

let browser;
try {
  await api.start();
  await waitFor(`${apiURL}/readyz`, "the proxy in front of the Go API");
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
      `--host-resolver-rules=MAP ${new URL(insecureOrigin).hostname} 127.0.0.1`],
  });
  section("the API by hand: fetch and EventSource in the page (index.html)");
  // Two browser contexts: two people with their own cookies.
  const open = async () => {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${origin}/?api=${encodeURIComponent(apiURL)}`);
    return page;
  };
  const alicePage = await open(), bobPage = await open();

  const alice = await alicePage.evaluate(() => window.e2e.signUp("alice"));
  eq("Better Auth signs with EdDSA", alice.header.alg, "EdDSA");
  check("the token names its key", typeof alice.header.kid === "string" && alice.header.kid.length > 0);
  eq("the token's issuer", alice.claims.iss, "taskflow-web");
  eq("the token's audience", alice.claims.aud, "taskflow-api");
  check("get-session hands out a token in set-auth-jwt", typeof alice.headerToken === "string" && alice.headerToken.split(".").length === 3);

  const a = (method, path, body, token = alice.token) =>
    alicePage.evaluate(([t, m, p, b]) => window.e2e.call(t, m, p, b), [token, method, path, body]);
  const base = `/api/${alice.userId}/tasks`;

  const created = await a("POST", base, { title: "  Buy milk  " });
  eq("create is 201", created.status, 201);
  eq("create trims and stores the title", created.body?.title, "Buy milk");
  eq("the Location header is readable cross-origin", created.location, `${base}/${created.body?.id}`);
  const taskPath = `${base}/${created.body?.id}`;

  const listed = await a("GET", base);
  eq("list is 200", listed.status, 200);
  eq("X-Total-Count is readable cross-origin", listed.total, "1");
  eq("list holds the task", listed.body?.[0]?.id, created.body?.id);

  const updated = await a("PUT", taskPath, { title: "Buy oat milk", description: "2 litres" });
  eq("update is 200", updated.status, 200);
  eq("update applies", `${updated.body?.title}/${updated.body?.description}`, "Buy oat milk/2 litres");

  const toggled = await a("PATCH", `${taskPath}/complete`);
  eq("toggle is 200", toggled.status, 200);
  eq("toggle completes the task", toggled.body?.completed, true);

  const headerTokenCall = await a("GET", taskPath, undefined, alice.headerToken);
  eq("the set-auth-jwt token works too", headerTokenCall.status, 200);

  const [h, p, s] = alice.token.split(".");
  const forged = JSON.parse(Buffer.from(p, "base64url").toString());
  forged.sub = "someone-else";
  const tampered = `${h}.${Buffer.from(JSON.stringify(forged)).toString("base64url")}.${s}`;
  eq("a tampered token is 401", (await a("GET", base, undefined, tampered)).status, 401);
  eq("a token with a broken signature is 401", (await a("GET", base, undefined, `${h}.${p}.${s.slice(0, -4)}AAAA`)).status, 401);

  const bob = await bobPage.evaluate(() => window.e2e.signUp("bob"));
  check("the second user is someone else", bob.userId && bob.userId !== alice.userId);
  const b = (method, path, body) =>
    bobPage.evaluate(([t, m, pa, bo]) => window.e2e.call(t, m, pa, bo), [bob.token, method, path, body]);
  eq("bob reading alice's list is 403", (await b("GET", base)).status, 403);
  eq("bob reading alice's task by her path is 403", (await b("GET", taskPath)).status, 403);
  const bobPath = `/api/${bob.userId}/tasks/${created.body?.id}`;
  eq("bob reading alice's task id under his path is 404", (await b("GET", bobPath)).status, 404);
  eq("bob updating it is 404", (await b("PUT", bobPath, { title: "mine now" })).status, 404);
  eq("bob toggling it is 404", (await b("PATCH", `${bobPath}/complete`)).status, 404);
  eq("bob deleting it is 404", (await b("DELETE", bobPath)).status, 404);
  eq("bob's own list is empty", (await b("GET", `/api/${bob.userId}/tasks`)).total, "0");

  // Safe retries: a create sent and aborted as if the network dropped, then sent again
  // with the same Idempotency-Key, is one task.
  const key = { "Idempotency-Key": `e2e-${Date.now()}` };
  // The proxy holds the API's answer, so the page's abort, 5 ms in, always comes first.
  const held = proxy.gate((e) => e.method === "POST" && e.request.headers["idempotency-key"] === key["Idempotency-Key"], "response");
  const aborted = await alicePage.evaluate(([t, p, k]) => window.e2e.call(t, "POST", p, { title: "Retried" }, k, 5), [alice.token, base, key]);
  check("the first create was aborted by the page", aborted.status === 0, JSON.stringify(aborted));
  held.release();
  await new Promise((r) => setTimeout(r, 300));
  const retried = await alicePage.evaluate(([t, p, k]) => window.e2e.call(t, "POST", p, { title: "Retried" }, k), [alice.token, base, key]);
  eq("the retry with the same key is 201", retried.status, 201);
  const retriedList = await a("GET", base);
  eq("one task for the create sent twice", retriedList.body?.filter((x) => x.title === "Retried").length, 1);
  // The answer to a create that landed, sent again for the same key, says so.
  const key2 = { "Idempotency-Key": `e2e-second-${Date.now()}` };
  const first = await alicePage.evaluate(([t, p, k]) => window.e2e.call(t, "POST", p, { title: "Sent twice" }, k), [alice.token, base, key2]);
  const again = await alicePage.evaluate(([t, p, k]) => window.e2e.call(t, "POST", p, { title: "Sent twice" }, k), [alice.token, base, key2]);
  eq("the same key again gets the first answer", again.body?.id, first.body?.id);
  eq("Idempotent-Replayed is readable cross-origin", again.replayed, "true");

  // ETags: a repeat read with If-None-Match is a 304; a stale If-Match is a 412 the page can read.
  const fresh = await a("GET", taskPath);
  check("the ETag is readable cross-origin", typeof fresh.etag === "string" && fresh.etag.startsWith('"'), String(fresh.etag));
  const unchanged = await alicePage.evaluate(([t, p, e]) => window.e2e.call(t, "GET", p, undefined, { "If-None-Match": e }), [alice.token, taskPath, fresh.etag]);
  eq("a repeat read with If-None-Match is 304", unchanged.status, 304);
  await a("PUT", taskPath, { description: "changed elsewhere" });
  const stale = await alicePage.evaluate(([t, p, e]) => window.e2e.call(t, "PUT", p, { title: "lost update" }, { "If-Match": e }), [alice.token, taskPath, fresh.etag]);
  eq("a write with a stale If-Match is 412", stale.status, 412);
  check("the 412 says why", typeof stale.body?.detail === "string" && stale.body.detail.length > 0);

  const after = await a("GET", taskPath);
  eq("alice's task is untouched by bob", `${after.body?.title}/${after.body?.completed}`, "Buy oat milk/true");
  eq("delete is 204", (await a("DELETE", taskPath)).status, 204);
  eq("a deleted task is 404", (await a("GET", taskPath)).status, 404);

  // Live updates: alice in a second tab (the same browser session) and bob each watch
  // with EventSource; alice's changes in the first tab show in her second within 1 s,
  // and bob sees none of them.
  const aliceTab2 = await alicePage.context().newPage();
  await aliceTab2.goto(`${origin}/?api=${encodeURIComponent(apiURL)}`);
  const tab2Token = await aliceTab2.evaluate(() => window.e2e.token());
  eq("the second tab is ready", await aliceTab2.evaluate(([t, u]) => window.e2e.watch(t, u), [tab2Token, alice.userId]), true);
  eq("bob's page is ready", await bobPage.evaluate(([t, u]) => window.e2e.watch(t, u), [bob.token, bob.userId]), true);
  const seen = async (name, id, sentAt) => {
    for (let i = 0; i < 20; i++) {
      const hit = (await aliceTab2.evaluate(() => window.e2e.events)).find((e) => e.name === name && (e.data.id === id) && e.at >= sentAt);
      if (hit) return hit.at - sentAt;
      await new Promise((r) => setTimeout(r, 50));
    }
    return Infinity;
  };
  let sentAt = Date.now();
  const live = await a("POST", base, { title: "Live" });
  const liveID = live.body?.id;
  const delays = [await seen("task.created", liveID, sentAt)];
  sentAt = Date.now();
  await a("PATCH", `${base}/${liveID}/complete`);
  delays.push(await seen("task.updated", liveID, sentAt));
  sentAt = Date.now();
  await a("PUT", `${base}/${liveID}`, { title: "Live, edited" });
  delays.push(await seen("task.updated", liveID, sentAt));
  sentAt = Date.now();
  await a("DELETE", `${base}/${liveID}`);
  delays.push(await seen("task.deleted", liveID, sentAt));
  check("create, toggle, edit and delete show in the other tab within 1 s", delays.every((d) => d <= 1000), JSON.stringify(delays));
  const tab2Events = await aliceTab2.evaluate(() => window.e2e.events);
  eq("the edit arrives as the task", tab2Events.filter((e) => e.name === "task.updated").at(-1)?.data?.title, "Live, edited");
  const bobEvents = await bobPage.evaluate(() => window.e2e.events.map((e) => e.name));
  eq("bob's page receives nothing of alice's", JSON.stringify(bobEvents), JSON.stringify(["ready"]));

  const cors = await alicePage.evaluate(async (url) => {
    const res = await fetch(url + "/healthz", { credentials: "include" });
    return res.status;
  }, apiURL);
  eq("a cross-origin call without a token still reads /healthz", cors, 200);
  // HEAD on every route that takes one: the 200's headers and no body (validate.mjs checks both).
  const heads = [base, `${base}/${retried.body?.id}`, `/api/${alice.userId}/changes`, `/api/${alice.userId}/events`, "/healthz", "/readyz", "/openapi.json"];
  const headStatuses = [];
  for (const path of heads) headStatuses.push((await fetch(apiURL + path, { method: "HEAD", headers: { Authorization: `Bearer ${alice.token}` } })).status);
  eq("HEAD is 200 on every route that takes it", headStatuses.join(","), heads.map(() => 200).join(","));

  await alicePage.context().close();
  await bobPage.context().close();

  // The shipped client, in pages of their own (app.html). Each browser context tags its
  // User-Agent (taskflow-e2e/<name>) so that the proxy can tell its streams apart.
  const probe = await browser.newContext();
  const userAgent = await (await probe.newPage()).evaluate(() => navigator.userAgent);
  await probe.close();
  const ctx = {
    browser, proxy, api, apiURL, origin, insecureOrigin,
    alice: { userId: alice.userId, email: alice.email, token: alice.token },
    /** A browser context of its own (a browser, a device); page() opens app.html in it. */
    async openApp(name, pageOrigin = origin) {
      const context = await browser.newContext({ userAgent: `${userAgent} taskflow-e2e/${name}` });
      return {
        context,
        async page() {
          const page = await context.newPage();
          page.on("pageerror", (err) => console.error(`[${name}] ${err.message}`));
          page.on("console", (m) => process.env.E2E_CONSOLE && console.log(`[${name} console] ${m.text()}`));
          await page.goto(`${pageOrigin}/app.html?api=${encodeURIComponent(apiURL)}`);
          await page.waitForFunction(() => window.tf !== undefined);
          return page;
        },
      };
    },
  };
  // E2E_ONLY=name,name (as below, without "Scenario") runs only those, while working on them;
  // E2E_CONSOLE=1 prints what the pages log.
  const only = process.env.E2E_ONLY?.split(",");
  for (const scenario of [conflictScenario, lostConditionalScenario, createAgainScenario, timeoutScenario,
    tokenFailureScenario, stopDuringTokenScenario, firstListScenario, plainHttpScenario, nodeFollowScenario,
    offlineWritesScenario, packageScenario, lateListScenario, offlineScenario, restartScenario, tenTabsScenario,
    reconnectScenario, refusedOriginScenario]) {
    if (!only || only.includes(scenario.name.replace(/Scenario$/, ""))) await scenario(ctx);
  }
} catch (err) {
  check("the scenario ran to the end", false, err.stack || String(err));
} finally {
  await browser?.close();
  await api.stop();
  await proxy.close();
  authServer.close();
}

// Every exchange the proxy recorded, against the document.
const doc = JSON.parse(await readFile(new URL("../openapi.json", import.meta.url), "utf8"));
const { check: violationsOf } = makeValidator(doc);
const ex = proxy.exchanges;
const answered = ex.filter((e) => e.status !== undefined);
const streams = ex.filter((e) => isEventStream(e) && e.status === 200);
const violations = ex.flatMap(violationsOf);
section("the traffic against the document");
console.log(`traffic: ${ex.length} exchanges recorded, ${answered.length} answered and checked against openapi.json ` +
  `(${ex.filter((e) => e.method === "OPTIONS").length} preflights, ${ex.filter((e) => e.method === "HEAD").length} HEADs, ` +
  `${streams.length} event streams carrying ${streams.reduce((n, e) => n + e.events.length, 0)} events); ` +
  `${ex.length - answered.length} never answered (the API restarting, or the caller gone first)`);
for (const v of violations.slice(0, 40)) console.log(`     ${v}`);
if (violations.length > 40) console.log(`     ... and ${violations.length - 40} more`);
check(`traffic fits openapi.json: ${violations.length} violations`, violations.length === 0);
// The validation must be able to fail: a recorded task answer, its ETag dropped and its version made 0.
const sample = answered.find((e) => e.method === "GET" && /\/tasks\/\d+$/.test(e.path) && e.status === 200);
const { etag, ...withoutETag } = sample?.headers ?? {};
const broken = sample && { ...sample, headers: withoutETag, body: [Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.concat(sample.body)), version: 0 }))] };
check("the validation finds both faults of a broken task answer", broken && violationsOf(broken).length === 2, broken && violationsOf(broken).join("; "));

// The document itself, linted by Redocly's recommended rules.
const lint = spawnSync(new URL("./node_modules/.bin/redocly", import.meta.url).pathname, ["lint", "../openapi.json", "--format=json"], {
  cwd: new URL(".", import.meta.url).pathname, encoding: "utf8", timeout: 120_000,
  env: { ...process.env, REDOCLY_TELEMETRY: "off", REDOCLY_SUPPRESS_UPDATE_NOTICE: "true", NO_COLOR: "1" },
});
let totals;
try { totals = JSON.parse(lint.stdout).totals; } catch {}
check(`Redocly lints openapi.json: ${totals?.errors} errors, ${totals?.warnings} warnings`,
  totals?.errors === 0 && totals?.warnings === 0, totals ? JSON.stringify(JSON.parse(lint.stdout).problems).slice(0, 2000) : `${lint.status}: ${lint.stderr.slice(-500)}`);

console.log(`\nran in ${((Date.now() - started) / 1000).toFixed(0)} s`);
console.log(`e2e: ${results.passed} passed, ${results.failed} failed`);
process.exit(results.failed === 0 && results.passed > 0 ? 0 : 1);
