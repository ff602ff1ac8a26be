// A real Better Auth server, configured as a TaskFlow frontend would configure it, on
// http://localhost:3000: email/password sign-up, the jwt plugin with TaskFlow's issuer and
// audience, an in-memory store (nothing to compile, nothing left behind), and the pages
// from the same origin that talk to the Go API cross-origin: index.html with fetch and
// EventSource by hand, app.html with the shipped client (client/dist, served at /client/),
// /control.js, the old README's live updates (control.ts, its types stripped), and under
// /next/ the Next.js page of e2e/next, built.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { jwt } from "better-auth/plugins";
import { toNodeHandler } from "better-auth/node";
import ts from "typescript";

export const origin = "http://localhost:3000";

// The Next.js page's static export (e2e/next/out, made by next build in scripts/e2e.sh).
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css", ".txt": "text/plain; charset=utf-8", ".json": "application/json", ".ico": "image/x-icon", ".woff2": "font/woff2", ".svg": "image/svg+xml" };
async function serveNext(rest, res) {
  const out = new URL("./next/out/", import.meta.url);
  const name = decodeURIComponent(rest).replace(/^\/+/, "") || "index.html";
  const file = new URL(name.includes(".") ? name : `${name}.html`, out);
  if (!file.href.startsWith(out.href)) return res.writeHead(404).end();
  try {
    const body = await readFile(file);
    res.writeHead(200, { "Content-Type": types[name.slice(name.lastIndexOf("."))] ?? "application/octet-stream", "Cache-Control": "no-store" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
}

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
    if (path === "/next" || path.startsWith("/next/")) return serveNext(path.slice(5), res);
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
