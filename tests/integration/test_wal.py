"""The write-ahead log on a real file system: replay, torn tails, truncation, batched fsyncs, and a
process killed by SIGKILL that loses nothing it was told was durable."""
import asyncio
import sys
import time
from pathlib import Path

from infra.wal import WriteAheadLog

ROOT = Path(__file__).resolve().parents[2]

# Appends and syncs batches for ever, printing the last position of each batch once it is durable.
CHILD = """
import asyncio, sys
from pathlib import Path
from infra.wal import WriteAheadLog

async def main() -> None:
    wal = WriteAheadLog(Path(sys.argv[1]), segment_bytes=20_000)
    wal.open()
    n = 0
    while True:
        batch = [(n % 3, (n + i, 0), b"x" * 50) for i in range(10)]
        n += 10
        wal.append(batch)
        await wal.sync()
        print(n - 1, flush=True)

asyncio.run(main())
"""


def test_records_come_back_in_order_after_reopening(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=500)
    assert wal.open() == []
    wal.append([(1, (10, 0), b"a"), (2, (10, 1), b"bb")])
    wal.append([(1, (11, 0), b"c" * 600)])  # past the segment size: the next append starts another
    wal.append([(2, (12, 0), b"")])
    wal.close()
    again = WriteAheadLog(tmp_path)
    records = again.open()
    assert [(r.key, r.position, r.payload) for r in records] == [
        (1, (10, 0), b"a"), (2, (10, 1), b"bb"), (1, (11, 0), b"c" * 600), (2, (12, 0), b"")]
    again.close()


def test_a_torn_tail_ends_the_segment_and_nothing_follows_it(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.append([(1, (1, 0), b"kept"), (1, (2, 0), b"torn")])
    wal.close()
    segment = sorted(tmp_path.glob("*.wal"))[-1]
    segment.write_bytes(segment.read_bytes()[:-3])
    again = WriteAheadLog(tmp_path)
    assert [r.payload for r in again.open()] == [b"kept"]
    again.append([(1, (3, 0), b"after")])  # into a fresh segment, not behind the torn record
    again.close()
    assert [r.payload for r in WriteAheadLog(tmp_path).open()] == [b"kept", b"after"]


def test_truncate_removes_only_segments_whose_every_key_is_done(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.append([(1, (5, 0), b"a"), (2, (7, 0), b"b")])
    wal.roll()
    wal.append([(1, (9, 0), b"c")])
    wal.roll()
    done = {1: (9, 0), 2: (6, 0)}
    assert wal.truncate(lambda key, pos: pos <= done.get(key, (0, 0))) == 1  # the second only: 2 is at 7
    done[2] = (7, 0)
    assert wal.truncate(lambda key, pos: pos <= done.get(key, (0, 0))) == 1
    wal.close()
    assert WriteAheadLog(tmp_path).open() == []


async def test_concurrent_syncs_share_fsyncs(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()

    async def writer(key: int) -> None:
        for i in range(200):
            wal.append([(key, (i, 0), b"m" * 100)])
            await wal.sync()

    started = time.monotonic()
    await asyncio.gather(*(writer(k) for k in range(50)))
    elapsed = time.monotonic() - started
    # 10,000 durable appends; fsyncs at most ~100 a second of the run.
    assert wal.syncs <= elapsed * 100 + 2, (wal.syncs, elapsed)
    assert wal.syncs < 10_000
    wal.close()
    assert len(WriteAheadLog(tmp_path).open()) == 10_000


async def test_sigkill_loses_nothing_that_was_synced(tmp_path: Path) -> None:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(tmp_path), cwd=ROOT,
                                                 stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    durable = -1
    while durable < 3000:
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line, "the child died"
        durable = int(line)
    child.kill()
    await child.wait()
    positions = [r.position[0] for r in WriteAheadLog(tmp_path).open()]
    assert positions[:durable + 1] == list(range(durable + 1))
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
