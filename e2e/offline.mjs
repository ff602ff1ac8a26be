// Writes made offline (issue 26): two tabs of one browser lose the API; one of them makes
// 50 creates, 50 toggles, 20 updates and 10 deletes through follow(), and reloads once
// midway; meanwhile another device changes 10 of the same tasks. Back online, the queue is
// sent by one tab: every write is applied once, the 10 contested ones come back as typed
// conflicts with both versions, nothing is lost, and both tabs end equal to the database.
import { check, eq, figure, section, sleep, until, differing, nodeClient } from "./harness.mjs";
import { browserOf } from "./proxy.mjs";

const existing = 60;

export async function offlineWritesScenario({ openApp, apiURL, proxy }) {
  section("writes made offline: queued in IndexedDB, kept across a reload, sent once (issue 26)");
  const tag = "erin-offline-writes";
  const browser = await openApp(tag);
  const [a, b] = [await browser.page(), await browser.page()];
  const erin = await a.evaluate(() => tf.signUp("erin"));
  for (const p of [a, b]) await p.evaluate((id) => tf.init(id) && tf.follow(), erin.id);
  const node = nodeClient(apiURL, erin.id, await a.evaluate(() => tf.getToken()));
  const ids = [], titles = new Map();
  for (let i = 0; i < existing; i += 10) {
    const made = await Promise.all(Array.from({ length: 10 }, (_, j) => node.create({ title: `existing ${i + j}` })));
    for (const { task } of made) ids.push(task.id) && titles.set(task.id, task.title);
  }
  ids.sort((x, y) => x - y);
  const bothShow = (n) => until(async () => (await Promise.all([a, b].map((p) => p.evaluate(() => tf.tasks().length)))).every((k) => k === n), 10_000, 100);
  check("both tabs follow erin's 60 tasks", await bothShow(existing));

  // The plan. Existing tasks: 40 toggled, 15 updated, 5 deleted. Of the 50 created: c0-c9
  // toggled, c10-c14 updated, c0-c4 deleted too (a create, a toggle and a delete in a row).
  // Contested (another device updates them meanwhile): 4 toggled, 4 updated, 2 deleted.
  const toggled = ids.slice(0, 40), updated = ids.slice(40, 55), removed = ids.slice(55, 60);
  const contested = [...toggled.slice(0, 4), ...updated.slice(0, 4), ...removed.slice(0, 2)];
  const before = [
    ...Array.from({ length: 25 }, (_, i) => ["create", `c${i}`]),
    ...toggled.slice(0, 25).map((id) => ["toggle", id]),
    ...updated.slice(0, 10).map((id) => ["update", id, `offline edit of ${id}`]),
    ...removed.slice(0, 3).map((id) => ["remove", id]),
  ];
  const after = [
    ...Array.from({ length: 25 }, (_, i) => ["create", `c${25 + i}`]),
    ...Array.from({ length: 10 }, (_, i) => ["toggle", `c${i}`]),
    ...Array.from({ length: 5 }, (_, i) => ["update", `c${10 + i}`, `offline edit of c${10 + i}`]),
    ...Array.from({ length: 5 }, (_, i) => ["remove", `c${i}`]),
    ...toggled.slice(25).map((id) => ["toggle", id]),
    ...updated.slice(10).map((id) => ["update", id, `offline edit of ${id}`]),
    ...removed.slice(3).map((id) => ["remove", id]),
  ];
  eq("the plan: creates/toggles/updates/deletes", ["create", "toggle", "update", "remove"].map((op) => [...before, ...after].filter((w) => w[0] === op).length).join("/"), "50/50/20/10");
  // Writes run in the page through follow()'s handle; a created task is named by its title
  // (cN), found in the view, where it shows with its temporary id until it is made.
  const writeAll = (page, writes) => page.evaluate(async (writes) => {
    const idOf = (ref) => typeof ref === "number" ? ref : tf.tasks().find((t) => t.title === ref).id;
    const t0 = performance.now();
    for (const [op, ref, title] of writes) {
      if (op === "create") await tf.live.create({ title: ref });
      else if (op === "update") await tf.live.update(idOf(ref), { title });
      else await tf.live[op](idOf(ref));
    }
    return (performance.now() - t0) / writes.length;
  }, writes);

  // Offline: the browser loses its network, and the API its streams.
  const unblock = proxy.block((e) => browserOf(e) === tag);
  await browser.context.setOffline(true);
  proxy.cutStreams((e) => browserOf(e) === tag);
  const states = await until(async () => {
    const s = await Promise.all([a, b].map((p) => p.evaluate(() => tf.status?.state)));
    return s.every((x) => x === "offline") && s;
  }, 10_000, 100);
  check("both tabs say they are offline", states, JSON.stringify(await Promise.all([a, b].map((p) => p.evaluate(() => tf.status)))));
  const perWrite = await writeAll(a, before);
  const pendingNow = await Promise.all([a, b].map((p) => p.evaluate(() => ({ queued: tf.status.pending, shown: tf.pending(), tasks: tf.tasks().length }))));
  figure(`offline: ${before.length} writes queued and shown in ${perWrite.toFixed(1)} ms each; tabs show ${pendingNow.map((x) => `${x.shown} pending of ${x.tasks}`).join(", ")}`);
  // pending tasks: 25 creates, 25 toggled, 10 updated (3 deleted are gone from the view)
  eq("the writing tab shows its writes at once, as pending (queued / pending tasks / tasks)", `${pendingNow[0].queued}/${pendingNow[0].shown}/${pendingNow[0].tasks}`, `${before.length}/60/82`);
  eq("the other tab shows them too", `${pendingNow[1].queued}/${pendingNow[1].shown}/${pendingNow[1].tasks}`, `${before.length}/60/82`);

  // Meanwhile, another device changes 10 of the same tasks.
  for (const id of contested) await node.update(id, { title: `changed on another device ${id}` });

  // The writing tab reloads: the page itself loads (its origin answers), the API still does not.
  await browser.context.setOffline(false);
  await a.reload();
  await a.waitForFunction(() => window.tf !== undefined);
  await a.evaluate((id) => tf.init(id) && tf.follow(), erin.id);
  await browser.context.setOffline(true);
  const reloaded = await until(() => a.evaluate(() => tf.status?.pending > 0 && { queued: tf.status.pending, shown: tf.pending(), tasks: tf.tasks().length }), 5000, 20);
  eq("after a reload, the tab shows the queued writes again, from IndexedDB (queued / pending tasks / tasks)", reloaded && `${reloaded.queued}/${reloaded.shown}/${reloaded.tasks}`, `${before.length}/60/82`);
  await writeAll(a, after);
  const queued = await Promise.all([a, b].map((p) => p.evaluate(() => tf.status.pending)));
  eq("130 writes wait in the queue, in both tabs", queued.join("/"), "130/130");
  const offlineView = await a.evaluate(() => tf.tasks());
  check("the view shows the last writes too (c0-c4 deleted, c5 toggled, c10 edited)",
    !offlineView.some((t) => t.title === "c0") && offlineView.find((t) => t.title === "c5")?.completed === true && offlineView.some((t) => t.title === "offline edit of c10"));

  // Back online: one tab sends the queue.
  const from = proxy.exchanges.length;
  const sentBefore = await Promise.all([a, b].map((p) => p.evaluate(() => tf.writesSent)));
  const t0 = Date.now();
  unblock();
  await browser.context.setOffline(false);
  const drained = await until(async () => (await Promise.all([a, b].map((p) => p.evaluate(() => tf.status?.pending)))).every((n) => n === 0), 60_000, 100);
  const took = Date.now() - t0;
  check("back online, the queue empties", drained);
  const sentBy = (await Promise.all([a, b].map((p) => p.evaluate(() => tf.writesSent)))).map((n, i) => n - sentBefore[i]);
  check("one tab sent the queue for the browser (writes sent by each tab)", sentBy.filter((n) => n > 0).length === 1 && sentBy.some((n) => n >= 130), sentBy.join("/"));
  const db = (await node.list()).tasks;
  await until(async () => (await Promise.all([a, b].map(async (p) => differing(await p.evaluate(() => tf.tasks()), db).length))).every((n) => n === 0), 10_000, 100);

  // What the database must hold: each write applied once, the contested ones not at all.
  const want = new Map();
  for (const id of ids) want.set(id, { title: titles.get(id), completed: false });
  for (const id of contested) want.get(id).title = `changed on another device ${id}`;
  for (const id of toggled.slice(4)) want.get(id).completed = true;
  for (const id of updated.slice(4)) want.get(id).title = `offline edit of ${id}`;
  for (const id of removed.slice(2)) want.delete(id);
  const made = new Map();
  for (let i = 5; i < 50; i++) made.set(`c${i}`, { title: i >= 10 && i < 15 ? `offline edit of c${i}` : `c${i}`, completed: i < 10 });
  const got = new Map(db.map((t) => [t.id, t]));
  const wrongExisting = [...want].filter(([id, w]) => got.get(id)?.title !== w.title || got.get(id)?.completed !== w.completed);
  const extraExisting = ids.filter((id) => !want.has(id) && got.has(id));
  const createdRows = db.filter((t) => !ids.includes(t.id));
  const byTitle = new Map();
  for (const t of createdRows) byTitle.set(t.title, (byTitle.get(t.title) ?? 0) + 1);
  const wrongCreated = [...made].filter(([, w]) => byTitle.get(w.title) !== 1 || createdRows.find((t) => t.title === w.title)?.completed !== w.completed);
  eq("the database holds every write once: existing tasks that differ from the plan", wrongExisting.length + extraExisting.length, 0);
  eq("the database holds every write once: the 50 creates, 5 deleted again (45 tasks, each once, as planned)", `${createdRows.length}/${wrongCreated.length}`, "45/0");

  // The traffic: each create and toggle key made its write once (a resend is a replay).
  const sent = proxy.exchanges.slice(from).filter((e) => browserOf(e) === tag && e.method !== "OPTIONS" && e.method !== "GET" && e.method !== "HEAD");
  const keys = new Map();
  for (const e of sent) {
    const key = e.request.headers["idempotency-key"];
    if (key && e.status < 300 && !e.headers["idempotent-replayed"]) keys.set(key, (keys.get(key) ?? 0) + 1);
  }
  const statuses = {};
  for (const e of sent) statuses[`${e.method} ${e.status ?? "-"}`] = (statuses[`${e.method} ${e.status ?? "-"}`] ?? 0) + 1;
  eq("each create's and toggle's key made one write: keys / keys used more than once", `${keys.size}/${[...keys.values()].filter((n) => n > 1).length}`, `${50 + 46}/0`);
  figure(`back online: 130 writes sent in ${took} ms by one tab: ${Object.entries(statuses).map(([k, n]) => `${n} ${k}`).join(", ")}`);

  // The conflicts: the 10 contested tasks, each once, typed, with both versions.
  for (const [name, p] of [["writing tab", a], ["other tab", b]]) {
    const conflicts = await p.evaluate(() => tf.conflicts);
    const ok = conflicts.filter((c) => c.conflict && c.status === 412 && contestedOk(c));
    function contestedOk(c) { return c.theirs?.title?.startsWith("changed on another device") && (c.op === "remove" ? c.mine === null : c.mine?.id === c.id); }
    const ids2 = new Set(conflicts.map((c) => c.id));
    check(`the ${name} was told of the 10 contested writes as Conflicts with both versions`,
      conflicts.length === 10 && ok.length === 10 && contested.every((id) => ids2.has(id)),
      JSON.stringify(conflicts.slice(0, 2)));
  }
  const conflictOps = (await b.evaluate(() => tf.conflicts.map((c) => c.op))).sort().join(",");
  figure(`conflicts: ${conflictOps}`);
  const views = await Promise.all([a, b].map(async (p) => differing(await p.evaluate(() => tf.tasks()), db).length));
  eq("both tabs end equal to the database: tasks that differ", views.join("/"), "0/0");
  const errors = (await Promise.all([a, b].map((p) => p.evaluate(() => tf.errors)))).flat();
  check("follow() reported no error", errors.length === 0, errors.slice(0, 3).join("; "));
  await sleep(100);
  await browser.context.close();
}
