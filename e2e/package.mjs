// The client as a package (issue 26): scripts/e2e.sh packs it (npm pack), installs the
// tarball into a Next.js app (e2e/next, npm install) and builds that app (next build).
// Here: the installed package's manifest, its types as a consumer sees them (defect 9: with
// skipLibCheck, as Next.js sets it, a wrong Task must still fail to compile; under strict
// NodeNext settings, a right one compiles), and the built page in Chromium, following and
// writing through the package.
import { spawnSync } from "node:child_process";
import { readFileSync, existsSync } from "node:fs";
import { check, eq, section, until, differing, nodeClient } from "./harness.mjs";

const here = (p) => new URL(p, import.meta.url).pathname;
const tsc = (project) => spawnSync(here("./next/node_modules/.bin/tsc"), ["-p", project], { encoding: "utf8", timeout: 120_000 });

export async function packageScenario({ openApp, alice, apiURL, origin }) {
  section("the client installed as a package, in a Next.js page (issue 26)");
  const installed = here("./next/node_modules/@taskflow/client/package.json");
  if (!existsSync(installed)) return check("the packed client is installed in e2e/next (scripts/e2e.sh)", false);
  const pkg = JSON.parse(readFileSync(installed, "utf8"));
  check("the installed package is public ESM with an exports map and types",
    !pkg.private && pkg.type === "module" && pkg.exports?.["."]?.types && pkg.exports?.["."]?.default, JSON.stringify(pkg).slice(0, 300));
  check("its dist has the API's schema types beside the client's", existsSync(here("./next/node_modules/@taskflow/client/dist/schema.d.ts")));

  const nonsense = tsc(here("./next/checks/tsconfig.nonsense.json"));
  check("defect 9: `const t: Task = {nonsense: 1}` fails to compile for a consumer with skipLibCheck",
    nonsense.status !== 0 && /nonsense/.test(nonsense.stdout), nonsense.stdout.slice(0, 500) || `tsc exited ${nonsense.status}`);
  const strict = tsc(here("./next/checks/tsconfig.json"));
  eq("a consumer compiles against it under strict, NodeNext, exactOptionalPropertyTypes and erasableSyntaxOnly (tsc errors)",
    strict.status === 0 ? "" : strict.stdout.slice(0, 800), "");

  const built = existsSync(here("./next/out/index.html"));
  check("next build made the page", built);
  if (!built) return;
  const browser = await openApp("next-page");
  const page = await browser.context.newPage();
  page.on("pageerror", (err) => console.error(`[next-page] ${err.message}`));
  await page.goto(`${origin}/app.html`);
  await page.waitForFunction(() => window.tf !== undefined);
  await page.evaluate((e) => tf.signIn(e), alice.email);
  await page.goto(`${origin}/next/?api=${encodeURIComponent(apiURL)}`);
  const node = nodeClient(apiURL, alice.userId, alice.token);
  const db = (await node.list()).tasks;
  const shown = () => page.$$eval("#tasks li", (lis) => lis.map((li) => ({ id: Number(li.dataset.id), pending: li.dataset.pending, text: li.textContent.trim() })));
  const live = await until(async () => /^live, leader/.test(await page.textContent("#status")) && (await shown()).length === db.length, 15_000, 100);
  check("the Next.js page follows the user's tasks through the hook, and says it is live and leads", live, `${await page.textContent("#status")}; ${(await shown()).length} of ${db.length}`);
  await page.fill("#title", "added in the Next.js page");
  await page.click("button[type=submit]");
  const made = await until(async () => (await node.list()).tasks.find((t) => t.title === "added in the Next.js page"), 10_000, 100);
  check("a task added through the page's form is made", made);
  const after = (await node.list()).tasks;
  const equal = await until(async () => {
    const view = await shown();
    return view.length === after.length && view.every((t) => t.pending === "no") && differing(view.map((t) => ({ ...after.find((a) => a.id === t.id) })), after).length === 0;
  }, 10_000, 100);
  check("the page then shows it, made, beside every other task", equal);
  await browser.context.close();
}
