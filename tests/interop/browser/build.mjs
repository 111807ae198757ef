// Bundles page/entry.js (the TS SDK client) for the browser with esbuild and copies
// page/index.html next to it: `node build.mjs OUTDIR`.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error("usage: node build.mjs OUTDIR");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "page", "entry.js")],
  bundle: true,
  format: "iife",
  platform: "browser",
  target: "es2020",
  outfile: join(out, "bundle.js"),
  logLevel: "warning",
  absWorkingDir: here,
});
copyFileSync(join(here, "page", "index.html"), join(out, "index.html"));
console.log(`built ${join(out, "bundle.js")}`);
