// The TypeScript SDK v2 client (@modelcontextprotocol/client) as a peer of the gateway.
// Usage: node ts_client.mjs URL MODE PREFIX
//   MODE: "2026-07-28" (pinned, no fallback), "auto" or "legacy"
//   PREFIX: "" for a single-target gateway, "demo_" when the demo is one of several targets
// Connects, lists tools, calls echo, add (with progress on slow) and the demo's sampling and
// elicitation tools (answered by this client's handlers), then prints one JSON object.
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const [url, mode, prefix = ''] = process.argv.slice(2);
const versionNegotiation = mode === 'legacy' ? { mode: 'legacy' } : mode === 'auto' ? { mode: 'auto' } : { mode: { pin: mode } };

const client = new Client(
    { name: 'mcplex-ts-client-test', version: '1.0.0' },
    { capabilities: { sampling: {}, elicitation: { form: {} } }, versionNegotiation }
);
const asked = { sampling: [], elicitation: [] };
client.setRequestHandler('sampling/createMessage', async request => {
    const text = request.params.messages.map(m => m.content?.text ?? '').join(' ');
    asked.sampling.push(text);
    return { model: 'ts-test-model', role: 'assistant', content: { type: 'text', text: `ts[${text}]` } };
});
client.setRequestHandler('elicitation/create', async request => {
    asked.elicitation.push(request.params.message);
    return { action: 'accept', content: { username: 'grace', email: 'grace@example.com' } };
});

const text = r => (r.content ?? []).filter(c => c.type === 'text').map(c => c.text).join('');
const out = {};
const timer = setTimeout(() => {
    console.log(JSON.stringify({ ...out, error: 'timed out' }));
    process.exit(3);
}, 60_000);
try {
    await client.connect(new StreamableHTTPClientTransport(new URL(url)));
    out.protocolVersion = client.getNegotiatedProtocolVersion();
    out.server = client.getServerVersion()?.name;
    out.tools = (await client.listTools()).tools.map(t => t.name);
    out.echo = text(await client.callTool({ name: `${prefix}echo`, arguments: { message: 'from ts' } }));
    out.add = text(await client.callTool({ name: `${prefix}add`, arguments: { a: 20, b: 22 } }));
    const progress = [];
    out.slow = text(
        await client.callTool(
            { name: `${prefix}slow`, arguments: { steps: 3, delayMs: 20 } },
            { onprogress: p => progress.push(p.progress) }
        )
    );
    out.progress = progress;
    out.sampling = text(await client.callTool({ name: `${prefix}test_sampling`, arguments: { prompt: 'ts asks' } }));
    out.elicitation = text(
        await client.callTool({ name: `${prefix}test_elicitation`, arguments: { message: 'Who is there?' } })
    );
    out.asked = asked;
    await client.close();
} catch (e) {
    out.error = String(e?.stack ?? e);
}
clearTimeout(timer);
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
