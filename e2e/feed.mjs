// The feed of changes through the shipped client (issue 17): pages that follow() converge
// across an API restart; a tab that was offline catches up with /changes alone; a tab that
// opens during a change ends as the database is, whichever of its two lists comes first.
import { check, eq, figure, section, sleep, until, rng, differing, nodeClient, persist, writeStats } from "./harness.mjs";
import { browserOf, isEventStream } from "./proxy.mjs";

// A writer's loop: creates, edits, toggles and deletes tasks of its own, one at a time
// with a pause, until stop() says so. Every call is the client's, keyed where it can be.
function writerLoop(client, seed, pauseMs, stats) {
  const rnd = rng(seed);
  const mine = [];
  let writing = true;
  const done = (async () => {
    for (let n = 0; writing; n++) {
      const r = rnd();
      const id = mine[Math.floor(rnd() * mine.length)];
      const key = crypto.randomUUID(); // one per write, the same for every resend of it
      if (mine.length < 4 || r < 0.3) {
        await persist(async () => mine.push((await client.create({ title: `w${seed}-${n}` }, key)).task.id), stats);
      } else if (r < 0.55) {
        await persist(() => client.update(id, { title: `w${seed}-${n} edited` }), stats);
      } else if (r < 0.85) {
        await persist(() => client.toggle(id, undefined, key), stats);
      } else {
        mine.splice(mine.indexOf(id), 1);
        await persist(() => client.remove(id), stats);
      }
      await sleep(pauseMs);
    }
  })();
  return { stop: () => { writing = false; return done; } };
}

