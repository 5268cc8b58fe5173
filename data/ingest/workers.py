"""The worker processes of `voxfm shard`, which never outlive the command.

- `worker_pool(n)`: `n` forked workers (none for `n <= 1`: the work runs in this process). Each uses one blosc2
  thread (`workers` is the parallelism), and ends with its parent: on Linux the kernel kills it when the parent
  dies (`PR_SET_PDEATHSIG`), so even a SIGKILLed command leaves no worker behind; elsewhere a thread watches the
  parent. Leaving the pool by an exception (SIGTERM, Ctrl-C, a worker that died, an output that cannot be written)
  kills the workers at once rather than waiting for their tasks.
- `sigterm_stops()`: SIGTERM stops the command as `ShardStopped` (a `SystemExit`, exit 75, the code `voxfm pretrain`
  uses for SIGTERM: stopped with its state on disk, rerun the same command to continue). The shards published
  before stay valid (the index names only complete shards) and a rerun continues from them.
- `ordered(pool, fn, items, window)`: fn over items, results in order, at most `window` in flight (bounded memory).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL, as `voxfm pretrain` stopped by SIGTERM: the same command continues


class WorkerDied(RuntimeError):
    """A worker process vanished (killed for memory, most likely); finished shards are kept."""


class ShardStopped(SystemExit):
    """SIGTERM stopped `voxfm shard`: the workers are gone, the shards published so far are kept, and the same
    command, rerun, continues from them. Exits 75."""

    def __init__(self) -> None:
        super().__init__(STOPPED_EXIT_CODE)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM raises `ShardStopped` here, once (a second SIGTERM while stopping is ignored: the workers are being
    killed). Only the main thread can take signals: elsewhere SIGTERM keeps its usual effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def stop(signum, frame) -> None:
        if not received:
            received.append(signum)
            raise ShardStopped()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except ShardStopped:
        print(
            "voxfm shard: stopped by SIGTERM; the shards published so far are kept: rerun the same command to continue",
            file=sys.stderr,
        )
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _die_with(parent: int) -> None:
    """End this worker when `parent` ends: the kernel's parent-death signal on Linux, a watching thread elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0:
                if os.getppid() != parent:  # the parent ended before the request was made
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_worker(parent: int) -> None:
    import blosc2

    blosc2.set_nthreads(1)  # one core per worker: `workers` is the parallelism
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, inherited by fork: a worker just ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops them
    _die_with(parent)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now (their tasks are abandoned; they write nothing but their results)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public way before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.kill()
    for p in processes:
        p.join(10)


@contextmanager
def worker_pool(n: int) -> Iterator[ProcessPoolExecutor | None]:
    if n <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(n, mp_context=get_context("fork"), initializer=_init_worker, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        _kill(pool)
        raise
    pool.shutdown(cancel_futures=True)


def ordered(pool: ProcessPoolExecutor | None, fn: Callable, items: Iterable, window: int) -> Iterator:
    """fn over items in order, at most `window` in flight (bounded memory); in this process without a pool."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                yield pending[0][1].result()
                pending.popleft()
        while pending:
            yield pending[0][1].result()
            pending.popleft()
    except BrokenProcessPool as err:
        # the pool does not say which task died, and every unfinished one fails alike: name all in flight
        what = "; ".join(", ".join(v.path for v, _ in i[:3]) if isinstance(i, list) else str(i) for i, _ in pending)
        raise WorkerDied(
            f"a worker process died (killed for lack of memory?) while working on one of: {what}; "
            "finished shards are kept: rerun the same command to continue, with fewer workers="
        ) from err
