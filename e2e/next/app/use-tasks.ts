"use client";
// The hook of client/README.md, as a page would copy it.
import { useEffect, useState } from "react";
import type { Client, Live, Shown, Status } from "@taskflow/client";

export function useTasks(api: Client | undefined) {
  const [tasks, setTasks] = useState<Shown[]>([]);
  const [status, setStatus] = useState<Status>();
  const [live, setLive] = useState<Live>();
  useEffect(() => {
    if (!api) return;
    const following = api.follow(setTasks, { onStatus: setStatus });
    setLive(following);
    return () => following.stop(); // on unmount, even while follow() is still starting
  }, [api]);
  return { tasks, status, live };
}
