// A recording proxy in front of the API: the browser and every check talk to :8000, the
// API listens on 127.0.0.1:8001. Everything is forwarded as it comes (event streams chunk
// by chunk, with backpressure; preflights too), and each exchange is recorded for
// validate.mjs: method, path, query, request headers, status, response headers, the body
// up to a bound, and for an event stream each event. The harness can also cut every open
// event stream (a forced reconnect) and count the /events connections open at once.
import { createServer, request } from "node:http";

// Hop-by-hop headers are the proxy's own business on each side, never forwarded.
const hopByHop = new Set(["connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"]);
const forwardable = (raw) => raw.flatMap((v, i) => (i % 2 === 0 && !hopByHop.has(v.toLowerCase()) ? [v, raw[i + 1]] : []));

// headerMap joins repeated headers with ", " (RFC 9110 5.3), keyed in lower case.
function headerMap(raw) {
  const out = {};
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i].toLowerCase();
    out[k] = k in out ? `${out[k]}, ${raw[i + 1]}` : raw[i + 1];
  }
  return out;
}

// The tag a browser context puts in its User-Agent (run.mjs): which "browser" a request is from.
export const browserOf = (ex) => /taskflow-e2e\/(\S+)/.exec(ex.request.headers["user-agent"] ?? "")?.[1] ?? "node";
export const isEventStream = (ex) => ex.method === "GET" && /^\/api\/[^/]+\/events$/.test(ex.path);

