// What every scenario of make e2e shares: checks and figures, waiting, a seeded random
// source, percentiles, comparing a page's tasks with the database, and the shipped client
// in Node (the writers that change a user's tasks while pages follow them).
import { createClient, ApiError } from "../client/dist/taskflow.js";

export const results = { passed: 0, failed: 0 };
export function check(name, ok, detail = "") {
  ok ? results.passed++ : results.failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${ok || !detail ? "" : `: ${detail}`}`);
}
export const eq = (name, got, want) => check(name, got === want, `got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
/** A measured figure: reported, not a check. */
export const figure = (line) => console.log(`     ${line}`);
/** The heading of a scenario. */
export const section = (title) => console.log(`\n# ${title}`);

export const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
/** Polls fn until it returns something truthy (which it returns) or timeoutMs passes (undefined). */
export async function until(fn, timeoutMs, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() >= end) return undefined;
    await sleep(everyMs);
  }
}

/** A seeded random source in [0, 1) (mulberry32): each run makes the same choices. */
export function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : NaN;
}
export const ms = (x) => `${x.toFixed(1)} ms`;

// What of a task a page shows; two views agree when these agree for every task.
const shown = (t) => JSON.stringify([t.id, t.title, t.description, t.completed, t.version, t.updated_at]);
/** The ids whose task differs between a page's view and the database (missing on either side included). */
export function differing(view, db) {
  const a = new Map(view.map((t) => [t.id, shown(t)]));
  const b = new Map(db.map((t) => [t.id, shown(t)]));
  return [...new Set([...a.keys(), ...b.keys()])].filter((id) => a.get(id) !== b.get(id));
}

/** The shipped client in Node, for a user whose token the page handed over. */
export const nodeClient = (baseUrl, userId, token) => createClient({ baseUrl, userId, token: () => token });

/**
 * persist runs a write until it is done: the client already sends it again after a network
 * error or a 503 (with its Idempotency-Key), but an API restart may outlast its four
 * retries, so a writer goes on with the same call (the same key) for up to 30 s. A 404 (the
 * task was deleted meanwhile) is an answer, not a failure.
 */
export async function persist(write, stats) {
  for (let t0 = Date.now(); ; ) {
    try {
      await write();
      stats.done++;
      return;
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) { stats.gone++; return; }
      if (err instanceof ApiError && err.status !== 503 && err.status !== 429) { stats.failed++; stats.errors.push(String(err)); return; }
      if (Date.now() - t0 > 30_000) { stats.failed++; stats.errors.push(String(err)); return; }
      stats.resent++;
      await sleep(200);
    }
  }
}
export const writeStats = () => ({ done: 0, gone: 0, failed: 0, resent: 0, errors: [] });
