"""Run one function in many threads at once, for the thread-safety tests."""

from __future__ import annotations

import threading
from typing import Callable


def run_in_threads(work: Callable[[int], None], n: int = 8) -> list[BaseException]:
    """Call ``work(0) … work(n - 1)`` in ``n`` threads released together by a barrier; what they raised."""
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            start.wait()
            work(t)
        except BaseException as e:  # noqa: BLE001 - returned to the test, which reports it
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
