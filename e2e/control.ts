// The CONTROL of make e2e's reconnect scenario: live updates as README.md told a frontend
// to follow them before the feed of changes (the "Live updates" recipe at commit 4049bf7):
// an EventSource, and on every `ready` the whole list fetched again and put in place of
// the page's list. The function between the markers is that recipe, verbatim; run.mjs
// checks it against `git show 4049bf7:README.md` when the history is there. What it
// assumed of its page (`tasks`, the list's URL; `getToken`; the type `Task`) is supplied
// above it. server.mjs serves this file as /control.js, its types stripped by TypeScript.
type Task = { id: number; version: number };
let tasks = "";
let getToken: () => Promise<string> = async () => "";
export function setup(listURL: string, tokens: () => Promise<string>) {
  tasks = listURL;
  getToken = tokens;
}
export { follow };

// ---- verbatim from git show 4049bf7:README.md ----
async function follow(onList: (t: Task[]) => void, onEvent: (name: string, data: any) => void) {
  const token = await getToken(); // a fresh one on every reopen
  const url = `${tasks.replace(/tasks$/, "events")}?access_token=${token}`;
  const events = new EventSource(url, { withCredentials: true });
  const refetch = async () => {
    const res = await fetch(tasks, { headers: { Authorization: `Bearer ${token}` } });
    if (res.ok) onList(await res.json());
  };
  events.addEventListener("ready", refetch);   // subscribed: now the list misses nothing
  events.addEventListener("resync", refetch);  // the server may have missed changes
  for (const name of ["task.created", "task.updated", "task.deleted"])
    events.addEventListener(name, (e) => onEvent(name, JSON.parse(e.data)));
  const reopen = () => { events.close(); setTimeout(() => follow(onList, onEvent), 1000); };
  events.addEventListener("expired", reopen);  // a fresh token, a new stream
  events.onerror = reopen;
}
// ---- end verbatim ----
