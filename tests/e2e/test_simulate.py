"""`newfriends simulate` in small: twenty people against a real server and every worker, for a few
seconds, through the public API only. Whatever they send must reach the other side once, in order."""
import time
from contextlib import ExitStack
from pathlib import Path

from infra.devstack import free_port
from infra.settings import Settings
from infra.simulator import Options, simulate
from tests.e2e.chats import worker
from tests.e2e.conftest import running_server
from workers import registry


async def test_twenty_people_for_fifteen_seconds_lose_and_repeat_nothing(
        settings: Settings, migrated: None, tmp_path: Path) -> None:
    started = time.monotonic()
    with ExitStack() as stack:
        # The server first: its readiness is waited for, and on a busy machine seven workers
        # importing at the same moment would eat that wait. Every limit at its real value, each
        # simulated person counted as the address it forwards, as behind a load balancer: the run
        # must stay within what a person may do.
        base = stack.enter_context(running_server(settings, tmp_path, TRUSTED_PROXIES="127.0.0.1",
                                                  RATE_LIMIT_SCALE="1"))
        metrics, workers = [], []
        for name in sorted(registry()):
            port = free_port()
            workers.append(stack.enter_context(worker(settings, name, tmp_path / f"{name}.log",
                                                      METRICS_PORT=str(port))))
            metrics.append(f"http://127.0.0.1:{port}/metrics")
        # All asked to stop at once, then waited for one by one: not seven shutdowns in a row.
        for proc in workers:
            stack.callback(proc.terminate)
        ready = time.monotonic()
        summary = await simulate(Options(url=base, users=20, seconds=15, rate=20, drain_seconds=15,
                                         drop_chance=0.05, seed=7, metrics_urls=tuple(metrics)))
        simulated = time.monotonic()
    report = summary.render()
    print(report)
    print(f"server up {ready - started:.1f} s, simulation {simulated - ready:.1f} s,"
          f" stopping {time.monotonic() - simulated:.1f} s")
    assert summary.people == 20, report
    assert summary.matches > 0 and summary.delivered > 0 and summary.reconnects > 0, report
    assert summary.lost == summary.duplicated == summary.out_of_order == 0, report
    assert not summary.unheard_matches, report
    assert summary.unexpected_errors == 0, report
    assert summary.archived is not None, report  # the archive writer's counter was found
    assert summary.ok, report
