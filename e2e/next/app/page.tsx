"use client";
// The user's tasks, live, with a form that adds one: the client from its installed package,
// Better Auth's session on this origin for the user and the tokens.
import { useEffect, useState, type FormEvent } from "react";
import { createClient, type Client } from "@taskflow/client";
import { useTasks } from "./use-tasks";

const token = async () => ((await (await fetch("/api/auth/token")).json()) as { token: string }).token;

export default function Page() {
  const [api, setApi] = useState<Client>();
  const [title, setTitle] = useState("");
  useEffect(() => {
    const baseUrl = new URLSearchParams(location.search).get("api") ?? "http://localhost:8000";
    void fetch("/api/auth/get-session")
      .then((res) => res.json() as Promise<{ user?: { id: string } } | null>)
      .then((session) => session?.user && setApi(createClient({ baseUrl, userId: session.user.id, token })));
  }, []);
  const { tasks, status, live } = useTasks(api);
  const add = (e: FormEvent) => {
    e.preventDefault();
    void live?.create({ title });
    setTitle("");
  };
  return (
    <main>
      <p id="status">{status ? `${status.state}${status.leader ? ", leader" : ""}, ${status.pending} pending` : "signing in"}</p>
      <form onSubmit={add}>
        <input id="title" value={title} onChange={(e) => setTitle(e.target.value)} />
        <button type="submit">Add</button>
      </form>
      <ul id="tasks">
        {tasks.map((t) => (
          <li key={t.id} data-id={t.id} data-pending={t.pending ? "yes" : "no"}>
            <label>
              <input type="checkbox" checked={t.completed} onChange={() => void live?.toggle(t.id)} /> {t.title}
            </label>
          </li>
        ))}
      </ul>
    </main>
  );
}
