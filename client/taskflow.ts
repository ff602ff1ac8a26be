// A small typed client of the TaskFlow API. Its types come from ../openapi.json
// (schema.d.ts, made by `npm run generate`). It calls every endpoint and gets the hard
// parts right: creates and toggles carry an Idempotency-Key and are retried after a
// network error, a timeout or a 503; a 429 waits for its Retry-After; a 412 is a Conflict,
// unless it is a resent write finding its own first try landed; and follow() keeps a
// user's tasks as the feed of changes says, in any number of tabs of a browser over one
// stream, with writes that wait in IndexedDB while the API cannot be reached. Calls send
// no cookies (credentials: "omit"): a bearer token needs none, and a credentialed
// EventSource would take a connection of the browser's six per host that credentialed
// writes need.
import type { components, operations } from "./schema.js";

type Schemas = components["schemas"];
export type Task = Schemas["Task"];
export type TaskCreate = Schemas["TaskCreate"];
export type TaskUpdate = Schemas["TaskUpdate"];
export type ChangesPage = Schemas["ChangesPage"];
export type StreamEvent = Schemas["StreamEvent"];
export type ListQuery = NonNullable<operations["listTasks"]["parameters"]["query"]>;

export interface Options {
  baseUrl: string; // the API's origin, such as "http://localhost:8000", or "" for the page's own
  userId: string;
  token: () => string | Promise<string>; // a token that is valid now (Better Auth: authClient.token())
  fetch?: typeof fetch | undefined;
  retries?: number | undefined; // how often a call is sent again after a network error, a timeout, a 503 or a 429 (4)
  timeout?: number | undefined; // ms to wait for an answer's head before a try counts as lost (10,000)
  EventSource?: typeof EventSource | undefined; // for follow() where there is none (Node.js: the eventsource package)
}

/** What every call takes: a signal that abandons it (it then rejects with the signal's reason). */
export interface CallOptions {
  signal?: AbortSignal | undefined;
  retries?: number | undefined;
}

/** What a write may name: the version it was decided on (the task, or its ETag), and its key. */
export interface Precondition extends CallOptions {
  ifMatch?: Task | string | undefined;
  key?: string | undefined; // Idempotency-Key of a create or toggle: the same key, the same write
}

