"""Fair batching across cameras and per-camera reordering of results."""

from streamproc.batching import FairBatcher
from streamproc.tracking import Reorderer


def test_flooding_camera_does_not_starve_others() -> None:
    batcher: FairBatcher[tuple[str, int]] = FairBatcher(max_batch=4, max_wait_s=1.0, key=lambda x: x[0])
    for i in range(100):
        batcher.add(("flood", i), now=0.0)
    batcher.add(("quiet1", 0), now=1.0)
    batcher.add(("quiet2", 0), now=2.0)
    first = batcher.take()
    assert {c for c, _ in first} == {"flood", "quiet1", "quiet2"}
    assert [i for c, i in first if c == "flood"] == [0, 1]  # oldest first within a camera
    assert len(batcher) == 98


def test_batch_due_when_full_or_waited() -> None:
    batcher: FairBatcher[int] = FairBatcher(max_batch=3, max_wait_s=0.05, key=lambda _: "c")
    batcher.add(1, now=10.0)
    assert not batcher.ready(now=10.01)
    assert batcher.ready(now=10.06)
    batcher.add(2, now=10.06)
    batcher.add(3, now=10.06)
    assert batcher.ready(now=10.0)


def test_reorderer_restores_order_and_times_out_gaps() -> None:
    order: Reorderer[int] = Reorderer(timeout_s=1.0)
    order.push(seq=4, prev_seq=2, item=4, now=0.0)
    assert order.pop(now=0.1) == ([], [])  # waiting for 2 (and 0 before it)
    order.push(seq=0, prev_seq=-1, item=0, now=0.2)
    order.push(seq=2, prev_seq=0, item=2, now=0.2)
    assert order.pop(now=0.3) == ([0, 2, 4], [])
    order.push(seq=9, prev_seq=6, item=9, now=1.0)  # 6 was dead-lettered: released after the timeout
    assert order.pop(now=1.5) == ([], [])
    assert order.pop(now=2.1) == ([9], [])
    order.push(seq=6, prev_seq=4, item=6, now=2.2)  # arrives too late
    assert order.pop(now=2.3) == ([], [6])
