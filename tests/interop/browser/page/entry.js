// The browser side of tests/interop/test_browser.py: the official TypeScript SDK's Client over
// StreamableHTTPClientTransport, bundled by build.mjs (esbuild) into bundle.js. It connects to
// the gateway named by the page's `?gw=` parameter, lists tools, calls `echo`, ends the session
// (DELETE) and reports everything as JSON in window.__mcpResult and in #result.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

async function run() {
  const params = new URLSearchParams(location.search);
  const gw = params.get("gw");
  const message = params.get("message") || "hello from a browser";
  const out = { ok: false, gw, origin: location.origin, step: "start" };
  try {
    const client = new Client({ name: "mcplex-browser-test", version: "0.0.0" });
    const transport = new StreamableHTTPClientTransport(new URL(gw));
    out.step = "initialize";
    await client.connect(transport);
    out.serverInfo = client.getServerVersion();
    out.protocolVersion = transport.protocolVersion;
    // The session id comes from a response header: readable only if the gateway exposes it.
    out.sessionId = transport.sessionId || null;
    out.step = "tools/list";
    const tools = await client.listTools();
    out.tools = tools.tools.map((t) => t.name);
    out.step = "tools/call echo";
    const res = await client.callTool({ name: "echo", arguments: { message } });
    out.echo = (res.content || []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
    out.isError = !!res.isError;
    out.step = "terminate";
    await transport.terminateSession();
    out.terminated = transport.sessionId === undefined;
    await client.close();
    out.step = "done";
    out.ok = true;
  } catch (e) {
    out.error = String((e && e.message) || e);
    out.errorName = (e && e.name) || typeof e;
  }
  window.__mcpResult = out;
  document.getElementById("result").textContent = JSON.stringify(out);
}

run();
