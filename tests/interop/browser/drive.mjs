// Opens one page in Debian's headless Chromium (driven by playwright-core), waits for the page
// to report window.__mcpResult, and prints a JSON report on stdout:
//   {"result": <window.__mcpResult or null>, "console": [...], "failedRequests": [...],
//    "responses": [...], "error": <driver error or null>}
// Usage: node drive.mjs PAGE_URL [TIMEOUT_MS]. Exit 0 whenever a report was printed.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const pageUrl = process.argv[2];
const timeoutMs = Number(process.argv[3] || 30000);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const report = { result: null, console: [], failedRequests: [], responses: [], error: null };

// The machine's network is closed: without these Chromium keeps trying to reach Google's
// services and floods with refused connections.
const args = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// A hard stop, whatever hangs (launch, navigation, close).
const killer = setTimeout(() => {
  report.error = report.error || `driver timed out after ${timeoutMs + 20000} ms`;
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(3);
}, timeoutMs + 20000);

const userDataDir = mkdtempSync(join(tmpdir(), "mcplex-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args,
    timeout: timeoutMs,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => report.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => report.console.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) =>
    report.failedRequests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`),
  );
  page.on("response", (r) => {
    const h = r.headers();
    report.responses.push({
      method: r.request().method(),
      url: r.url(),
      status: r.status(),
      allowOrigin: h["access-control-allow-origin"] ?? null,
    });
  });
  await page.goto(pageUrl, { timeout: timeoutMs });
  await page.waitForFunction(() => window.__mcpResult !== undefined, null, { timeout: timeoutMs });
  report.result = await page.evaluate(() => window.__mcpResult);
  report.dom = await page.textContent("#result");
} catch (e) {
  report.error = String((e && e.stack) || e);
} finally {
  try {
    if (context) await context.close();
  } catch (e) {
    report.console.push(`close: ${e}`);
  }
  rmSync(userDataDir, { recursive: true, force: true });
}
clearTimeout(killer);
process.stdout.write(JSON.stringify(report) + "\n");
process.exit(0);
