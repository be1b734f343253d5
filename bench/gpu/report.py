"""The JSON report of bench/gpu_check.sh: one record per step, merged into one file.

    report.py step --dir D --name N --status S [--limit L] [--seconds T] [--command C]
                   [--reason R] [--log FILE] [--result FILE.json] [--junit FILE.xml]
    report.py merge --dir D --probe FILE --order "a b c" --out FILE [--dry-run] [--budget S]

A step's status is ``ok``, ``failed``, ``timeout``, ``skipped`` (with its
reason) or ``planned`` (a dry run). ``--result`` attaches a step's own JSON
figures, ``--junit`` a pytest run's counts and failures, ``--log`` the end of
its output (longer when the step did not succeed).
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

STATUSES = ("ok", "failed", "timeout", "skipped", "planned")


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts of a pytest --junitxml file and its failing tests with the start of their messages."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failing: list[dict[str, str]] = []
    skips: dict[str, int] = {}
    for tc in root.iter("testcase"):
        name = f"{tc.get('classname', '')}::{tc.get('name', '')}"
        for bad in [*tc.findall("failure"), *tc.findall("error")]:
            failing.append({"test": name, "message": (bad.get("message") or bad.text or "")[:400]})
        for skip in tc.findall("skipped"):
            reason = (skip.get("message") or "")[:200]
            skips[reason] = skips.get(reason, 0) + 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failing": failing, "skip_reasons": skips}


def record(args: argparse.Namespace) -> None:
    if args.status not in STATUSES:
        raise SystemExit(f"status must be one of {STATUSES}, got {args.status!r}")
    step: dict[str, Any] = {"status": args.status}
    for key in ("reason", "command"):
        if getattr(args, key):
            step[key] = getattr(args, key)
    if args.limit is not None:
        step["limit_s"] = args.limit
    if args.seconds is not None:
        step["seconds"] = args.seconds
    if args.result and args.result.is_file() and args.result.stat().st_size:
        step["result"] = json.loads(args.result.read_text())
    if args.junit and args.junit.is_file():
        step["tests"] = junit_summary(args.junit)
    if args.log and args.log.is_file():
        keep = 1500 if args.status == "ok" else 6000
        step["log_tail"] = args.log.read_text(errors="replace")[-keep:]
    args.dir.mkdir(parents=True, exist_ok=True)
    (args.dir / f"{args.name}.json").write_text(json.dumps(step, indent=2) + "\n")


def merge(args: argparse.Namespace) -> None:
    steps = {}
    for name in args.order.split():
        path = args.dir / f"{name}.json"
        steps[name] = json.loads(path.read_text()) if path.is_file() else {"status": "failed",
                                                                            "reason": "the step left no record"}
    probe = json.loads(args.probe.read_text()) if args.probe.is_file() else {"error": "probe left no findings"}
    report = {"schema": 1, "dry_run": args.dry_run, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "budget_s": args.budget, "machine": probe, "steps": steps,
              "summary": {s: sorted(n for n, v in steps.items() if v["status"] == s) for s in STATUSES}}
    text = json.dumps(report, indent=2) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("step", help="record one step")
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--status", required=True)
    s.add_argument("--limit", type=int)
    s.add_argument("--seconds", type=int)
    s.add_argument("--command")
    s.add_argument("--reason")
    s.add_argument("--log", type=Path)
    s.add_argument("--result", type=Path)
    s.add_argument("--junit", type=Path)
    m = sub.add_parser("merge", help="merge the step records into the report")
    m.add_argument("--dir", type=Path, required=True)
    m.add_argument("--probe", type=Path, required=True)
    m.add_argument("--order", required=True)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--dry-run", action="store_true")
    m.add_argument("--budget", type=int)
    args = ap.parse_args()
    record(args) if args.verb == "step" else merge(args)


if __name__ == "__main__":
    main()
