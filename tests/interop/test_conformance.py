"""The official MCP conformance suite (@modelcontextprotocol/conformance), server side.

Runs every active server scenario (a) directly against `mcplex-demo --http`, (b) through
the gateway with the demo as its single stdio target and (c) through the gateway with
`mcplex-demo --http` as its single `mcp` (streamable HTTP) target (one target: unprefixed, so
the fixed fixture names the scenarios call reach the demo unchanged).  A scenario passes when
its checks.json holds at least one SUCCESS and nothing but SUCCESS and INFO (INFO entries are
the suite's event log, not verdicts; FAILURE and WARNING both count against it), and no
"SUCCESS" check whose tool call actually failed with "... not found" (the suite accepts
those).  The tests assert that the gateway loses nothing: every scenario that passes directly
also passes through it, over either kind of upstream.

Per-scenario results go to target/conformance-summary.txt (and stdout).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from conftest import CONFORMANCE_JS, NODE22, REPO_ROOT, demo_target, mcp_target, single_target_config

SUITE_TIMEOUT_S = 300
# Active server scenarios in conformance 0.1.16 (`--suite all` adds 2 pending ones).
MIN_SCENARIOS = 30
# Scenarios the demo must pass directly, so the comparison below is never vacuous.
CORE_SCENARIOS = [
    "server-initialize",
    "ping",
    "tools-list",
    "tools-call-simple-text",
    "resources-read-text",
    "prompts-get-simple",
]
SUMMARY_PATH = REPO_ROOT / "target" / "conformance-summary.txt"
_DIR_RE = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
NEUTRAL = {"INFO"}
# The suite marks tools-call-simple-text / tools-call-error SUCCESS even when the call
# came back as an isError "Tool test_... not found": such a check is a failure here.
_NOT_FOUND_RE = re.compile(r"(tool|prompt|resource)\b.{0,80}\bnot found|unknown (tool|method)", re.I)


def _effective_status(check: dict) -> tuple[str, str]:
    status = check.get("status") or "MISSING"
    msg = check.get("errorMessage") or check.get("description", "")
    result = (check.get("details") or {}).get("result")
    if status == "SUCCESS" and isinstance(result, dict) and result.get("isError"):
        texts = " ".join(c.get("text", "") for c in result.get("content") or [] if isinstance(c, dict))
        if _NOT_FOUND_RE.search(texts):
            return "FAILURE", f"suite said SUCCESS but the call failed: {texts[:200]}"
    return status, msg


class ScenarioResult:
    def __init__(self, checks: list[dict]) -> None:
        self.checks = checks
        self.statuses = [_effective_status(c) for c in checks]
        st = [s for s, _ in self.statuses]
        self.passed = "SUCCESS" in st and all(s == "SUCCESS" or s in NEUTRAL for s in st)

    def problems(self) -> list[str]:
        return [
            f"{s} {c.get('id') or c.get('name')}: {msg}"
            for c, (s, msg) in zip(self.checks, self.statuses)
            if s != "SUCCESS" and s not in NEUTRAL
        ]


def run_suite(url: str, out_dir: Path) -> tuple[dict[str, ScenarioResult], str]:
    out_dir.mkdir(parents=True)
    argv = [str(NODE22), str(CONFORMANCE_JS), "server", "--url", url, "-o", str(out_dir)]
    try:
        p = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S, cwd=out_dir
        )
        log = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        raise AssertionError(f"conformance suite against {url} ran over {SUITE_TIMEOUT_S} s\n{out[-4000:]}") from e
    (out_dir / "run.log").write_text(log)
    results: dict[str, ScenarioResult] = {}
    for d in sorted(out_dir.iterdir()):
        m = _DIR_RE.match(d.name)
        if not m or not d.is_dir():
            continue
        checks_file = d / "checks.json"
        checks = json.loads(checks_file.read_text()) if checks_file.exists() else []
        results[m.group("scenario")] = ScenarioResult(checks)
    return results, log


def _cell(r: ScenarioResult | None) -> str:
    if r is None:
        return "missing"
    return "pass" if r.passed else "FAIL"


# Every run so far in this pytest session, by label, in run order: "direct" first, then one per
# gateway configuration.  The summary file shows them all side by side.
_RUNS: dict[str, dict[str, ScenarioResult]] = {}
DIRECT = "direct"
VIA_STDIO = "gateway/stdio"
VIA_MCP = "gateway/mcp"
_LABEL_TEXT = {
    DIRECT: "mcplex-demo --http directly",
    VIA_STDIO: "mcplex, mcplex-demo as its one stdio target",
    VIA_MCP: "mcplex, mcplex-demo --http as its one mcp (streamable HTTP) target",
}


def regressions(direct: dict[str, ScenarioResult], via: dict[str, ScenarioResult]) -> list[str]:
    """Scenarios that pass directly but not through the gateway."""
    return sorted(n for n, r in direct.items() if r.passed and not (n in via and via[n].passed))


def write_summary(runs: dict[str, dict[str, ScenarioResult]]) -> str:
    direct = runs.get(DIRECT, {})
    labels = list(runs)
    names = sorted(set().union(*[set(r) for r in runs.values()]))
    w = max([len(n) for n in names] + [8])
    cw = {lb: max(len(lb), 7) for lb in labels}
    lines = [
        f"{'scenario':<{w}}  " + "  ".join(f"{lb:<{cw[lb]}}" for lb in labels),
        f"{'-' * w}  " + "  ".join("-" * cw[lb] for lb in labels),
    ]
    for n in names:
        cells = "  ".join(f"{_cell(runs[lb].get(n)):<{cw[lb]}}" for lb in labels)
        d = direct.get(n)
        lost = [
            lb
            for lb in labels
            if lb != DIRECT and d is not None and d.passed and not (n in runs[lb] and runs[lb][n].passed)
        ]
        mark = f"  <-- regression ({', '.join(lost)})" if lost else ""
        lines.append(f"{n:<{w}}  {cells}{mark}".rstrip())
    lines.append("")
    for lb in labels:
        res = runs[lb]
        passed = sum(r.passed for r in res.values())
        lines.append(f"{lb + ':':<15} {passed}/{len(res)} scenarios passed ({_LABEL_TEXT.get(lb, lb)})")
    for lb in labels:
        if lb != DIRECT:
            lines.append(f"regressions (pass direct, fail through {lb}): {len(regressions(direct, runs[lb]))}")
    for lb in labels:
        res = runs[lb]
        failing = [n for n in names if n in res and not res[n].passed]
        if failing:
            lines.append("")
            lines.append(f"failed checks, {lb}:")
            for n in failing:
                for pr in res[n].problems() or ["(no checks recorded)"]:
                    lines.append(f"  {n}: {pr}")
    text = "\n".join(lines) + "\n"
    SUMMARY_PATH.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY_PATH.write_text(text)
    return text


def _direct_results(demo_http, tmp_path: Path) -> dict[str, ScenarioResult]:
    """The suite run directly against `mcplex-demo --http` (once per pytest session)."""
    if DIRECT not in _RUNS:
        demo = demo_http()
        direct, direct_log = run_suite(demo.mcp, tmp_path / "direct")
        assert len(direct) >= MIN_SCENARIOS, (
            f"direct run produced only {len(direct)} scenario results (expected >= {MIN_SCENARIOS})\n"
            f"{direct_log[-4000:]}"
        )
        _RUNS[DIRECT] = direct
    direct = _RUNS[DIRECT]
    core_failing = [s for s in CORE_SCENARIOS if not (s in direct and direct[s].passed)]
    assert not core_failing, f"mcplex-demo fails core scenarios directly: {core_failing}\n{write_summary(_RUNS)}"
    return direct


def _compare(label: str, url: str, direct: dict[str, ScenarioResult], tmp_path: Path) -> None:
    via, _ = run_suite(url, tmp_path / label.replace("/", "-"))
    _RUNS[label] = via
    summary = write_summary(_RUNS)
    print(f"\n=== conformance summary ({SUMMARY_PATH}) ===\n{summary}")
    lost = regressions(direct, via)
    assert not lost, (
        f"scenarios that pass directly but fail through the gateway ({_LABEL_TEXT[label]}): {lost}\n"
        f"(suite output: {tmp_path / label.replace('/', '-') / 'run.log'})\n{summary}"
    )


def test_conformance_direct_vs_gateway(demo_http, gateway, tmp_path):
    direct = _direct_results(demo_http, tmp_path)
    gw = gateway(single_target_config(demo_target()))
    _compare(VIA_STDIO, gw.mcp, direct, tmp_path)


def test_conformance_direct_vs_gateway_with_an_http_target(demo_http, gateway, tmp_path):
    """The same suite through the gateway whose one target is `mcplex-demo --http` (an `mcp:`
    target): nothing that passes directly may be lost over the HTTP upstream either."""
    direct = _direct_results(demo_http, tmp_path)
    upstream = demo_http()
    gw = gateway(single_target_config(mcp_target("demo", upstream.mcp)))
    _compare(VIA_MCP, gw.mcp, direct, tmp_path)
