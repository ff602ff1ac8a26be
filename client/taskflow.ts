// A small typed client of the TaskFlow API. Its types come from ../openapi.json
// (schema.d.ts, made by `npm run generate`). It calls every endpoint and gets the hard
// parts right: creates and toggles carry an Idempotency-Key and are retried after a
// network error or a 503; a 429 waits for its Retry-After; a 412 is a Conflict; and
// follow() keeps a user's tasks as the feed of changes says, in any number of tabs of a
// browser over one stream. Calls send no cookies (credentials: "omit"): a bearer token
// needs none, and a credentialed EventSource would take a connection of the browser's
// six per host that credentialed writes need.
import type { components, operations } from "./schema";

type Schemas = components["schemas"];
export type Task = Schemas["Task"];
export type TaskCreate = Schemas["TaskCreate"];
export type TaskUpdate = Schemas["TaskUpdate"];
export type ChangesPage = Schemas["ChangesPage"];
export type StreamEvent = Schemas["StreamEvent"];
export type ListQuery = NonNullable<operations["listTasks"]["parameters"]["query"]>;

export interface Options {
  baseUrl: string; // the API's origin, such as "http://localhost:8000"
  userId: string;
  token: () => string | Promise<string>; // a token that is valid now (Better Auth: authClient.token())
  fetch?: typeof fetch;
  retries?: number; // how often a call is sent again after a network error, a 503 or a 429 (4)
}

/** An error answer of the API: its status, {"detail"}, and Retry-After in seconds. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly detail: string, readonly retryAfter?: number) {
    super(`${status}: ${detail}`);
  }
}

/** A 412: the task changed since the version the write named. Get it again, then decide. */
export class Conflict extends ApiError {}

