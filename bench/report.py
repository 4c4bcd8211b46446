"""Runs every benchmark under bench/ one after another and writes one report of their figures.

Each script prints its figures as one JSON object on its last line; this script knows, for each
target, which figure is compared with which raw baseline of the same run and in which direction.
It writes bench/report.md and bench/report.json and exits non-zero when a target is missed (or a
script fails, or a script has figures this table does not know yet: a new benchmark must join it).

    .venv/bin/python bench/report.py [--only swipes nearby] [--out bench/]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Target:
    ratio: str  # the figure the target is about
    at_least: bool  # True: the ratio must reach the target; False: stay at or under it
    measured: str  # the product's own figure
    baseline: str  # the raw baseline it is divided by (or compared with)
    unit: str


TARGETS: dict[str, list[Target]] = {
    "swipes": [
        Target("ratio_api", True, "likes_per_s", "noop_mutations_per_s", "requests/s"),
        Target("ratio_writer", True, "writer_rows_per_s", "baseline_rows_per_s", "rows/s"),
    ],
    "nearby": [
        Target("ratio_first_page_p50", False, "first_page_p50_ms", "geosearch_p50_ms", "ms"),
        Target("ratio_next_page_p50", False, "next_page_p50_ms", "geosearch_p50_ms", "ms"),
    ],
    "archive": [
        Target("ratio_wal", True, "msgs_per_s", "baseline_msgs_per_s", "messages/s"),
        Target("s3_puts_per_100k_msgs_vs_bound", False, "s3_puts_per_100k_msgs", "s3_puts_bound_per_100k_msgs",
               "PUTs per 100k messages (bound: partitions x windows spanned)"),
        Target("s3_gets_per_history_page", False, "s3_gets_per_history_page", "s3_gets_per_history_page_mean",
               "GETs per page (mean)"),
    ],
    # Costs for sizing a Redis Cluster (docs/capacity.md), measured on a private Redis: no target.
    "redis_cost": [],
    "chat": [
        Target("ratio_p50_200", False, "p50_ms_200", "bare_p50_ms_200", "ms"),
        Target("rss_kib_per_ws", False, "rss_kib_per_ws", "idle_ws_count", "KiB (sockets held)"),
    ],
}


def scripts(only: list[str] | None) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    return [p for p in found if only is None or p.stem in only]


def run(script: Path) -> tuple[dict[str, Any] | None, float, str]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=HERE.parent, env=os.environ.copy())
    seconds = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        return None, seconds, (done.stderr or done.stdout)[-2000:]
    try:
        figures = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None, seconds, f"last line is not JSON: {lines[-1][:200]!r}"
    return (figures, seconds, "") if isinstance(figures, dict) else (None, seconds, "last line is not an object")


def judge(name: str, figures: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    rows, problems = [], []
    declared = figures.get("targets", {})
    known = {t.ratio for t in TARGETS.get(name, [])}
    problems += [f"{name}: target {key} is not in bench/report.py" for key in declared if key not in known]
    for target in TARGETS.get(name, []):
        if target.ratio not in declared:
            problems.append(f"{name}: the script no longer declares a target for {target.ratio}")
            continue
        goal, value = declared[target.ratio], figures.get(target.ratio)
        met = value is not None and (value >= goal if target.at_least else value <= goal)
        rows.append({"bench": name, "figure": target.ratio, "value": value, "target": goal,
                     "direction": ">=" if target.at_least else "<=", "met": met, "unit": target.unit,
                     "measured": {target.measured: figures.get(target.measured)},
                     "baseline": {target.baseline: figures.get(target.baseline)}})
        if not met:
            problems.append(f"{name}: {target.ratio} = {value}, target {rows[-1]['direction']} {goal}")
    return rows, problems


def markdown(rows: list[dict[str, Any]], runs: dict[str, Any], problems: list[str]) -> str:
    out = ["# Benchmark report", "",
           f"Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end. Every ratio is"
           " against a raw baseline measured in the same run; compare ratios, not absolutes.", "",
           "| bench | figure | value | target | met | measured | baseline |",
           "|---|---|---|---|---|---|---|"]
    for row in rows:
        (m_name, m_value), (b_name, b_value) = next(iter(row["measured"].items())), next(iter(row["baseline"].items()))
        out.append(f"| {row['bench']} | {row['figure']} | {row['value']} | {row['direction']} {row['target']} |"
                   f" {'yes' if row['met'] else '**no**'} | {m_name} {m_value} | {b_name} {b_value} |")
    out += ["", "| bench | seconds | status |", "|---|---|---|"]
    out += [f"| {name} | {r['seconds']:.0f} | {'ok' if r['figures'] else 'failed'} |" for name, r in runs.items()]
    if problems:
        out += ["", "## Missed or broken", ""] + [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="bench names (file stems) to run")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    runs: dict[str, Any] = {}
    for script in scripts(args.only):
        print(f"running {script.name} ...", flush=True)
        figures, seconds, error = run(script)
        runs[script.stem] = {"seconds": round(seconds, 1), "figures": figures, "error": error or None}
        if figures is None:
            problems.append(f"{script.stem}: failed: {error.strip()[-500:]}")
            continue
        if script.stem not in TARGETS:
            problems.append(f"{script.stem}: its targets are not in bench/report.py")
        got, missed = judge(script.stem, figures)
        rows += got
        problems += missed
        print(f"{script.name}: {seconds:.0f} s, " + ", ".join(f"{r['figure']} {r['value']}" for r in got), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({"rows": rows, "runs": runs, "problems": problems}, indent=2))
    (args.out / "report.md").write_text(markdown(rows, runs, problems))
    print(markdown(rows, runs, problems))
    summary = {"met": not problems, "figures": {f"{r['bench']}.{r['figure']}": r["value"] for r in rows},
               "problems": len(problems)}
    print(json.dumps(summary))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
