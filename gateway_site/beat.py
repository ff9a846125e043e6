"""Celery beat that is safe to run twice: only the holder of one lock sends scheduled tasks.

Run ``celery -A gateway_site beat`` on two hosts and one sends, the other stands by and checks the lock every
quarter of TOLLGATE_BEAT_LOCK_SECONDS; when the holder dies its lock lapses within that many seconds and the standby
takes over at its next check. The lock lives where the shared state lives:

- Redis (the money Redis, which never evicts) when REDIS_URL is set: one key set with ``SET NX PX``, renewed and
  deleted only by its holder (compare-and-renew, compare-and-delete in Lua; one key, so Redis Cluster is fine);
- else a PostgreSQL session-level advisory lock on a connection of its own, which PostgreSQL frees when the session
  ends (the server is told to notice a dead peer within seconds). Through PgBouncer in transaction mode a session
  lock means nothing: give beat a direct DATABASE_URL, or set REDIS_URL;
- else (SQLite, one host) an exclusive lock on a file in DATA_DIR.

Schedules stay in the database (django-celery-beat, Periodic tasks in the admin). Each send is saved at once rather
than every 3 minutes, so a standby that takes over reads when each job last ran and does not run it again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)

REDIS_KEY = "tg:beat:lock"
# The advisory lock's key: "tollgate" in ASCII as a bigint. pg_locks shows it as classid (high 32 bits), objid (low).
PG_KEY = int.from_bytes(b"tollgate", "big")
PG_CLASSID, PG_OBJID = PG_KEY >> 32, PG_KEY & 0xFFFFFFFF
PG_APPLICATION = "tollgate-beat"
FILE_NAME = "beat.lock"

# KEYS: the lock; ARGV: the holder's token, the lease in ms. Renews only the holder's own lock.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: the lock; ARGV: the holder's token. Deletes only the holder's own lock.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def identity() -> str:
    """Who holds the lock, as shown in /health/detailed: host name and process id."""
    return f"{socket.gethostname()} pid {os.getpid()}"


def lease_seconds() -> float:
    return float(settings.TOLLGATE_BEAT_LOCK_SECONDS)


def check_every() -> float:
    """How often the holder renews and a standby tries: four times a lease, so three renewals may fail in a row."""
    return lease_seconds() / 4


class Outage:
    """Logs that the lock's store cannot be reached once per outage, not at every check."""

    def __init__(self) -> None:
        self.down = False

    def failed(self, store: str, error: Exception) -> None:
        if not self.down:
            logger.warning("beat: the lock in %s cannot be reached (%s); not sending until it can", store,
                           type(error).__name__)
        self.down = True

    def answered(self) -> None:
        if self.down:
            logger.warning("beat: the lock's store answers again")
        self.down = False


class Lock(Protocol):
    kind: str

    def hold(self) -> bool: ...  # take the lock or keep it; False while another process holds it
    def release(self) -> None: ...


class RedisLock:
    kind = "redis"

    def __init__(self, url: str) -> None:
        from billing import scripts

        # A cluster client on a Redis Cluster: the lock is one key, so it lives on one node like any other.
        self.client = scripts.sync_client(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.token = f"{identity()} {secrets.token_hex(8)}"
        self.held = False
        self.outage = Outage()

    def hold(self) -> bool:
        ms = int(lease_seconds() * 1000)
        try:
            if self.held:
                self.held = bool(self.client.eval(RENEW, 1, REDIS_KEY, self.token, ms))
            if not self.held:
                self.held = bool(self.client.set(REDIS_KEY, self.token, nx=True, px=ms))
            self.outage.answered()
        except Exception as e:  # Redis down: nobody can prove they hold it, so nobody sends
            self.outage.failed("Redis", e)
            self.held = False
        return self.held

    def release(self) -> None:
        try:
            self.client.eval(RELEASE, 1, REDIS_KEY, self.token)
        except Exception:  # it lapses on its own
            pass
        self.held = False


class PostgresLock:
    kind = "postgresql"

    def __init__(self) -> None:
        self.conn: Any = None
        self.held = False
        self.outage = Outage()

    def connect(self) -> Any:
        import psycopg
        from django.db import connections

        params = connections["default"].get_connection_params()
        conn = psycopg.connect(**params, autocommit=True, application_name=f"{PG_APPLICATION} {identity()}"[:63])
        # The server frees the lock when the session ends; these make it notice a holder whose host vanished
        # (no FIN, no RST) within about ten seconds instead of the operating system's two hours.
        conn.execute("SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3")
        return conn

    def hold(self) -> bool:
        try:
            if self.conn is None or self.conn.closed:
                self.conn, self.held = self.connect(), False
            if self.held:  # still ours while the session lives; asking also proves the session is alive
                row = self.conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                        "AND classid = %s AND objid = %s AND objsubid = 1 AND pid = pg_backend_pid()",
                                        [PG_CLASSID, PG_OBJID]).fetchone()
                self.held = bool(row[0])
            if not self.held:
                self.held = bool(self.conn.execute("SELECT pg_try_advisory_lock(%s)", [PG_KEY]).fetchone()[0])
            self.outage.answered()
        except Exception as e:  # PostgreSQL down or the session lost: the lock went with it
            self.outage.failed("PostgreSQL", e)
            self.release()
        return self.held

    def release(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()  # ends the session, which frees the lock
            except Exception:
                pass
        self.conn, self.held = None, False


class FileLock:
    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def hold(self) -> bool:
        if self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, identity().encode(), 0)
            self.fd = fd
        os.utime(self.fd)  # the mtime says when the holder last checked in
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_kind() -> str:
    from django.db import connections

    if settings.TOLLGATE_MONEY_REDIS_URL:
        return "redis"
    return "postgresql" if connections["default"].vendor == "postgresql" else "file"


