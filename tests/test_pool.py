"""`thread_map`, the one thread pool behind rollouts and verdicts: order, repeats, the two error
policies, progress, and a pool the caller keeps."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from p2o.policy.pool import thread_map


def test_results_keep_the_items_order_when_threads_finish_out_of_order():
    def slow_first(x: int) -> int:
        time.sleep(0.02 * (5 - x))  # item 0 finishes last
        return x * 10

    assert thread_map(slow_first, range(6), threads=4) == [[0], [10], [20], [30], [40], [50]]


def test_repeat_gives_each_item_its_results_and_on_item_fires_once_an_item_is_complete():
    calls = []
    lock = threading.Lock()

    def roll(x: str) -> str:
        with lock:
            calls.append(x)
            return f"{x}{calls.count(x)}"

    finished = []
    rows = thread_map(
        roll, ["a", "b", "c"], threads=3, repeat=3, on_item=lambda i, r: finished.append((i, len(r)))
    )
    assert [sorted(r) for r in rows] == [["a1", "a2", "a3"], ["b1", "b2", "b3"], ["c1", "c2", "c3"]]
    assert sorted(finished) == [(0, 3), (1, 3), (2, 3)]


def test_one_thread_works_and_runs_on_a_pool_thread():
    main = threading.get_ident()
    rows = thread_map(lambda x: (x, threading.get_ident() != main), [1, 2, 3], threads=1)
    assert rows == [[(1, True)], [(2, True)], [(3, True)]]
    assert thread_map(lambda x: x, [], threads=0) == []


def test_fail_fast_raises_the_error_with_the_item_named_and_cancels_the_rest():
    started = []

    def one(x: int) -> int:
        started.append(x)
        if x == 1:
            raise ValueError("server down")
        time.sleep(0.01)
        return x

    with pytest.raises(ValueError) as info:
        thread_map(one, range(50), threads=2)
    assert str(info.value) == "server down"  # the message callers report is unchanged
    assert any("item 1 of 50: 1" in note for note in info.value.__notes__)
    assert len(started) < 50  # the items still queued never ran


def test_record_mode_makes_the_failed_item_a_result_and_goes_on():
    def verdict(x: int) -> str:
        if x % 2:
            raise RuntimeError(f"bad {x}")
        return "ok"

    rows = thread_map(verdict, range(5), threads=2, on_error=lambda x, e: f"0 ({x}: {e})")
    assert rows == [["ok"], ["0 (1: bad 1)"], ["ok"], ["0 (3: bad 3)"], ["ok"]]


def test_a_pool_the_caller_keeps_is_used_and_left_open():
    with ThreadPoolExecutor(2, thread_name_prefix="kept") as pool:
        names = thread_map(lambda _: threading.current_thread().name, range(4), threads=pool)
        assert all(n[0].startswith("kept") for n in names)
        assert pool.submit(lambda: 7).result() == 7