/** Two tabs of alice and a second device follow her tasks while the API restarts under writes. */
export async function restartScenario({ openApp, alice, api, apiURL, proxy }) {
  section("feed convergence across an API restart (issue 17)");
  const browserA = await openApp("alice-two-tabs"), device = await openApp("alice-device");
  const tabs = [await browserA.page(), await browserA.page(), await device.page()];
  await tabs[0].evaluate((e) => tf.signIn(e), alice.email);
  await tabs[2].evaluate((e) => tf.signIn(e), alice.email);
  for (const t of tabs) await t.evaluate((id) => tf.init(id) && tf.follow(), alice.userId);
  const node = nodeClient(apiURL, alice.userId, alice.token);
  const following = await until(async () => {
    const { tasks } = await node.list();
    for (const t of tabs) if (differing(await t.evaluate(() => tf.tasks()), tasks).length) return false;
    return true;
  }, 10_000, 200);
  check("two tabs and a second device of alice follow her tasks with the client", following);

  const stats = writeStats();
  const writers = [1, 2, 3].map((seed) => writerLoop(node, seed, 60, stats));
  await sleep(2500);
  const t0 = Date.now();
  await api.restart(); // SIGTERM, wait for the exit, start again on 8001
  const downtime = Date.now() - t0;
  const back = Date.now();
  await sleep(3500);
  await Promise.all(writers.map((w) => w.stop()));
  check("every write of the writer was made, through the restart", stats.failed === 0, stats.errors.slice(0, 3).join("; "));

  const db = (await node.list()).tasks;
  const end = Date.now();
  await until(async () => {
    for (const t of tabs) if (differing(await t.evaluate(() => tf.tasks()), db).length) return false;
    return true;
  }, 15_000, 200);
  const converged = Date.now() - end;
  const lost = [];
  for (const t of tabs) lost.push(differing(await t.evaluate(() => tf.tasks()), db).length);
  // What the restart did to the traffic: requests that found no API, and each browser's
  // stream, which its EventSource reopened by itself with Last-Event-ID.
  const unanswered = proxy.exchanges.filter((e) => e.startedAt >= t0 - 1000 && e.startedAt <= back && e.status === undefined).length;
  const reopened = ["alice-two-tabs", "alice-device"].map((tag) => proxy.exchanges.find((e) =>
    browserOf(e) === tag && isEventStream(e) && e.startedAt >= t0 && e.status === 200));
  figure(`restart: ${stats.done + stats.gone} writes, API down ${downtime} ms, ${unanswered} requests met no API and were sent again by the client` +
    `${stats.resent ? ` (${stats.resent} by the writer after the client's own retries)` : ""}; tabs equal the database ${converged} ms after the last write`);
  check("after the restart, each browser's stream reopened from its last event (Last-Event-ID)",
    reopened.every((e) => e?.request.headers["last-event-id"]), JSON.stringify(reopened.map((e) => e && e.request.headers["last-event-id"])));
  eq("after an API restart under writes, every tab's view equals the database: lost changes per tab", lost.join("/"), "0/0/0");
  const errors = (await Promise.all(tabs.map((t) => t.evaluate(() => tf.errors)))).flat();
  check("follow() reported no error through the restart", errors.length === 0, errors.slice(0, 3).join("; "));
  await browserA.context.close();
  await device.context.close();
}

/** A tab lists, goes offline while its tasks change, and catches up with /changes pages alone. */
export async function offlineScenario({ openApp, alice, apiURL, proxy }) {
  section("offline catch-up with /changes alone (issue 17)");
  const device = await openApp("alice-offline");
  const page = await device.page();
  await page.evaluate((e) => tf.signIn(e), alice.email);
  await page.evaluate((id) => tf.init(id), alice.userId);
  const listed = await page.evaluate(async () => {
    const { tasks, cursor } = await tf.client.list();
    tf.show(tasks);
    tf.cursor = cursor;
    return { count: tasks.length, cursor };
  });
  check("a list carries its place in the feed (X-Cursor)", /^[A-Za-z0-9_-]+$/.test(listed.cursor), listed.cursor);

  await device.context.setOffline(true);
  check("the offline tab cannot reach the API", await until(() => page.evaluate(() => fetch(`${tf.api}/healthz`).then(() => false, () => true)), 3000, 100));
  // Meanwhile, elsewhere: 60 creates, then toggles, edits and deletes among what is there.
  const node = nodeClient(apiURL, alice.userId, alice.token);
  const rnd = rng(17);
  const stats = writeStats();
  const ids = (await node.list()).tasks.map((t) => t.id);
  for (let i = 0; i < 60; i++) await persist(async () => ids.push((await node.create({ title: `offline ${i}` })).task.id), stats);
  for (let i = 0; i < 150; i++) {
    const id = ids[Math.floor(rnd() * ids.length)];
    if (i % 6 === 5) {
      ids.splice(ids.indexOf(id), 1);
      await persist(() => node.remove(id), stats);
    } else if (i % 2) await persist(() => node.toggle(id), stats);
    else await persist(() => node.update(id, { title: `offline edit ${i}`, description: i % 4 ? null : "from elsewhere" }), stats);
  }
  await device.context.setOffline(false);

  const from = proxy.exchanges.length;
  const caught = await page.evaluate(async () => {
    // Apply each page by version: upserts newer than what is held, deletes as tombstones.
    const view = new Map(tf.view), gone = new Map();
    let cursor = tf.cursor, pages = 0, changes = 0;
    for (let more = true; more; pages++) {
      const page = await tf.client.changes(cursor, 20);
      for (const c of page.changes) {
        if (c.op === "upsert") {
          if ((gone.get(c.task.id) ?? 0) < c.task.version && (view.get(c.task.id)?.version ?? 0) < c.task.version) view.set(c.task.id, c.task);
        } else {
          view.delete(c.id);
          gone.set(c.id, Math.max(gone.get(c.id) ?? 0, c.version));
        }
      }
      changes += page.changes.length;
      cursor = page.cursor;
      more = page.more;
    }
    tf.show([...view.values()]);
    return { pages, changes };
  });
  const asked = proxy.exchanges.slice(from).filter((e) => browserOf(e) === "alice-offline");
  check("the catch-up asked the API for /changes and nothing else",
    asked.length > 0 && asked.every((e) => e.path.endsWith("/changes") && ["GET", "OPTIONS"].includes(e.method)),
    asked.map((e) => `${e.method} ${e.path}`).slice(0, 5).join(", "));
  const db = (await node.list()).tasks;
  const stale = differing(await page.evaluate(() => tf.tasks()), db);
  figure(`offline: ${stats.done} writes while away; caught up with ${caught.changes} changes in ${caught.pages} pages of /changes (limit 20)`);
  eq("after the catch-up with /changes alone, the tab equals the database: tasks that differ", stale.length, 0);
  await device.context.close();
}

/**
 * A tab opens while a task changes, and the first of its two lists (its own, asked before it
 * led; then the leader's) is answered last: a slow path, simulated by the client's fetch
 * option. The tab must end as the database is, not as the older list was.
 */
export async function lateListScenario({ openApp, alice, apiURL, proxy }) {
  section("a tab that opens during a change, its first list answered last");
  const tag = "alice-late-list";
  const device = await openApp(tag);
  const page = await device.page();
  await page.evaluate((e) => tf.signIn(e), alice.email);
  const node = nodeClient(apiURL, alice.userId, alice.token);
  const { task } = await node.create({ title: "changed while a tab opens" });
  await page.evaluate(async (userId) => {
    await tf.getToken();
    let lists = 0;
    const gate = () => { let open; const p = new Promise((r) => (open = r)); return Object.assign(p, { open }); };
    tf.late = { firstAnswered: false, second: gate(), first: gate() };
    // The first list goes out at once and is answered, but its answer is held back until
    // first.open(); the second waits for second.open() before it goes out.
    const slow = async (url, init) => {
      if (!(init?.method === "GET" && new URL(url).pathname.endsWith("/tasks"))) return fetch(url, init);
      const n = ++lists;
      if (n === 2) await tf.late.second;
      const res = await fetch(url, init);
      if (n === 1) {
        const body = await res.text();
        tf.late.firstAnswered = true;
        await tf.late.first;
        return new Response(body, { status: res.status, headers: res.headers });
      }
      return res;
    };
    tf.client = tf.createClient({ baseUrl: tf.api, userId, token: tf.getToken, fetch: slow });
    tf.follow();
  }, alice.userId);
  await until(() => page.evaluate(() => tf.late.firstAnswered), 5000);
  const changed = await node.update(task.id, { title: "changed while a tab opens, edited" });
  await page.evaluate(() => tf.late.second.open());
  const live = await until(() => proxy.openStreams((e) => browserOf(e) === tag && e.events?.some((x) => x.event === "ready")).length === 1, 5000);
  const shown = await until(() => page.evaluate((key) => tf.shownAt.has(key), `${task.id}@${changed.version}`), 5000);
  check("the tab leads, follows, and shows the change its second list has", live && shown);
  await page.evaluate(() => tf.late.first.open());
  await sleep(1000);
  const db = (await node.list()).tasks;
  const { view, overwritten } = await page.evaluate(() => ({ view: tf.tasks(), overwritten: tf.overwritten }));
  const stale = differing(view, db);
  eq("when its first list comes last, the tab shows no change overwritten by an older version", overwritten.length, 0);
  check("when its first list comes last, the tab still equals the database", stale.length === 0,
    `${stale.length} tasks differ: task ${task.id} shown at version ${view.find((t) => t.id === task.id)?.version}, ${changed.version} in the database`);
  await device.context.close();
}
