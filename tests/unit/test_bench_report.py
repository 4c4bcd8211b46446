"""The benchmark report's judgement: direction of each target, and benches or targets it does not know."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module
    spec.loader.exec_module(module)
    return module


def test_targets_are_judged_in_their_direction() -> None:
    judge = report().judge
    figures = {"targets": {"ratio_api": 0.6, "ratio_writer": 0.5}, "ratio_api": 0.61, "ratio_writer": 0.49,
               "likes_per_s": 61, "noop_mutations_per_s": 100, "writer_rows_per_s": 49, "baseline_rows_per_s": 100}
    rows, problems = judge("swipes", figures)
    assert [(r["figure"], r["met"]) for r in rows] == [("ratio_api", True), ("ratio_writer", False)]
    assert rows[0]["baseline"] == {"noop_mutations_per_s": 100}
    assert problems == ["swipes: ratio_writer = 0.49, target >= 0.5"]
    rows, problems = judge("nearby", {"targets": {"ratio_first_page_p50": 5, "ratio_next_page_p50": 1},
                                      "ratio_first_page_p50": 5.0, "ratio_next_page_p50": 1.2})
    assert [r["met"] for r in rows] == [True, False] and len(problems) == 1


def test_a_target_the_report_does_not_know_fails_it() -> None:
    rows, problems = report().judge("swipes", {"targets": {"ratio_api": 0.6, "ratio_writer": 0.5, "new": 1},
                                               "ratio_api": 1, "ratio_writer": 1})
    assert all(r["met"] for r in rows)
    assert problems == ["swipes: target new is not in bench/report.py"]
    _, problems = report().judge("swipes", {"targets": {"ratio_api": 0.6}, "ratio_api": 1})
    assert problems == ["swipes: the script no longer declares a target for ratio_writer"]
