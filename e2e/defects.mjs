// The defects of issue 26, each reproduced as the issue found it and checked against the
// client as it ships: every check here failed with the client of main a5edd59.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { check, eq, figure, section, sleep, until, differing, nodeClient } from "./harness.mjs";
import { browserOf, isEventStream } from "./proxy.mjs";

const tagged = (tag) => (e) => browserOf(e) === tag;
const liveStreams = (proxy, tag) => proxy.openStreams((e) => browserOf(e) === tag && e.events?.some((x) => x.event === "ready"));
// A fresh user of the page's own (a new browser context signs one up): counts are exact.
async function freshUser(page, name) {
  const user = await page.evaluate((n) => tf.signUp(n), name);
  await page.evaluate((id) => tf.init(id), user.id);
  return { ...user, token: await page.evaluate(() => tf.getToken()) };
}

/** 1. The API is down when the page opens, and comes back 6 s later: the first list is tried again. */
export async function firstListScenario({ openApp, api, apiURL }) {
  section("defect 1: a first list that fails is tried again");
  const browser = await openApp("defect-1");
  const page = await browser.page();
  const user = await freshUser(page, "defect1");
  const node = nodeClient(apiURL, user.id, user.token);
  for (let i = 0; i < 20; i += 5) await Promise.all([0, 1, 2, 3, 4].map((j) => node.create({ title: `before the outage ${i + j}` })));
  await api.stop();
  await page.evaluate(() => tf.follow());
  await sleep(6000);
  const during = await page.evaluate(() => tf.status?.state);
  await api.start();
  const all = (await node.list()).tasks;
  await node.update(all[0].id, { title: "changed after the API came back" });
  const db = (await node.list()).tasks;
  const equal = await until(async () => differing(await page.evaluate(() => tf.tasks()), db).length === 0, 20_000, 200);
  figure(`first list: state while the API was down "${during}"; the page ${equal ? "equals" : "does not equal"} the database's ${db.length} tasks after it came back`);
  check("a page opened while the API is down shows every task once it is back (its list is tried again)", equal,
    `${(await page.evaluate(() => tf.tasks())).length} of ${db.length} tasks shown`);
  eq("while the API is down, follow() says offline", during, "offline");
  const states = (await page.evaluate(() => tf.statuses.map((x) => x.state))).filter((x, i, all) => x !== all[i - 1]);
  check("onStatus told connecting, then offline, and live at the end, as the leader",
    states[0] === "connecting" && states.includes("offline") && states.at(-1) === "live" && (await page.evaluate(() => tf.status.leader)), states.join(","));
  await browser.context.close();
}

/** 2. A token() that fails once, at a renewal (the stream ended with `expired`): follow() says so and goes on. */
export async function tokenFailureScenario({ openApp, apiURL, proxy }) {
  section("defect 2: a token() that fails once does not stop follow()");
  const tag = "defect-2";
  const browser = await openApp(tag);
  const page = await browser.page();
  const user = await freshUser(page, "defect2");
  await page.evaluate(() => tf.follow());
  check("the page follows", await until(() => liveStreams(proxy, tag).length === 1, 10_000));
  await page.evaluate(() => { tf.tokenFailures = 1; });
  eq("the proxy ends the stream as an expired token does", proxy.expireStreams(tagged(tag)), 1);
  const node = nodeClient(apiURL, user.id, user.token);
  const reported = await until(() => page.evaluate(() => tf.errors.find((e) => e.includes("503"))), 5000);
  check("onError hears of the failed token()", reported, JSON.stringify(await page.evaluate(() => tf.errors)));
  const back = await until(() => liveStreams(proxy, tag).length === 1, 15_000);
  const { task } = await node.create({ title: "made after the token failed" });
  const shown = await until(() => page.evaluate((id) => tf.view.has(id), task.id), 5000);
  check("after the failed token(), the stream opens again and the page shows a new task", back && shown);
  await browser.context.close();
}

/** 3. stop() while token() is pending (a React unmount): no stream opens, the lock is free. */
export async function stopDuringTokenScenario({ openApp, apiURL, proxy }) {
  section("defect 3: stop() during a pending token() leaves no stream and no lock");
  const tag = "defect-3";
  const browser = await openApp(tag);
  const first = await browser.page();
  const user = await freshUser(first, "defect3");
  const t0 = Date.now();
  await first.evaluate(() => { tf.tokenDelay = 400; tf.before = tf.tokenCalls; tf.follow(); });
  // follow()'s third token() is the stream's (after this tab's list and the leader's): stop() during it.
  const pending = await until(() => first.evaluate(() => tf.tokenCalls - tf.before >= 3 && tf.tokenPending > 0), 5000, 10);
  await first.evaluate(() => tf.stop());
  await sleep(2500);
  const opened = proxy.exchanges.filter((e) => browserOf(e) === tag && isEventStream(e) && e.startedAt >= t0);
  check("stop() came while token() was pending", pending);
  eq("after stop(), no event stream was opened", opened.length, 0);
  const second = await browser.page();
  const t1 = Date.now();
  await second.evaluate((id) => tf.init(id) && tf.follow(), user.id);
  const led = await until(() => liveStreams(proxy, tag).filter((e) => e.startedAt >= t1).length === 1, 5000);
  const { task } = await nodeClient(apiURL, user.id, user.token).create({ title: "shown by the second tab" });
  const shown = await until(() => second.evaluate((id) => tf.view.has(id), task.id), 5000);
  check("a second tab then takes the lock, opens a stream of its own, and shows a new task", led && shown);
  await browser.context.close();
}

