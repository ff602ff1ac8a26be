// A real Better Auth server, configured as a TaskFlow frontend would configure it, on
// http://localhost:3000: email/password sign-up, the jwt plugin with TaskFlow's issuer and
// audience, an in-memory store (nothing to compile, nothing left behind), and one page
// from the same origin that talks to the Go API cross-origin.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { jwt } from "better-auth/plugins";
import { toNodeHandler } from "better-auth/node";

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

  const server = createServer(async (req, res) => {
    if (req.url.startsWith("/api/auth/")) return authHandler(req, res);
    if (req.url === "/" || req.url.startsWith("/?")) {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
      return res.end(await page);
    }
    res.writeHead(404).end();
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}