def make_lock() -> Lock:
    kind = lock_kind()
    if kind == "redis":
        return RedisLock(settings.TOLLGATE_MONEY_REDIS_URL)
    if kind == "postgresql":
        return PostgresLock()
    return FileLock(Path(settings.DATA_DIR) / FILE_NAME)


class SingletonScheduler(DatabaseScheduler):  # type: ignore[misc]
    """django-celery-beat's database scheduler that sends due tasks only while it holds the beat lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock = make_lock()
        self.holding = False
        super().__init__(*args, **kwargs)
        self.max_interval = min(self.max_interval, check_every())
        self.sync_every_tasks = 1  # save each send at once: a standby taking over reads it

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.lock.hold():
            if self.holding:
                logger.warning("beat: lost the %s lock; standing by", self.lock.kind)
            self.holding = False
            return check_every()
        if not self.holding:
            logger.warning("beat: holding the %s lock (%s); sending scheduled tasks", self.lock.kind, identity())
            self.holding = True
            # Read the schedule afresh: another beat may have sent jobs since this one last looked.
            self._initial_read = True
            self._heap = None
        return float(min(super().tick(*args, **kwargs), check_every()))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.lock.release()


def status() -> dict[str, Any]:
    """Who holds the beat lock and how many seconds ago it last checked in; holder None when nobody holds it.

    Sync and may wait on Redis or the database: call it from a thread.
    """
    kind = lock_kind()
    if kind == "redis":
        from billing import scripts

        client = scripts.sync_client(settings.TOLLGATE_MONEY_REDIS_URL, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            token, left_ms = client.get(REDIS_KEY), client.pttl(REDIS_KEY)
        finally:
            client.close()
        if token is None:
            return {"kind": kind, "holder": None, "renewed_seconds_ago": None}
        holder = token.decode().rsplit(" ", 1)[0]
        return {"kind": kind, "holder": holder,
                "renewed_seconds_ago": round(max(0.0, lease_seconds() - max(left_ms, 0) / 1000), 1)}
    if kind == "postgresql":
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT a.application_name, extract(epoch FROM now() - a.state_change) FROM pg_locks l "
                           "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                           "AND l.classid = %s AND l.objid = %s AND l.objsubid = 1 AND l.database = "
                           "(SELECT oid FROM pg_database WHERE datname = current_database())", [PG_CLASSID, PG_OBJID])
            row = cursor.fetchone()
        if row is None:
            return {"kind": kind, "holder": None, "renewed_seconds_ago": None}
        return {"kind": kind, "holder": row[0].removeprefix(PG_APPLICATION).strip(),
                "renewed_seconds_ago": round(max(0.0, float(row[1] or 0)), 1)}
    path = Path(settings.DATA_DIR) / FILE_NAME
    probe = FileLock(path)
    if not path.exists() or probe.hold():
        probe.release()
        return {"kind": kind, "holder": None, "renewed_seconds_ago": None}
    return {"kind": kind, "holder": path.read_text().strip() or None,
            "renewed_seconds_ago": round(max(0.0, time.time() - path.stat().st_mtime), 1)}