/** An error answer of the API: its status, {"detail"}, and Retry-After in seconds. */
export class ApiError extends Error {
  readonly status: number;
  readonly detail: string;
  readonly retryAfter: number | undefined;
  constructor(status: number, detail: string, retryAfter?: number) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

/**
 * A 412: the task changed since the version the write named. A direct call throws it: get
 * the task again, then decide. A queued write of follow() reports it to onConflict with
 * both versions: mine, what the write would have made of the task it was made on (null for
 * a delete), and theirs, the task as the server has it now (null: deleted).
 */
export class Conflict extends ApiError {
  write?: Write;
  mine?: Shown | null;
  theirs?: Task | null;
}

/** A task as follow() shows it: pending while a write of this browser to it waits to be sent. */
export type Shown = Task & { pending?: true };

/** A write of follow()'s queue, as kept in IndexedDB. */
export interface Write {
  seq?: number; // its place in the queue
  op: "create" | "update" | "toggle" | "remove";
  id: number; // negative: a task this queue creates, not yet made
  key: string; // the Idempotency-Key of every send of it
  fields?: TaskCreate | TaskUpdate;
  base?: number; // the version it was made on, sent as If-Match
  after?: true; // made on a pending write to the same task: its base is that write's result
  broken?: true; // that write failed: so does this one
  was: Shown; // the task as shown when it was made (a create: the task it shows until made)
}

export type State = "connecting" | "live" | "offline" | "resyncing" | "stopped";
/** follow()'s state: the feed's (the leading tab's, shared by all), whether this tab leads, queued writes. */
export interface Status {
  state: State;
  leader: boolean;
  pending: number;
}

export interface FollowOptions {
  onError?: ((err: unknown) => void) | undefined;
  onStatus?: ((status: Status) => void) | undefined;
  onConflict?: ((conflict: Conflict) => void) | undefined;
  offline?: boolean | undefined; // keep queued writes and the last view in IndexedDB (true)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// Exponential, from 250 ms to 10 s, with full jitter: clients cut off together come back apart.
const backoff = (attempt: number) => Math.random() * Math.min(10_000, 250 * 2 ** attempt);

/**
 * A new Idempotency-Key: a random UUID. crypto.randomUUID exists only in a secure context
 * (https, localhost); getRandomValues everywhere.
 */
export function newKey(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// The API could not be reached: a network error, no answer in time, or a 503.
const unreachable = (err: unknown) =>
  err instanceof TypeError || (err instanceof DOMException && err.name === "TimeoutError") || (err instanceof ApiError && err.status === 503);
// Worth trying again later: the API, the network or the token may come back.
const transient = (err: unknown) => !(err instanceof ApiError) || err.status === 401 || err.status === 429 || err.status >= 500;

export function createClient(o: Options) {
  const base = `${o.baseUrl.replace(/\/$/, "")}/api/${encodeURIComponent(o.userId)}`;
  const send = o.fetch ?? globalThis.fetch.bind(globalThis);
  const timeout = o.timeout ?? 10_000;

  // call sends a request, again after a 429 (nothing was done), and after a network error,
  // a timeout or a 503 (every call of this client is safe to send again). sent.unsure says
  // whether a try before the answer may have landed.
  async function call(method: string, path: string, opts: CallOptions & { body?: unknown; headers?: Record<string, string>; sent?: { unsure: boolean } }) {
    const retries = opts.retries ?? o.retries ?? 4;
    for (let attempt = 0; ; attempt++) {
      opts.signal?.throwIfAborted();
      const headers: Record<string, string> = { Authorization: `Bearer ${await o.token()}`, ...opts.headers };
      if (opts.body !== undefined) headers["Content-Type"] = "application/json";
      // The timeout covers the answer's head only: a long list may take longer to read.
      const abort = new AbortController();
      const quit = () => abort.abort(opts.signal?.reason);
      opts.signal?.addEventListener("abort", quit);
      const timer = setTimeout(() => abort.abort(new DOMException(`no answer within ${timeout} ms`, "TimeoutError")), timeout);
      let res: Response;
      try {
        res = await send(base + path, { method, headers, credentials: "omit", signal: abort.signal, body: opts.body === undefined ? null : JSON.stringify(opts.body) });
      } catch (err) {
        if (opts.signal?.aborted) throw opts.signal.reason;
        if (opts.sent) opts.sent.unsure = true;
        if (attempt >= retries) throw abort.signal.aborted ? abort.signal.reason : err;
        await sleep(backoff(attempt));
        continue;
      } finally {
        clearTimeout(timer);
      }
      if (res.ok || res.status === 304) return res;
      opts.signal?.removeEventListener("abort", quit);
      const retryAfter = Number(res.headers.get("Retry-After")) || undefined;
      if (res.status === 503 && opts.sent) opts.sent.unsure = true;
      if ((res.status === 429 || res.status === 503) && attempt < retries) {
        await sleep(retryAfter ? retryAfter * 1000 + Math.random() * 250 : backoff(attempt));
        continue;
      }
      const detail = ((await res.json().catch(() => ({}))) as { detail?: string }).detail ?? res.statusText;
      throw new (res.status === 412 ? Conflict : ApiError)(res.status, detail, retryAfter);
    }
  }
  const etag = (p: Precondition): Record<string, string> =>
    p.ifMatch === undefined ? {} : { "If-Match": typeof p.ifMatch === "string" ? p.ifMatch : `"${p.ifMatch.version}"` };
  const json = async <T>(res: Promise<Response>) => (await (await res).json()) as T;
  const pass = (p: CallOptions) => ({ signal: p.signal, retries: p.retries });
  // Whether a write resent after a lost answer had landed: the task shows what it asked for.
  const landed = async (id: number, fields: TaskUpdate) => {
    const now = await api.get(id).catch(() => undefined);
    const same = now && Object.entries(fields).every(([k, v]) => now[k as keyof Task] === (k === "title" && typeof v === "string" ? v.trim() : v));
    return same ? now : undefined;
  };
  const gone = (id: number) => api.get(id).then(() => false, (err) => err instanceof ApiError && err.status === 404);

  const api = {
    /** The user's tasks (all of them without a limit), their count, and the list's place in the feed. */
    async list(query: ListQuery = {}, p: CallOptions = {}) {
      const q = new URLSearchParams(Object.entries(query).map(([k, v]) => [k, String(v)]));
      const res = await call("GET", `/tasks${q.size ? `?${q}` : ""}`, pass(p));
      return { tasks: (await res.json()) as Task[], total: Number(res.headers.get("X-Total-Count")), cursor: res.headers.get("X-Cursor") ?? "" };
    },
    get: (id: number, p: CallOptions = {}) => json<Task>(call("GET", `/tasks/${id}`, pass(p))),
    /**
     * Creates a task once, however often it is sent: give the same key (a string, or {key})
     * to a call made again for the same task, and it is still made once. url is its Location.
     */
    async create(task: TaskCreate, key: string | Precondition = {}) {
      const p = typeof key === "string" ? { key } : key;
      const res = await call("POST", "/tasks", { body: task, headers: { "Idempotency-Key": p.key ?? newKey() }, ...pass(p) });
      return { task: (await res.json()) as Task, url: new URL(res.headers.get("Location") ?? "", new URL(base, globalThis.location?.href)).href, replayed: res.headers.has("Idempotent-Replayed") };
    },
    /** Changes the fields given; with ifMatch, only if nobody changed the task since (else Conflict). */
    async update(id: number, fields: TaskUpdate, p: Precondition = {}) {
      const sent = { unsure: false };
      try {
        return await json<Task>(call("PUT", `/tasks/${id}`, { body: fields, headers: etag(p), sent, ...pass(p) }));
      } catch (err) {
        const mine = err instanceof Conflict && sent.unsure && (await landed(id, fields));
        if (mine) return mine;
        throw err;
      }
    },
    /** Flips completed once, however often it must be sent. */
    toggle: (id: number, p: Precondition = {}, key: string = p.key ?? newKey()) =>
      json<Task>(call("PATCH", `/tasks/${id}/complete`, { headers: { ...etag(p), "Idempotency-Key": key }, ...pass(p) })),
    /** Deletes a task; deleting one already gone (a retry whose first try landed) is no error. */
    async remove(id: number, p: Precondition = {}) {
      const sent = { unsure: false };
      await call("DELETE", `/tasks/${id}`, { headers: etag(p), sent, ...pass(p) }).catch(async (err) => {
        if (err instanceof ApiError && err.status === 404) return;
        if (err instanceof Conflict && sent.unsure && (await gone(id))) return;
        throw err;
      });
    },
    /** One page of the feed after since (none: a full sync); a 410 means list again. */
    changes: (since?: string, limit?: number, p: CallOptions = {}) =>
      json<ChangesPage>(call("GET", `/changes?${new URLSearchParams({ ...(since ? { since } : {}), ...(limit ? { limit: String(limit) } : {}) })}`, pass(p))),
    follow: (onChange: (tasks: Shown[]) => void, opts: FollowOptions | ((err: unknown) => void) = {}) =>
      follow(api, o, base, onChange, typeof opts === "function" ? { onError: opts } : opts, landed, gone),
  };
  return api;
}

export type Client = ReturnType<typeof createClient>;
export type Live = ReturnType<typeof follow>;
type Message =
  | { kind: "event"; event: StreamEvent }
  | { kind: "snapshot"; tasks: Task[]; cursor: string }
  | { kind: "hello" }
  | { kind: "status"; state: State }
  | { kind: "queue"; events?: StreamEvent[] }
  | { kind: "conflict"; write: Write; theirs: Task | null; detail: string }
  | { kind: "leader" | "claim" | "bye"; from: string };

// The queue and the last view, in IndexedDB when there is one (shared by the tabs of a
// browser, kept across reloads), else in memory (this tab's alone).
interface Store {
  shared: boolean;
  writes(): Promise<Write[]>;
  add(w: Write): Promise<void>;
  settle(seq: number, fix: (rest: Write[]) => Write[]): Promise<void>; // drops seq, puts what fix returns (once)
  view(): Promise<{ tasks: Task[]; cursor: string } | undefined>;
  keep(changes: (Task | number)[], cursor: string, whole: boolean): void; // a task to put, an id to delete
}

function memoryStore(): Store {
  let queue: Write[] = [];
  let seq = 0;
  return {
    shared: false,
    writes: async () => queue.slice(),
    add: async (w) => void queue.push({ ...w, seq: ++seq }),
    async settle(s, fix) {
      if (!queue.some((w) => w.seq === s)) return;
      queue = queue.filter((w) => w.seq !== s);
      const fixed = new Map(fix(queue.slice()).map((w) => [w.seq, w]));
      queue = queue.map((w) => fixed.get(w.seq) ?? w);
    },
    view: async () => undefined,
    keep() {},
  };
}

async function indexedStore(name: string): Promise<Store | undefined> {
  const db = await new Promise<IDBDatabase | undefined>((resolve) => {
    try {
      const req = indexedDB.open(name, 1);
      req.onupgradeneeded = () => {
        req.result.createObjectStore("writes", { keyPath: "seq", autoIncrement: true });
        req.result.createObjectStore("tasks", { keyPath: "id" });
        req.result.createObjectStore("cursor");
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => resolve(undefined); // private modes may refuse it: memory, then
    } catch {
      resolve(undefined);
    }
  });
  if (!db) return undefined;
  const run = <T>(stores: string[], mode: IDBTransactionMode, fn: (...s: IDBObjectStore[]) => IDBRequest | void) =>
    new Promise<T>((resolve, reject) => {
      const t = db.transaction(stores, mode);
      const req = fn(...stores.map((s) => t.objectStore(s)));
      t.oncomplete = () => resolve(req?.result as T);
      t.onerror = t.onabort = () => reject(t.error);
    });
  return {
    shared: true,
    writes: () => run<Write[]>(["writes"], "readonly", (s) => s.getAll()),
    add: (w) => run(["writes"], "readwrite", (s) => s.add(w)),
    settle: (seq, fix) =>
      run(["writes"], "readwrite", (s) => {
        // Settled already (by another tab that led for a moment): nothing to fix twice.
        const got = s.get(seq);
        got.onsuccess = () => {
          if (!got.result) return;
          s.delete(seq);
          const all = s.getAll();
          all.onsuccess = () => fix(all.result as Write[]).forEach((w) => s.put(w));
        };
      }),
    async view() {
      const [tasks, cursor] = await Promise.all([run<Task[]>(["tasks"], "readonly", (s) => s.getAll()), run<string>(["cursor"], "readonly", (s) => s.get(0))]);
      return cursor ? { tasks, cursor } : undefined;
    },
    // In one transaction, so that the kept tasks are always those of the kept cursor.
    keep: (changes, cursor, whole) =>
      void run(["tasks", "cursor"], "readwrite", (tasks, at) => {
        if (whole) tasks.clear();
        for (const c of changes) typeof c === "number" ? tasks.delete(c) : tasks.put(c);
        at.put(cursor, 0);
      }).catch(() => {}),
  };
}

// follow keeps the user's tasks, calling onChange with all of them after every change, until
// stop(). It lists, then follows the event stream from the list's cursor, keeping the highest
// version of each task; the stream resumes by itself from its last event, and after an
// expired token, a failed token(), a 401, a 429 or an outage from its cursor; a failed list
// is tried again; a resync lists again; a 403 stops it. The tabs of a user share one stream:
// the tab that holds a Web Lock (or, where there are none, wins an election on the
// BroadcastChannel) follows and tells the others what it reads. Writes made through it are
// queued (IndexedDB), shown at once as pending, and sent in order by the leading tab,
// conditional on the version they were made on; a 412 goes to onConflict.
function follow(
  api: Client, o: Options, base: string, onChange: (tasks: Shown[]) => void, opts: FollowOptions,
  landed: (id: number, fields: TaskUpdate) => Promise<Task | undefined>, gone: (id: number) => Promise<boolean>,
) {
  const onError = opts.onError ?? ((err: unknown) => console.error(err));
  const tasks = new Map<number, Task>();
  const deleted = new Map<number, number>(); // id → the version of its deletion
  let queue: Write[] = [];
  let cursor = "";
  let state: State = "connecting";
  let stopped = false;
  let leading = false;
  let synced = false; // a leader's snapshot has come: this tab's own list no longer counts
  let endStream = () => {};
  let wake = () => {};
  const released = new AbortController();
  const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(`taskflow:${o.userId}`) : undefined;
  // A closed channel throws: after stop(), what is still on its way tells no one.
  const tell = (m: Message) => !stopped && channel?.postMessage(m);
  const ES = o.EventSource ?? globalThis.EventSource;
  const offline = () => globalThis.navigator?.onLine === false;
  let store: Store = memoryStore();

  // A nap that stop(), the network coming back, or a new queued write cut short.
  const nap = (ms: number) => new Promise<void>((r) => {
    const t = setTimeout(r, ms);
    wake = () => { clearTimeout(t); r(); };
  });

  let said = "";
  function status(s?: State) {
    if (s && s !== state) {
      state = s;
      if (leading) tell({ kind: "status", state });
    }
    const now: Status = { state: stopped ? "stopped" : state, leader: leading, pending: queue.length };
    if (JSON.stringify(now) !== said) {
      said = JSON.stringify(now);
      opts.onStatus?.(now);
    }
  }

  // What this tab shows: the tasks as the feed says, then the queued writes on top of them.
  function shown() {
    const view = new Map<number, Shown>(tasks);
    for (const w of queue) {
      const t = view.get(w.id);
      if (w.op === "create") view.set(w.id, { ...w.was, pending: true });
      else if (t && w.op === "remove") view.delete(w.id);
      else if (t) view.set(w.id, { ...made(w, t), pending: true });
    }
    return view;
  }
  // made is the task as a write makes it of t.
  const made = (w: Write, t: Shown): Shown => {
    const f = (w.fields ?? {}) as TaskUpdate;
    return w.op === "toggle" ? { ...t, completed: !t.completed } : { ...t, ...f, ...(f.title === undefined ? {} : { title: f.title.trim() }) };
  };
  // Tasks by id; those this browser creates, not yet made, last in the order they were made.
  const order = (a: Shown, b: Shown) => ((a.id < 0) === (b.id < 0) ? Math.abs(a.id) - Math.abs(b.id) : a.id < 0 ? 1 : -1);
  function publish() {
    onChange([...shown().values()].sort(order));
    status();
    // The leader keeps the view in the store as it changes, so a reload (offline too) shows it.
    if (leading && cursor && (whole || changed.size)) {
      store.keep(whole ? [...tasks.values()] : [...changed].map((id) => tasks.get(id) ?? id), cursor, whole);
      changed.clear();
      whole = false;
    }
  }

  const changed = new Set<number>(); // ids changed since the store last kept them
  let whole = true; // the store must keep the whole view
  function apply(ev: StreamEvent) {
    if (ev.event !== "ready" && ev.event !== "resync" && ev.event !== "expired") changed.add(ev.data.id);
    if (ev.event === "task.created" || ev.event === "task.updated") {
      const held = tasks.get(ev.data.id);
      if ((deleted.get(ev.data.id) ?? 0) < ev.data.version && (!held || held.version < ev.data.version)) tasks.set(ev.data.id, ev.data);
    } else if (ev.event === "task.deleted") {
      tasks.delete(ev.data.id);
      deleted.set(ev.data.id, Math.max(deleted.get(ev.data.id) ?? 0, ev.data.version));
    }
    if ("id" in ev && ev.id) cursor = ev.id;
  }
  function replace(list: Task[], at: string) {
    whole = true;
    tasks.clear();
    for (const t of list) tasks.set(t.id, t);
    cursor = at;
  }
  async function relist() {
    const asLeader = leading;
    // One try: a leader tries again itself, and says meanwhile that it is offline.
    const { tasks: list, cursor: at } = await api.list({}, { retries: 0 });
    if (stopped) return;
    if (leading) {
      // A list asked for before this tab led may come after the one it asked for since,
      // and be older than the stream it follows: only the leader's own lists count.
      if (!asLeader) return;
      replace(list, at);
      tell({ kind: "snapshot", tasks: list, cursor: at });
    } else if (!synced) {
      // What the leader sent meanwhile may be newer than this list: by version, then.
      for (const t of list) apply({ event: "task.updated", id: "", data: t });
    }
    publish();
  }

  // stream follows from cursor until the token expires, a resync, stop(), or the
  // EventSource gives up (a refusal, which it does not tell).
  async function stream(): Promise<"expired" | "resync" | "refused" | "stopped"> {
    const token = await o.token();
    // stop() may have come while token() ran (a React unmount does it): open nothing then.
    if (stopped || !leading) return "stopped";
    const since = cursor ? `&since=${encodeURIComponent(cursor)}` : "";
    const source = new ES(`${base}/events?access_token=${encodeURIComponent(token)}${since}`);
    return new Promise((resolve) => {
      const end = (how: "expired" | "resync" | "refused" | "stopped") => { source.close(); endStream = () => {}; resolve(how); };
      endStream = () => end("stopped");
      for (const name of ["task.created", "task.updated", "task.deleted", "ready"] as const) {
        source.addEventListener(name, (e) => {
          const ev = { event: name, id: e.lastEventId, data: JSON.parse(e.data) } as StreamEvent;
          apply(ev);
          tell({ kind: "event", event: ev });
          if (name !== "ready") return publish();
          status("live");
          void flush();
        });
      }
      source.addEventListener("resync", () => end("resync"));
      source.addEventListener("expired", () => end("expired"));
      // While CONNECTING the browser reconnects by itself, with Last-Event-ID.
      source.onerror = () => (source.readyState === ES.CLOSED ? end("refused") : status(offline() ? "offline" : "connecting"));
    });
  }

  async function lead() {
    leading = true;
    whole = true;
    status("connecting");
    if (cursor) tell({ kind: "snapshot", tasks: [...tasks.values()], cursor });
    void flush();
    for (let attempt = 0; !stopped && leading; ) {
      try {
        if (!cursor) await relist();
        if (stopped || !leading) break;
        const how = await stream();
        if (how === "resync") {
          cursor = "";
          status("resyncing");
        }
        if (how !== "refused") {
          attempt = 0;
          continue;
        }
        // Refused, or the network is away: HEAD says which, as the EventSource cannot.
        const res = await (o.fetch ?? fetch)(`${base}/events`, { method: "HEAD", credentials: "omit", headers: { Authorization: `Bearer ${await o.token()}` } });
        if (res.status === 403) {
          onError(new ApiError(403, "the token does not grant access to this user's tasks"));
          break;
        }
        // Refused though the route answers: the cursor may be one the server cannot resume
        // from (another database's, say); the next try lists again.
        if (res.ok) cursor = "";
        throw new ApiError(res.status, "the event stream was refused", Number(res.headers.get("Retry-After")) || undefined);
      } catch (err) {
        if (stopped || !leading) break;
        // An API or a network away is a state, not an error; anything else the page hears of.
        if (unreachable(err)) status("offline");
        else {
          onError(err);
          status(offline() ? "offline" : "connecting");
        }
        const retryAfter = err instanceof ApiError && err.retryAfter;
        await nap(retryAfter ? retryAfter * 1000 + Math.random() * 1000 : backoff(attempt++));
      }
    }
    leading = false;
    status();
  }

  // flush sends the queued writes in order, each once: a create or toggle with its own
  // Idempotency-Key, every write on an existing task with If-Match from the version it was
  // made on. It stops at the first whose outcome is unknown, and goes on from it later.
  let flushing = false;
  let flushRetry: ReturnType<typeof setTimeout> | undefined;
  async function flush(attempt = 0) {
    if (flushing || stopped || (store.shared && !leading)) return;
    flushing = true;
    clearTimeout(flushRetry);
    try {
      for (let w: Write | undefined; !stopped && (w = (await store.writes())[0]); attempt = 0) await replay(w);
    } catch (err) {
      if (!unreachable(err)) onError(err);
      else if (offline()) status("offline");
      flushRetry = setTimeout(() => flush(attempt + 1), err instanceof ApiError && err.retryAfter ? err.retryAfter * 1000 : backoff(attempt) + 1000);
    } finally {
      flushing = false;
    }
  }

  // replay sends one write, and settles it: done (the tasks take its result), or a conflict
  // or a refusal (reported, dropped). It throws when the outcome is unknown.
  async function replay(w: Write) {
    const p = { key: w.key, ifMatch: `"${w.base}"`, retries: 1 };
    let result: Task | undefined, theirs: Task | null | undefined, refused: ApiError | undefined;
    try {
      if (w.broken) throw new Conflict(412, "a write it was made on failed");
      if (w.op === "create") result = (await api.create(w.fields as TaskCreate, { key: w.key, retries: 1 })).task;
      else if (w.op === "update") result = await api.update(w.id, w.fields as TaskUpdate, p);
      else if (w.op === "toggle") result = await api.toggle(w.id, p);
      else await api.remove(w.id, p);
    } catch (err) {
      if (transient(err) || !(err instanceof ApiError)) throw err;
      // A 412 may answer this write's own first send, whose answer was lost before a reload.
      let own = false;
      if (err instanceof Conflict && !w.broken && w.op === "update") own = (result = await landed(w.id, w.fields as TaskUpdate)) !== undefined;
      if (err instanceof Conflict && !w.broken && w.op === "remove") own = await gone(w.id);
      if (own) {
        // done after all
      } else if (err instanceof Conflict || (err.status === 404 && w.op !== "create")) {
        theirs = w.id > 0 ? await api.get(w.id).catch((e) => (e instanceof ApiError && e.status === 404 ? null : Promise.reject(e))) : null;
      } else refused = err;
    }
    const failed = theirs !== undefined || refused !== undefined;
    // In one transaction: the write leaves the queue, and the next one made on it takes its
    // result (the task's id, the version to name) or its failure.
    await store.settle(w.seq!, (rest) => {
      const next = rest.find((r) => r.id === w.id && r.after);
      return rest.filter((r) => r.id === w.id).map((r) => {
        const id = result && w.op === "create" ? result.id : r.id;
        const fixed: Write = { ...r, id, was: { ...r.was, id } };
        if (r === next) {
          delete fixed.after;
          if (failed) fixed.broken = true;
          else if (result) fixed.base = result.version;
        }
        return fixed;
      });
    });
    const events: StreamEvent[] = [];
    if (result) events.push({ event: "task.updated", id: "", data: result });
    else if (w.op === "remove" && !failed) events.push({ event: "task.deleted", id: "", data: { id: w.id, version: Number.MAX_SAFE_INTEGER } });
    else if (theirs) events.push({ event: "task.updated", id: "", data: theirs });
    queue = await store.writes();
    for (const ev of events) apply(ev);
    publish();
    tell({ kind: "queue", events });
    if (theirs !== undefined) {
      tell({ kind: "conflict", write: w, theirs, detail: "the task changed since the write was made" });
      conflict(w, theirs, "the task changed since the write was made");
    }
    if (refused) onError(Object.assign(refused, { write: w }));
  }
  function conflict(w: Write, theirs: Task | null, detail: string) {
    const c = new Conflict(412, detail);
    c.write = w;
    c.mine = w.op === "remove" ? null : made(w, w.was);
    c.theirs = theirs;
    (opts.onConflict ?? onError)(c);
  }

  // write queues a write of this tab, shows it, and has the leader send it.
  async function write(op: Write["op"], id: number, fields?: TaskCreate | TaskUpdate): Promise<Shown> {
    await ready;
    if (stopped) throw new Error("follow() was stopped");
    let was: Shown | undefined;
    if (op === "create") {
      // Until it is made, a create shows as a task with a negative id, unique in the browser.
      const { title, description = null } = fields as TaskCreate;
      const now = new Date().toISOString();
      id = -(Date.now() * 1000 + Math.floor(Math.random() * 1000));
      was = { id, user_id: o.userId, title: title.trim(), description, completed: false, created_at: now, updated_at: now, version: 0 };
    } else was = shown().get(id);
    if (!was) throw new ApiError(404, `task ${id} is not among the tasks shown`);
    const w: Write = { op, id, key: newKey(), was };
    if (fields) w.fields = fields;
    if (queue.some((q) => q.id === id)) w.after = true;
    else if (op !== "create") w.base = was.version;
    await store.add(w);
    queue = await store.writes();
    publish();
    tell({ kind: "queue" });
    wake();
    void flush();
    return op === "remove" ? was : op === "create" ? { ...was, pending: true } : { ...made(w, was), pending: true };
  }

  channel?.addEventListener("message", (m: MessageEvent<Message>) => {
    const msg = m.data;
    if (msg.kind === "leader" || msg.kind === "claim" || msg.kind === "bye") return elected?.(msg);
    if (msg.kind === "hello") {
      if (leading && cursor) tell({ kind: "snapshot", tasks: [...tasks.values()], cursor });
      if (leading) tell({ kind: "status", state });
      return;
    }
    if (msg.kind === "queue") {
      void store.writes().then((writes) => {
        queue = writes;
        for (const ev of msg.events ?? []) apply(ev);
        publish();
        void flush();
      });
      return;
    }
    if (msg.kind === "conflict") return conflict(msg.write, msg.theirs, msg.detail);
    if (leading) return;
    if (msg.kind === "status") return status(msg.state);
    elected?.({ kind: "leader", from: "" });
    if (msg.kind === "snapshot") {
      replace(msg.tasks, msg.cursor);
      synced = true;
    } else if (msg.kind === "event") apply(msg.event);
    publish();
  });

  // Without Web Locks (a plain-http origin), the tabs elect a leader on the channel: the
  // leader says so twice a second; a tab that has heard none for 3 s claims the lead, and
  // takes it if no tab with a smaller id claims or leads within 300 ms; of two leaders, the
  // one with the larger id steps down.
  let elected: ((m: { kind: "leader" | "claim" | "bye"; from: string }) => void) | undefined;
  function elect() {
    const me = newKey();
    let heard = Date.now() - 2500; // a new tab waits half a second for a leader to answer its hello
    let claiming = false;
    elected = (m) => {
      if (m.kind === "bye") heard = 0;
      else if (m.kind === "claim") {
        if (leading) tell({ kind: "leader", from: me });
        else if (m.from < me) claiming = false;
      } else {
        heard = Date.now();
        claiming = false;
        if (leading && m.from < me) {
          leading = false;
          endStream();
          wake();
        }
      }
    };
    const beat = setInterval(() => {
      if (stopped) return clearInterval(beat);
      if (leading) return tell({ kind: "leader", from: me });
      if (claiming || Date.now() - heard < 3000) return;
      claiming = true;
      tell({ kind: "claim", from: me });
      setTimeout(() => {
        if (!claiming || stopped) return;
        claiming = false;
        void lead();
      }, 300);
    }, 500);
    globalThis.addEventListener?.("pagehide", () => leading && tell({ kind: "bye", from: me }));
  }

  const online = () => { wake(); void flush(); };
  const away = () => leading && status("offline");
  globalThis.addEventListener?.("online", online);
  globalThis.addEventListener?.("offline", away);

  // Start: the queue and the last view this browser kept, then the lead (or an election).
  const ready = (async () => {
    if (opts.offline !== false && typeof indexedDB === "object") store = (await indexedStore(`taskflow:${o.userId}`)) ?? store;
    const kept = await store.view().catch(() => undefined);
    queue = await store.writes().catch(() => []);
    if (kept && !cursor) replace(kept.tasks, kept.cursor);
    if (kept || queue.length) publish();
  })();
  void ready.then(() => {
    if (stopped) return;
    if (typeof ES !== "function") {
      // Node.js has no EventSource: say so, and follow nothing (calls still work).
      live.stop();
      return onError(new TypeError("follow() needs an EventSource: run it in a browser, or pass one as the EventSource option (Node.js: the eventsource package)"));
    }
    status();
    if (!channel) return void lead();
    // Until the leader's snapshot comes, this tab shows a list of its own.
    tell({ kind: "hello" });
    relist().catch(() => {});
    if (globalThis.navigator?.locks) {
      navigator.locks.request(`taskflow:${o.userId}`, { signal: released.signal }, () => lead()).catch(() => {});
    } else elect();
  });

  const live = {
    /** Creates a task: shown at once (pending, with a negative id until it is made), sent when the API can be reached. */
    create: (task: TaskCreate) => write("create", 0, task),
    /** Changes the fields given, if nobody changed the task since the version shown (else onConflict). */
    update: (id: number, fields: TaskUpdate) => write("update", id, fields),
    toggle: (id: number) => write("toggle", id),
    remove: (id: number) => write("remove", id),
    stop() {
      if (leading) tell({ kind: "bye", from: "" });
      stopped = true;
      endStream();
      wake();
      clearTimeout(flushRetry);
      released.abort();
      channel?.close();
      globalThis.removeEventListener?.("online", online);
      globalThis.removeEventListener?.("offline", away);
      status();
    },
  };
  return live;
}
