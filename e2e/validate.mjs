// Checks recorded traffic (proxy.mjs) against openapi.json with ajv (JSON Schema 2020-12,
// the dialect of OpenAPI 3.1, and ajv-formats): each answer's status is documented for its
// operation; every header the document marks required is there and every documented
// header's value fits its schema; a JSON body fits its schema; 204s, 304s and HEADs have no
// body; each Server-Sent Event, as {event, id, data}, fits components/schemas/StreamEvent.
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

export function makeValidator(doc) {
  // The document's schemas become one JSON Schema, "openapi", whose $defs they are; every
  // "#/components/schemas/X" reference is rewritten to point there.
  const rewrite = (v) => Array.isArray(v) ? v.map(rewrite) : v && typeof v === "object"
    ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, k === "$ref" && typeof x === "string" && x.startsWith("#/components/schemas/") ? `openapi#/$defs/${x.slice(21)}` : rewrite(x)]))
    : v;
  const d = rewrite(doc);
  const ajv = new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true });
  addFormats(ajv);
  ajv.addVocabulary(["discriminator"]); // OpenAPI's hint for code generators; oneOf decides here
  ajv.addSchema({ $id: "openapi", $defs: d.components.schemas });
  const compiled = new Map();
  const compile = (schema) => {
    if (!compiled.has(schema)) compiled.set(schema, ajv.compile(schema));
    return compiled.get(schema);
  };
  const streamEvent = compile({ $ref: "openapi#/$defs/StreamEvent" });
  const deref = (o) => {
    while (o?.$ref) o = o.$ref.slice(2).split("/").reduce((x, k) => x[k.replace(/~1/g, "/").replace(/~0/g, "~")], d);
    return o;
  };
  const routes = Object.entries(d.paths).map(([template, item]) => ({
    template, item,
    re: new RegExp(`^${template.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{[^}]+\}/g, "[^/]+")}$`),
  }));
  const errorsOf = (v) => ajv.errorsText(v.errors, { dataVar: "" });

  /** The violations of one exchange (strings); an exchange without an answer has none. */
  function check(ex) {
    const where = `#${ex.seq} ${ex.method} ${ex.path}${ex.status ? ` -> ${ex.status}` : ""}`;
    const out = [];
    const bad = (what) => out.push(`${where}: ${what.length > 300 ? `${what.slice(0, 300)}...` : what}`);
    const route = routes.find((r) => r.re.test(ex.path));
    if (!route) return bad("no path of the document matches"), out;
    const op = route.item[ex.method.toLowerCase()];
    if (!methods.includes(ex.method.toLowerCase()) || !op) return bad(`${route.template} documents no ${ex.method}`), out;
    if (ex.status === undefined) return out;
    const response = deref(op.responses[String(ex.status)] ?? op.responses[`${String(ex.status)[0]}XX`] ?? op.responses.default);
    if (!response) return bad(`status ${ex.status} is not documented for ${op.operationId} (${Object.keys(op.responses).join(", ")})`), out;

    for (const [name, h0] of Object.entries(response.headers ?? {})) {
      const h = deref(h0);
      const value = ex.headers[name.toLowerCase()];
      if (value === undefined) {
        if (h.required) bad(`required header ${name} is missing`);
        continue;
      }
      if (h.schema) {
        const v = compile(h.schema);
        if (!v(value)) bad(`header ${name}: ${JSON.stringify(value)} ${errorsOf(v)}`);
      }
    }

    const bodyless = ex.method === "HEAD" || ex.status === 204 || ex.status === 304;
    if (bodyless) {
      const head = ex.wire.indexOf("\r\n\r\n") + 4;
      const extra = head >= 4 ? ex.wire.length - head : 0;
      if (ex.bodyBytes > 0 || ex.events?.length || extra > 0) bad(`a ${ex.method === "HEAD" ? "HEAD" : ex.status} answer with a body (${ex.bodyBytes || extra} bytes)`);
      return out;
    }
    const type = (ex.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
    const content = response.content ?? {};
    if (!Object.keys(content).length) {
      if (ex.bodyBytes > 0) bad(`a body (${type || "no type"}, ${ex.bodyBytes} bytes) where the document has none`);
      return out;
    }
    const media = content[type];
    if (!media) return bad(`Content-Type ${JSON.stringify(ex.headers["content-type"])} is not one of ${Object.keys(content).join(", ")}`), out;
    if (type === "text/event-stream") {
      if (ex.sse.first !== undefined && !/^retry: \d+$/.test(ex.sse.first)) bad(`the stream begins with ${JSON.stringify(ex.sse.first)}, not a retry: line`);
      for (const e of ex.events) {
        let data;
        try { data = JSON.parse(e.data); } catch { bad(`event ${e.event}: data is not JSON: ${e.data.slice(0, 80)}`); continue; }
        const ev = { event: e.event, ...(e.id !== undefined ? { id: e.id } : {}), data };
        if (!streamEvent(ev)) bad(`event ${JSON.stringify(ev).slice(0, 160)} does not fit StreamEvent: ${errorsOf(streamEvent)}`);
      }
      return out;
    }
    if (type === "application/json") {
      if (!ex.complete || ex.truncated) return out; // cut short: nothing whole to check
      let body;
      try { body = JSON.parse(Buffer.concat(ex.body).toString("utf8")); } catch (err) { return bad(`the body is not JSON: ${err.message}`), out; }
      const v = compile(media.schema ?? {});
      if (!v(body)) bad(`body ${errorsOf(v)}`);
    }
    return out;
  }
  return { check };
}