/** What a write may name: the version it was decided on (the task, or its ETag). */
export interface Precondition {
  ifMatch?: Task | string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// Exponential, from 250 ms to 10 s, with full jitter: clients cut off together come back apart.
const backoff = (attempt: number) => Math.random() * Math.min(10_000, 250 * 2 ** attempt);

export function createClient(o: Options) {
  const base = `${o.baseUrl.replace(/\/$/, "")}/api/${encodeURIComponent(o.userId)}`;
  const send = o.fetch ?? globalThis.fetch.bind(globalThis);
  const retries = o.retries ?? 4;

  // call sends a request, again after a 429 (nothing was done), and after a network error
  // or a 503 when sending it again cannot do it twice (idempotent).
  async function call(method: string, path: string, opts: { body?: unknown; headers?: Record<string, string>; idempotent: boolean }) {
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { Authorization: `Bearer ${await o.token()}`, ...opts.headers };
      if (opts.body !== undefined) headers["Content-Type"] = "application/json";
      let res: Response;
      try {
        res = await send(base + path, { method, headers, credentials: "omit", body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
      } catch (err) {
        if (!opts.idempotent || attempt >= retries) throw err;
        await sleep(backoff(attempt));
        continue;
      }
      if (res.ok || res.status === 304) return res;
      const retryAfter = Number(res.headers.get("Retry-After")) || undefined;
      const again = res.status === 429 || (res.status === 503 && opts.idempotent);
      if (again && attempt < retries) {
        await sleep(retryAfter ? retryAfter * 1000 + Math.random() * 250 : backoff(attempt));
        continue;
      }
      const detail = ((await res.json().catch(() => ({}))) as { detail?: string }).detail ?? res.statusText;
      throw new (res.status === 412 ? Conflict : ApiError)(res.status, detail, retryAfter);
    }
  }
  const etag = (p?: Precondition): Record<string, string> =>
    p?.ifMatch === undefined ? {} : { "If-Match": typeof p.ifMatch === "string" ? p.ifMatch : `"${p.ifMatch.version}"` };
  const json = async <T>(res: Promise<Response>) => (await (await res).json()) as T;

  const api = {
    /** The user's tasks (all of them without a limit), their count, and the list's place in the feed. */
    async list(query: ListQuery = {}) {
      const q = new URLSearchParams(Object.entries(query).map(([k, v]) => [k, String(v)]));
      const res = await call("GET", `/tasks${q.size ? `?${q}` : ""}`, { idempotent: true });
      return { tasks: (await res.json()) as Task[], total: Number(res.headers.get("X-Total-Count")), cursor: res.headers.get("X-Cursor") ?? "" };
    },
    get: (id: number) => json<Task>(call("GET", `/tasks/${id}`, { idempotent: true })),
    /** Creates a task once, however often it must be sent; url is its Location, resolved. */
    async create(task: TaskCreate, key: string = crypto.randomUUID()) {
      const res = await call("POST", "/tasks", { body: task, headers: { "Idempotency-Key": key }, idempotent: true });
      return { task: (await res.json()) as Task, url: new URL(res.headers.get("Location") ?? "", o.baseUrl).href, replayed: res.headers.has("Idempotent-Replayed") };
    },
    /** Changes the fields given; with ifMatch, only if nobody changed the task since (else Conflict). */
    update: (id: number, fields: TaskUpdate, p?: Precondition) =>
      json<Task>(call("PUT", `/tasks/${id}`, { body: fields, headers: etag(p), idempotent: true })),
    /** Flips completed once, however often it must be sent. */
    toggle: (id: number, p?: Precondition, key: string = crypto.randomUUID()) =>
      json<Task>(call("PATCH", `/tasks/${id}/complete`, { headers: { ...etag(p), "Idempotency-Key": key }, idempotent: true })),
    /** Deletes a task; deleting one already gone (a retry whose first try landed) is no error. */
    async remove(id: number, p?: Precondition) {
      await call("DELETE", `/tasks/${id}`, { headers: etag(p), idempotent: true }).catch((err) => {
        if (!(err instanceof ApiError && err.status === 404)) throw err;
      });
    },
    /** One page of the feed after since (none: a full sync); a 410 means list again. */
    changes: (since?: string, limit?: number) =>
      json<ChangesPage>(call("GET", `/changes?${new URLSearchParams({ ...(since ? { since } : {}), ...(limit ? { limit: String(limit) } : {}) })}`, { idempotent: true })),
    follow: (onChange: (tasks: Task[]) => void, onError?: (err: unknown) => void) => follow(api, o, base, onChange, onError),
  };
  return api;
}

type Client = ReturnType<typeof createClient>;
type Message = { kind: "event"; event: StreamEvent } | { kind: "snapshot"; tasks: Task[]; cursor: string } | { kind: "hello" };

// follow keeps the user's tasks, calling onChange with all of them after every change, until
// stop(). It lists once and follows the event stream from the list's cursor, keeping the
// highest version of each task; the stream resumes by itself from its last event, and
// after an expired token (a fresh one), a 401, a 429 or an outage from its cursor; a
// resync lists again; a 403 stops it. In a browser, the tabs of a user share one stream:
// the tab that holds a Web Lock follows, and tells the others what it reads on a
// BroadcastChannel; when it goes, another takes over from where it was.
function follow(api: Client, o: Options, base: string, onChange: (tasks: Task[]) => void, onError = (err: unknown) => console.error(err)) {
  const tasks = new Map<number, Task>();
  const deleted = new Map<number, number>(); // id → the version of its deletion
  let cursor = "";
  let stopped = false;
  let leading = false;
  let synced = false; // a leader's snapshot has come: this tab's own list no longer counts
  let endStream = () => {};
  const released = new AbortController();
  const publish = () => onChange([...tasks.values()].sort((a, b) => a.id - b.id));
  const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(`taskflow:${o.userId}`) : undefined;
  const tell = (m: Message) => channel?.postMessage(m);

  function apply(ev: StreamEvent) {
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
    tasks.clear();
    for (const t of list) tasks.set(t.id, t);
    cursor = at;
  }
  async function relist() {
    const asLeader = leading;
    const { tasks: list, cursor: at } = await api.list();
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
  async function stream(): Promise<"expired" | "resync" | "refused"> {
    const since = cursor ? `&since=${encodeURIComponent(cursor)}` : "";
    const source = new EventSource(`${base}/events?access_token=${encodeURIComponent(await o.token())}${since}`);
    return new Promise((resolve) => {
      const end = (how: "expired" | "resync" | "refused") => { source.close(); resolve(how); };
      endStream = () => end("refused");
      for (const name of ["task.created", "task.updated", "task.deleted", "ready"] as const) {
        source.addEventListener(name, (e) => {
          const ev = { event: name, id: e.lastEventId, data: JSON.parse(e.data) } as StreamEvent;
          apply(ev);
          tell({ kind: "event", event: ev });
          if (name !== "ready") publish();
        });
      }
      source.addEventListener("resync", () => end("resync"));
      source.addEventListener("expired", () => end("expired"));
      // While CONNECTING the browser reconnects by itself, with Last-Event-ID.
      source.onerror = () => source.readyState === EventSource.CLOSED && end("refused");
    });
  }

  async function lead() {
    leading = true;
    if (!cursor) await relist().catch(onError);
    else tell({ kind: "snapshot", tasks: [...tasks.values()], cursor });
    for (let attempt = 0; !stopped; ) {
      const how = await stream();
      if (stopped) return;
      if (how === "expired") continue;
      if (how === "resync") {
        await relist().catch(onError);
        continue;
      }
      // Refused, or the network is away: HEAD says which, as the EventSource cannot.
      const res = await (o.fetch ?? fetch)(`${base}/events`, { method: "HEAD", credentials: "omit", headers: { Authorization: `Bearer ${await o.token()}` } }).catch(() => undefined);
      if (res?.status === 403) return onError(new ApiError(403, "the token does not grant access to this user's tasks"));
      const retryAfter = Number(res?.headers.get("Retry-After"));
      await sleep(retryAfter ? retryAfter * 1000 + Math.random() * 1000 : backoff(attempt++));
      if (res?.ok) attempt = 0;
    }
  }

  channel?.addEventListener("message", (m: MessageEvent<Message>) => {
    const msg = m.data;
    if (msg.kind === "hello") {
      if (leading && cursor) tell({ kind: "snapshot", tasks: [...tasks.values()], cursor });
      return;
    }
    if (leading) return;
    if (msg.kind === "snapshot") {
      replace(msg.tasks, msg.cursor);
      synced = true;
    } else apply(msg.event);
    publish();
  });

  if (channel && globalThis.navigator?.locks) {
    // Until the leader's snapshot comes, this tab shows a list of its own.
    tell({ kind: "hello" });
    relist().catch(onError);
    navigator.locks.request(`taskflow:${o.userId}`, { signal: released.signal }, () => lead()).catch(() => {});
  } else {
    lead();
  }
  return {
    stop() {
      stopped = true;
      endStream();
      released.abort();
      channel?.close();
    },
  };
}