export function startProxy({ port = 8000, upstreamPort = 8001, bodyLimit = 4 << 20 } = {}) {
  const exchanges = [];
  const open = new Set(); // event streams in flight: from the request until either side closes
  const watchers = new Set();
  const gates = [];
  const blocks = new Set(); // predicates: a matching request is dropped at once (the network is away)
  const stalls = new Set(); // {match, held}: a matching request is never answered until release()

  // SSE parsing, as a browser does it (fields, blank line dispatches): each event is kept
  // as {event, id?, data}; id only when the event's own lines carried one.
  function parseEvents(ex, text) {
    const s = ex.sse;
    s.buf += text;
    const lines = s.buf.split(/\r\n|\r|\n/);
    s.buf = lines.pop();
    for (const line of lines) {
      if (s.first === undefined) s.first = line;
      if (line === "") {
        if (s.data.length) ex.events.push({ event: s.event ?? "message", ...(s.id !== undefined ? { id: s.id } : {}), data: s.data.join("\n"), at: Date.now() });
        s.event = s.id = undefined;
        s.data = [];
        continue;
      }
      if (line.startsWith(":")) { s.comments++; continue; }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") s.event = value;
      else if (field === "data") s.data.push(value);
      else if (field === "id") s.id = value;
      else if (field === "retry") s.retry = value;
    }
  }

  function closeStream(ex) {
    if (!open.delete(ex)) return;
    ex.closedAt = Date.now();
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://proxy");
    const ex = {
      seq: exchanges.length, startedAt: Date.now(), method: req.method, path: url.pathname,
      query: Object.fromEntries(url.searchParams), request: { headers: headerMap(req.rawHeaders) },
      status: undefined, headers: undefined, body: [], bodyBytes: 0, truncated: false, events: undefined,
      complete: false, cut: false, clientLeft: false, error: undefined, wire: Buffer.alloc(0),
    };
    if (ex.query.access_token) ex.query.access_token = "(token)"; // kept out of the record, as the API keeps it out of its log
    exchanges.push(ex);
    if ([...blocks].some((match) => match(ex))) {
      ex.error = "blocked by the harness";
      return req.socket.destroy();
    }
    const stall = [...stalls].find((s) => s.match(ex));
    if (stall) {
      ex.error = "stalled by the harness";
      return stall.held.push(req);
    }
    const stream = isEventStream(ex);
    if (stream) {
      open.add(ex);
      for (const w of watchers) if (w.match(ex)) w.max = Math.max(w.max, [...open].filter(w.match).length);
    }

    // A gate (gate() below) may hold this exchange: its request before it goes on, or its
    // whole answer before the caller gets any of it.
    const gated = { request: undefined, response: undefined };
    for (const g of gates) if (g.match(ex) && ++g.seen === g.nth) gated[g.at] = g;
    let up;
    ex.cutNow = () => { ex.cut = true; up?.destroy(); res.destroy(); closeStream(ex); };
    // What the API sends when a stream's token expires; the API's own stream is dropped.
    ex.expireNow = () => { ex.cut = true; up?.destroy(); res.end("event: expired\ndata: {}\n\n"); closeStream(ex); };
    const record = (chunk) => {
      if (ex.sse) parseEvents(ex, ex.sse.decoder.decode(chunk, { stream: true }));
      else if (ex.bodyBytes + chunk.length <= bodyLimit) ex.body.push(chunk);
      else ex.truncated = true;
      ex.bodyBytes += chunk.length;
    };
    const forward = () => {
      up = request({ host: "127.0.0.1", port: upstreamPort, method: req.method, path: req.url, headers: forwardable(req.rawHeaders), agent: false });
      // The first bytes off the wire, as they came: a body after a bodiless answer (HEAD,
      // 204, 304) is dropped by Node's parser, but shows here when it came with the head.
      up.on("socket", (sock) => sock.on("data", (d) => { if (ex.wire.length < 8192) ex.wire = Buffer.concat([ex.wire, d]).subarray(0, 8192); }));
      req.on("error", () => up.destroy());
      req.pipe(up);
      up.on("error", (err) => {
        // The API is away (restarting) or dropped the connection: so does the proxy, and the
        // caller sees what it would have seen without one, a network error.
        ex.error ??= err.code || err.message;
        res.destroy();
        closeStream(ex);
      });
      up.on("response", (ur) => {
        ex.status = ur.statusCode;
        ex.headers = headerMap(ur.rawHeaders);
        if (/^text\/event-stream/i.test(ex.headers["content-type"] ?? "")) {
          ex.events = [];
          ex.sse = { buf: "", data: [], comments: 0, decoder: new TextDecoder() };
        }
        const lost = () => { if (!ex.complete) { ex.error ??= "the API dropped the connection"; res.destroy(); closeStream(ex); } };
        ur.on("aborted", lost);
        ur.on("error", lost);
        const finish = () => { ex.complete = true; ex.endedAt = Date.now(); res.end(); closeStream(ex); };
        if (gated.response) {
          const chunks = [];
          ur.on("data", (chunk) => { record(chunk); chunks.push(chunk); });
          ur.on("end", async () => {
            gated.response.hold();
            await gated.response.released;
            res.writeHead(ur.statusCode, forwardable(ur.rawHeaders));
            for (const c of chunks) res.write(c);
            finish();
          });
          return;
        }
        res.writeHead(ur.statusCode, forwardable(ur.rawHeaders));
        res.flushHeaders();
        ur.on("data", (chunk) => {
          record(chunk);
          if (!res.write(chunk)) {
            ur.pause();
            res.once("drain", () => ur.resume());
          }
        });
        ur.on("end", finish);
      });
    };
    if (gated.request) {
      gated.request.hold();
      gated.request.released.then(forward);
    } else forward();
    res.on("close", () => {
      if (!res.writableFinished && !ex.cut && ex.error === undefined) {
        ex.clientLeft = true;
        up?.destroy();
      }
      closeStream(ex);
    });
  });

  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve({
      exchanges,
      /** The event streams open now that match (an exchange predicate). */
      openStreams: (match = () => true) => [...open].filter(match),
      /** Cuts every open event stream (that matches), as a network or a balancer would. */
      cutStreams(match = () => true) {
        const cut = [...open].filter(match);
        for (const ex of cut) ex.cutNow();
        return cut.length;
      },
      /** Ends every open event stream that matches with `event: expired`, as the API does when its token expires. */
      expireStreams(match = () => true) {
        const ended = [...open].filter(match);
        for (const ex of ended) ex.expireNow();
        return ended.length;
      },
      /** Drops every request that matches, from now until the returned function is called. */
      block(match) {
        blocks.add(match);
        return () => blocks.delete(match);
      },
      /** Accepts every request that matches and never answers it, until the returned function drops them. */
      stall(match) {
        const s = { match, held: [] };
        stalls.add(s);
        return () => { stalls.delete(s); for (const req of s.held) req.socket.destroy(); };
      },
      /** Tracks the most event streams open at once that match, from now until stop(). */
      watchStreams(match) {
        const w = { match, max: [...open].filter(match).length, stop: () => watchers.delete(w) };
        watchers.add(w);
        return w;
      },
      /**
       * Holds the nth exchange that matches (counted from now): at "request", before it
       * reaches the API; at "response", once the API has answered it whole, before the
       * caller gets any of it. held resolves when it is held; release() lets it go on.
       */
      gate(match, at, nth = 1) {
        let release, hold;
        const g = { match, at, nth, seen: 0, released: new Promise((r) => (release = r)), held: new Promise((r) => (hold = r)) };
        g.hold = hold;
        gates.push(g);
        return { held: g.held, release: () => { release(); gates.splice(gates.indexOf(g), 1); } };
      },
      close: () => new Promise((r) => { for (const ex of open) ex.cutNow(); server.close(r); server.closeAllConnections(); }),
    }));
  });
}
