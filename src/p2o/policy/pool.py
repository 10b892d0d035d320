"""`thread_map`: one function over many items on a thread pool, as p2o rolls out and scores: K
rollouts of each sample from the policy server (mining, a GEPA phase, a served benchmark), a
benchmark's completions through its verifier.

Results come back in the items' order whatever order the threads finish in. The error policy is one
argument, `on_error`:

- `None`, fail fast: the first exception cancels the work not yet started and is raised as it was,
  with a note naming the item (a policy server that is down stops the phase or the benchmark);
- a function `(item, exception) -> result`: that becomes the item's result and the run goes on (a
  verifier that raises scores its one completion 0 with the reason; one bad sample never stops a
  run).

The pool is a fresh one per call (`threads`, at least one: the function always runs on a pool
thread, so a DSPy call sees the same per-thread settings at any thread count), or an executor the
caller keeps open between calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def thread_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    threads: int | Executor,
    repeat: int = 1,
    on_error: Callable[[T, Exception], R] | None = None,
    on_item: Callable[[int, list[R]], None] | None = None,
) -> list[list[R]]:
    """`fn(item)` `repeat` times for each item: per item, its `repeat` results, in the items' order.

    `on_error` is the error policy (module docstring). `on_item(index, results)` is called in the
    calling thread as soon as an item's `repeat` results are all in (in the order they finish): for
    progress, or to store a finished item at once."""
    items = list(items)
    if isinstance(threads, Executor):
        return _run(threads, fn, items, repeat, on_error, on_item)
    with ThreadPoolExecutor(max(1, threads)) as pool:  # leaving it waits for calls already running
        return _run(pool, fn, items, repeat, on_error, on_item)


def _run(
    pool: Executor,
    fn: Callable[[T], R],
    items: list[T],
    repeat: int,
    on_error: Callable[[T, Exception], R] | None,
    on_item: Callable[[int, list[R]], None] | None,
) -> list[list[R]]:
    def call(item: T) -> R:
        try:
            return fn(item)
        except Exception as e:
            if on_error is None:
                raise
            return on_error(item, e)

    futures: dict[Future, tuple[int, int]] = {
        pool.submit(call, item): (i, j) for i, item in enumerate(items) for j in range(repeat)
    }
    rows: list[list] = [[None] * repeat for _ in items]
    left = [repeat] * len(items)
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                i, j = futures[fut]
                err = fut.exception()
                if err is not None:
                    err.add_note(f"(while running item {i} of {len(items)}: {_brief(items[i])})")
                    raise err
                rows[i][j] = fut.result()
                left[i] -= 1
                if left[i] == 0 and on_item is not None:
                    on_item(i, rows[i])
    except BaseException:  # an error, or Ctrl-C while waiting: nothing more starts
        for fut in pending:
            fut.cancel()
        raise
    return rows


def _brief(item: object, limit: int = 200) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[: limit - 3] + "..."
