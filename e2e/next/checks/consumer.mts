// The client as a consumer with strict settings compiles it (tsconfig.json beside this file):
// NodeNext, exactOptionalPropertyTypes, erasableSyntaxOnly, and the package's own .d.ts checked.
import { createClient, newKey, ApiError, Conflict, type Task, type Shown, type Status, type Live } from "@taskflow/client";

const api = createClient({ baseUrl: "http://localhost:8000", userId: "u1", token: () => "t", timeout: 5000 });
const signal: AbortSignal | undefined = undefined;
export async function use(): Promise<Task> {
  const { task } = await api.create({ title: "Buy milk" }, { key: "k1", signal });
  const again = await api.create({ title: "Buy milk" }, newKey());
  await api.update(task.id, { description: null }, { ifMatch: again.task });
  const live: Live = api.follow((tasks: Shown[]) => tasks.length, {
    onStatus: (s: Status) => s.state === "live",
    onConflict: (c: Conflict) => c.theirs?.version,
    onError: (err) => err instanceof ApiError && err.status,
  });
  await live.toggle(task.id);
  live.stop();
  return api.toggle(task.id, { ifMatch: task });
}
