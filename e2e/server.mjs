// A real Better Auth server, configured as a TaskFlow frontend would configure it, on
// http://localhost:3000: email/password sign-up, the jwt plugin with TaskFlow's issuer and
// audience, an in-memory store (nothing to compile, nothing left behind), and the pages
// from the same origin that talk to the Go API cross-origin: index.html with fetch and
// EventSource by hand, app.html with the shipped client (client/dist, served at /client/),
// and /control.js, the old README's live updates (control.ts, its types stripped).
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { jwt } from "better-auth/plugins";
import { toNodeHandler } from "better-auth/node";
import ts from "typescript";

export const origin = "http://localhost:3000";

export function startAuthServer(port = 3000) {
  const auth = betterAuth({
    baseURL: origin,
    secret: "e2e-better-auth-secret-of-at-least-32-characters",
    database: memoryAdapter({ user: [], session: [], account: [], verification: [], jwks: [] }),
    emailAndPassword: { enabled: true },
    plugins: [jwt({ jwt: { issuer: "taskflow-web", audience: "taskflow-api" } })],
    telemetry: { enabled: false },
  });
  const authHandler = toNodeHandler(auth);
  const page = readFile(new URL("./index.html", import.meta.url));
  const here = (f) => new URL(f, import.meta.url);
  const files = {
    "/app.html": ["text/html; charset=utf-8", () => readFile(here("./app.html"))],
    "/client/taskflow.js": ["text/javascript; charset=utf-8", () => readFile(here("../client/dist/taskflow.js"))],
    "/control.js": ["text/javascript; charset=utf-8", async () =>
      ts.transpileModule(await readFile(here("./control.ts"), "utf8"), { compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ES2022 } }).outputText],
  };

  const server = createServer(async (req, res) => {
    if (req.url.startsWith("/api/auth/")) return authHandler(req, res);
    if (req.url === "/" || req.url.startsWith("/?")) {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
      return res.end(await page);
    }
    const path = req.url.split("?")[0];
    if (files[path]) {
      const [type, read] = files[path];
      res.writeHead(200, { "Content-Type": type, "Cache-Control": "no-store" });
      return res.end(await read());
    }
    res.writeHead(404).end();
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}