/** 4. A conditional update whose first answer is lost: the retry recognises its own write. */
export async function lostConditionalScenario({ openApp }) {
  section("defect 4: a conditional write sent again after its answer was lost");
  const browser = await openApp("defect-4");
  const page = await browser.page();
  const user = await freshUser(page, "defect4");
  const got = await page.evaluate(async (userId) => {
    // The network loses the answer of the first PUT and the first DELETE, after the API made them.
    const lost = new Set();
    const lossy = async (url, init) => {
      const res = await fetch(url, init);
      if ((init?.method === "PUT" || init?.method === "DELETE") && !lost.has(init.method)) {
        lost.add(init.method);
        await res.body?.cancel();
        throw new TypeError("network error: the answer was lost");
      }
      return res;
    };
    const client = tf.createClient({ baseUrl: tf.api, userId, token: tf.getToken, fetch: lossy });
    const { task } = await client.create({ title: "edited once" });
    const out = {};
    try {
      const updated = await client.update(task.id, { title: "edited, answer lost" }, { ifMatch: task });
      out.update = updated.title;
    } catch (err) {
      out.update = String(err);
    }
    try {
      await client.remove(task.id, { ifMatch: await client.get(task.id) });
      out.remove = "removed";
    } catch (err) {
      out.remove = String(err);
    }
    out.lost = [...lost];
    return out;
  }, user.id);
  eq("an update with ifMatch whose answer was lost resolves with its own write, not a Conflict", got.update, "edited, answer lost");
  eq("a delete with ifMatch whose answer was lost resolves too", got.remove, "removed");
  await browser.context.close();
}

/**
 * 5. A plain-http origin (a LAN name, not a secure context): no Web Locks, no
 * crypto.randomUUID. Ten tabs elect one leader; every tab shows the tasks; a write works.
 */
export async function plainHttpScenario({ openApp, apiURL, proxy, insecureOrigin }) {
  section("defect 5: ten tabs on a plain-http origin (no Web Locks, no crypto.randomUUID)");
  const tag = "defect-5";
  const setup = await openApp("defect-5-setup");
  const user = await freshUser(await setup.page(), "defect5");
  await setup.context.close();
  const node = nodeClient(apiURL, user.id, user.token);
  for (let i = 0; i < 10; i++) await node.create({ title: `on a LAN ${i}` });
  const browser = await openApp(tag, insecureOrigin);
  const tabs = [];
  const streams = proxy.watchStreams(tagged(tag));
  for (let i = 0; i < 10; i++) {
    const p = await browser.page();
    await p.evaluate(([id, token]) => tf.init(id, token) && tf.follow(), [user.id, user.token]);
    tabs.push(p);
  }
  const context = await tabs[0].evaluate(() => ({ secure: isSecureContext, locks: !!navigator.locks, uuid: typeof crypto.randomUUID }));
  eq("the origin is not a secure context: no Web Locks, no crypto.randomUUID", JSON.stringify(context), JSON.stringify({ secure: false, locks: false, uuid: "undefined" }));
  const db = (await node.list()).tasks;
  const all = await until(async () => (await Promise.all(tabs.map((p) => p.evaluate(() => tf.tasks())))).every((v) => differing(v, db).length === 0), 15_000, 200);
  check("all ten tabs show the user's tasks", all);
  await sleep(1500);
  const leaders = (await Promise.all(tabs.map((p) => p.evaluate(() => tf.status?.leader)))).filter(Boolean).length;
  eq("one tab leads", leaders, 1);
  eq("one event stream is open for the ten tabs", liveStreams(proxy, tag).length, 1);
  figure(`plain http: at most ${streams.max} event streams open at once while the ten tabs elected their leader`);
  streams.stop();
  const made = await tabs[9].evaluate(() => Promise.race([
    tf.client.create({ title: "from the tenth tab" }).then((r) => ({ id: r.task.id }), (err) => ({ error: String(err) })),
    new Promise((r) => setTimeout(() => r({ error: "no answer within 10 s" }), 10_000)),
  ]));
  check("create() from the tenth tab works without crypto.randomUUID", made.id > 0, JSON.stringify(made));
  const everywhere = await until(async () => (await Promise.all(tabs.map((p) => p.evaluate((id) => tf.view.has(id), made.id)))).every(Boolean), 5000);
  check("the new task shows in all ten tabs", everywhere);
  const leader = tabs[(await Promise.all(tabs.map((p) => p.evaluate(() => tf.status?.leader)))).indexOf(true)];
  const t0 = Date.now();
  await leader?.close();
  const rest = tabs.filter((p) => p !== leader);
  const taken = await until(async () => (await Promise.all(rest.map((p) => p.evaluate(() => tf.status?.leader)))).filter(Boolean).length === 1 && liveStreams(proxy, tag).length === 1, 10_000, 50);
  figure(`plain http: a new leader follows ${Date.now() - t0} ms after the leading tab closed`);
  check("when the leading tab closes, one other takes over", taken);
  await browser.context.close();
}

