"""The official MCP conformance suite (@modelcontextprotocol/conformance), server side.

Runs every active server scenario (a) directly against `mcplex-demo --http` and (b) through
the gateway with the demo as its single stdio target (unprefixed, so the fixed fixture names
the scenarios call reach the demo unchanged).  A scenario passes when its checks.json holds
at least one SUCCESS and nothing but SUCCESS and INFO (INFO entries are the suite's event
log, not verdicts; FAILURE and WARNING both count against it), and no "SUCCESS" check
whose tool call actually failed with "... not found" (the suite accepts those).  The test asserts that the
gateway loses nothing: every scenario that passes directly also passes through it.

Per-scenario results go to target/conformance-summary.txt (and stdout).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from conftest import CONFORMANCE_JS, NODE22, REPO_ROOT, demo_target, single_target_config

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


def write_summary(direct: dict[str, ScenarioResult], via: dict[str, ScenarioResult]) -> str:
    names = sorted(set(direct) | set(via))
    w = max([len(n) for n in names] + [8])
    lines = [f"{'scenario':<{w}}  direct   gateway", f"{'-' * w}  -------  -------"]
    for n in names:
        d, g = direct.get(n), via.get(n)
        mark = "  <-- regression" if d is not None and d.passed and not (g is not None and g.passed) else ""
        lines.append(f"{n:<{w}}  {_cell(d):<7}  {_cell(g):<7}{mark}")
    regressions = [n for n in names if direct.get(n) and direct[n].passed and not (via.get(n) and via[n].passed)]
    lines.append("")
    lines.append(f"direct:  {sum(r.passed for r in direct.values())}/{len(direct)} scenarios passed")
    lines.append(f"gateway: {sum(r.passed for r in via.values())}/{len(via)} scenarios passed")
    lines.append(f"regressions (pass direct, fail through gateway): {len(regressions)}")
    for label, res in (("direct", direct), ("gateway", via)):
        failing = [n for n in names if n in res and not res[n].passed]
        if failing:
            lines.append("")
            lines.append(f"failed checks, {label}:")
            for n in failing:
                for pr in res[n].problems() or ["(no checks recorded)"]:
                    lines.append(f"  {n}: {pr}")
    text = "\n".join(lines) + "\n"
    SUMMARY_PATH.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY_PATH.write_text(text)
    return text


def test_conformance_direct_vs_gateway(demo_http, gateway, tmp_path):
    demo = demo_http()
    direct, direct_log = run_suite(demo.mcp, tmp_path / "direct")
    gw = gateway(single_target_config(demo_target()))
    via, _ = run_suite(gw.mcp, tmp_path / "gateway")

    summary = write_summary(direct, via)
    print(f"\n=== conformance summary ({SUMMARY_PATH}) ===\n{summary}")

    assert len(direct) >= MIN_SCENARIOS, (
        f"direct run produced only {len(direct)} scenario results (expected >= {MIN_SCENARIOS})\n{direct_log[-4000:]}"
    )
    core_failing = [s for s in CORE_SCENARIOS if not (s in direct and direct[s].passed)]
    assert not core_failing, f"mcplex-demo fails core scenarios directly: {core_failing}\n{summary}"
    regressions = [s for s, r in direct.items() if r.passed and not (s in via and via[s].passed)]
    assert not regressions, (
        f"scenarios that pass directly but fail through the gateway: {regressions}\n"
        f"(suite output: {tmp_path / 'gateway' / 'run.log'})\n{summary}"
    )
