"""The conformance suite's client scenarios (0.2.0-alpha.12, `--requirements 2026-07-28`) with
mcplex as the client: each scenario's server is mcplex's one `mcp` target, and
conformance_client.py drives mcplex with the Python SDK (see there). The suite checks what
mcplex sends upstream: the era probe and version retry, the envelope on every request, the
standard headers, requestState round trips.

Scenarios the gateway must pass: GATEWAY_SCENARIOS, with a legacy driving client (mcplex
builds the envelope from its initialize and turns input rounds into real requests) and with a
2026-07-28 one. The others are reported, not asserted: upstream OAuth (`auth/*`, issue #14's
territory). Results go to target/conformance-client-summary.txt.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MCPLEX_BIN, NODE22, NODE_MODULES, REPO_ROOT

CONFORMANCE_MODERN_JS = NODE_MODULES / "conformance-modern" / "dist" / "index.js"
DRIVER = Path(__file__).parent / "conformance_client.py"
SUMMARY_PATH = REPO_ROOT / "target" / "conformance-client-summary.txt"
GATEWAY_SCENARIOS = [
    "tools_call",
    "request-metadata",
    "sep-2322-client-request-state",
    "http-standard-headers",
    "http-custom-headers",
    "http-invalid-tool-headers",
    "json-schema-ref-no-deref",
    "json-schema-2020-12-preservation",
]
_LINE_RE = re.compile(r"^([✓✗]) (\S+): (\d+) passed, (\d+) failed", re.M)


def _run(tmp_path: Path, mode: str, *selection: str) -> tuple[dict[str, tuple[bool, str]], str]:
    env = {**os.environ, "MCPLEX_BIN": str(MCPLEX_BIN), "MCPLEX_DRIVER_MODE": mode}
    argv = [str(NODE22), str(CONFORMANCE_MODERN_JS), "client", "--command", f"{sys.executable} {DRIVER}"]
    argv += [*selection, "-o", str(tmp_path / f"out-{mode}")]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    results = {m[2]: (m[1] == "✓", f"{m[3]} passed, {m[4]} failed") for m in _LINE_RE.finditer(out)}
    single = re.search(r"Passed: (\d+)/(\d+), (\d+) failed", out)
    if not results and single and "--scenario" in selection:
        passed, failed = int(single[1]), int(single[3])
        name = selection[selection.index("--scenario") + 1]
        results[name] = (passed > 0 and failed == 0, f"{passed} passed, {failed} failed")
    return results, out


def _summary(label: str, results: dict[str, tuple[bool, str]]) -> str:
    lines = [f"{label}:"]
    for name, (ok, counts) in sorted(results.items()):
        mark = "pass" if ok else "FAIL"
        must = " (required)" if name in GATEWAY_SCENARIOS else ""
        lines.append(f"  {mark:<4} {name}: {counts}{must}")
    return "\n".join(lines) + "\n"


def test_mcplex_as_the_suites_client_with_a_legacy_driver(tmp_path):
    results, out = _run(tmp_path, "legacy", "--requirements", "2026-07-28")
    text = _summary("mcplex driven by a legacy client, --requirements 2026-07-28", results)
    SUMMARY_PATH.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY_PATH.write_text(text)
    print(text)
    assert len(results) >= 30, f"the suite ran only {len(results)} scenarios:\n{out[-3000:]}"
    failing = [s for s in GATEWAY_SCENARIOS if not results.get(s, (False, ""))[0]]
    assert not failing, f"scenarios mcplex must pass as a client: {failing}\n{text}\n{out[-3000:]}"


@pytest.mark.parametrize("scenario", GATEWAY_SCENARIOS)
def test_mcplex_as_the_suites_client_with_a_modern_driver(tmp_path, scenario):
    results, out = _run(tmp_path, "2026-07-28", "--scenario", scenario)
    with SUMMARY_PATH.open("a") as f:
        f.write(_summary(f"mcplex driven by a 2026-07-28 client, {scenario}", results))
    ok = results.get(scenario, (False, "missing"))
    assert ok[0], f"{scenario}: {ok[1]}\n{out[-3000:]}"