/** 6. A server that accepts and never answers: calls time out, and a signal cancels them. */
export async function timeoutScenario({ openApp, proxy }) {
  section("defect 6: timeouts and AbortSignal");
  const tag = "defect-6";
  const browser = await openApp(tag);
  const page = await browser.page();
  const user = await freshUser(page, "defect6");
  const release = proxy.stall((e) => browserOf(e) === tag && e.method === "POST");
  const got = await page.evaluate(async (userId) => {
    const within = (p, ms) => Promise.race([p.then(() => "resolved", (err) => err?.name ?? String(err)), new Promise((r) => setTimeout(() => r("still pending"), ms))]);
    const quick = tf.createClient({ baseUrl: tf.api, userId, token: tf.getToken, timeout: 500, retries: 1 });
    let t0 = performance.now();
    const timedOut = await within(quick.create({ title: "never answered" }), 4000);
    const timeoutMs = performance.now() - t0;
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 300);
    t0 = performance.now();
    const aborted = await within(tf.client.create({ title: "abandoned" }, { signal: abort.signal }), 4000);
    return { timedOut, timeoutMs, aborted, abortMs: performance.now() - t0 };
  }, user.id);
  release();
  figure(`timeouts: a create to a server that never answers failed after ${got.timeoutMs.toFixed(0)} ms (timeout 500 ms, 1 retry); an aborted one ${got.abortMs.toFixed(0)} ms after it began`);
  eq("a create the server never answers fails with a TimeoutError after its tries", got.timedOut, "TimeoutError");
  eq("a create whose signal aborts fails with an AbortError", got.aborted, "AbortError");
  check("the aborted create gave up within 1 s", got.abortMs < 1000, String(got.abortMs));
  await browser.context.close();
}

/**
 * 7. client/README.md's recipe for a create the page may call again, run as written: every
 * answer of the first call is lost, the page calls again, and one task is made.
 */
export async function createAgainScenario({ openApp }) {
  section("defect 7: the README's create, called again after every answer was lost");
  const readme = readFileSync(new URL("../client/README.md", import.meta.url), "utf8");
  const recipe = /<!-- e2e: create again -->\s*```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  check("client/README.md shows how to call a create again", recipe !== undefined);
  if (recipe === undefined) return;
  const browser = await openApp("defect-7");
  const page = await browser.page();
  const user = await freshUser(page, "defect7");
  const got = await page.evaluate(async ([userId, recipe]) => {
    // Every answer to the first call's POSTs is lost, after the API made the task.
    let losing = true, posts = 0;
    const lossy = async (url, init) => {
      const res = await fetch(url, init);
      if (init?.method === "POST" && losing) {
        posts++;
        await res.body?.cancel();
        throw new TypeError("network error: the answer was lost");
      }
      return res;
    };
    const api = tf.createClient({ baseUrl: tf.api, userId, token: tf.getToken, fetch: lossy, retries: 1 });
    const title = "Buy milk";
    const save = new Function("api", "title", "newKey", `${recipe}\nreturn save;`)(api, title, tf.newKey);
    let first;
    try { await save(); first = "made"; } catch (err) { first = String(err); }
    losing = false;
    const second = await save().then(() => "made", (err) => String(err));
    const { tasks } = await api.list();
    return { first, second, posts, made: tasks.filter((t) => t.title === title).length };
  }, [user.id, recipe]);
  check("the first call failed: every answer was lost", got.first !== "made" && got.posts === 2, JSON.stringify(got));
  eq("the page's second call succeeds", got.second, "made");
  eq("one task was made", got.made, 1);
  await browser.context.close();
}

/** 8. follow() in Node.js, which has no EventSource: onError hears why, nothing crashes. */
export async function nodeFollowScenario({ apiURL, alice }) {
  section("defect 8: follow() in Node.js");
  const script = `
    import { createClient } from "../client/dist/taskflow.js";
    const errors = [];
    const api = createClient({ baseUrl: ${JSON.stringify(apiURL)}, userId: ${JSON.stringify(alice.userId)}, token: () => ${JSON.stringify(alice.token)} });
    const live = api.follow(() => {}, { onError: (err) => errors.push(String(err)) });
    setTimeout(() => { live.stop(); console.log(JSON.stringify({ errors, list: typeof api.list })); }, 500);
  `;
  const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], { cwd: new URL(".", import.meta.url).pathname, encoding: "utf8", timeout: 20_000 });
  let out;
  try { out = JSON.parse(run.stdout.trim().split("\n").at(-1)); } catch {}
  eq("Node.js runs follow() to the end: exit status", run.status, 0);
  check("onError says follow() needs an EventSource", out?.errors?.length === 1 && out.errors[0].includes("EventSource"), `${run.stdout}${run.stderr}`.slice(0, 500));
}
