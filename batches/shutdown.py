"""Whether this worker is shutting down warm (SIGTERM, or a first SIGINT), seen from the pool process running a part.

Celery handles the signal in the worker's main process only (celery.apps.worker._shutdown_handler): it stops
taking messages and waits for the running tasks, but a prefork pool child is never told (its
celery.worker.state.should_stop stays unset). So the main process raises a flag in a byte of anonymous shared memory
mapped when this module is imported, which happens in the main process before the pool forks (the worker imports
batches.tasks at start, and it imports this module): each child, forked later, shares the byte. A running part
checks it every second, stops starting lines, lets the lines in flight finish, and hands its part back for another
worker to resume at once, instead of after its lease.

With the solo or threads pool the part runs in the main process and sees the same byte. With a pool started by
"spawn" (not Tollgate's setup) a child would map a byte of its own and never see the flag: the part then runs to its
end as before, or is taken over after its lease if the worker is stopped for good.
"""

from __future__ import annotations

import mmap
from typing import Any

from celery import signals

_flag = mmap.mmap(-1, 1)  # MAP_SHARED | MAP_ANONYMOUS: written by the main process, read by its forked children


def stopping() -> bool:
    return _flag[0] == 1


def note_shutdown(**_: Any) -> None:
    """worker_shutting_down, in the main process (from its signal handler: it only writes a byte)."""
    _flag[0] = 1


def reset() -> None:
    _flag[0] = 0


signals.worker_shutting_down.connect(note_shutdown, weak=False, dispatch_uid="tollgate-batch-shutdown")
