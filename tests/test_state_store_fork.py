"""A fork while the SQLite store's own checkpoint thread is inside SQLite.

The thread (started by opening a :class:`export.state_store.SQLiteStateStore`, unseen by the user) checkpoints the WAL
every ``checkpoint_every`` seconds. A process forked while it was inside SQLite inherited SQLite's mutexes held by a
thread the child does not have, and hung for good on its first statement (a pthread mutex: no busy timeout reaches
it): QA saw 2 of 400 forked children hang (gunicorn --preload, fork pools). The store now registers fork handlers
that take the lock the thread holds around each of its SQLite calls, so a fork waits for the call of the moment.
"""

import os
import sqlite3
import threading
import time

import pytest

import export.state_store as S
from export.state_store import SQLiteStateStore

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


def _wait_child(pid: int, limit: float = 60.0) -> int:
    """The child's exit status; a child still running after ``limit`` seconds is killed and counted as hung (-1)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -1


def test_a_fork_waits_for_the_checkpoint_threads_call_into_sqlite(tmp_path, monkeypatch):
    """The checkpoint thread's PASSIVE checkpoint is made slow (0.5 s, inside its call); a fork made while it runs
    returns only after it (the order of events: enter, exit, forked -- before, the fork went through at once), and the
    child uses the store (a new connection, its first statement) and exits 0."""
    events, entered = [], threading.Event()
    real_connect = sqlite3.connect

    class SlowCheckpoints:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if "wal_checkpoint(PASSIVE)" in sql and not entered.is_set():
                events.append("enter")
                entered.set()
                time.sleep(0.5)                     # inside "SQLite": what a fork must not cut through
                events.append("exit")
            return self.conn.execute(sql, *args)

        def close(self):
            self.conn.close()

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        if threading.current_thread().name.startswith("zoo-state-checkpoint"):
            return SlowCheckpoints(conn)
        return conn

    monkeypatch.setattr(S.sqlite3, "connect", connect)
    store = SQLiteStateStore(tmp_path / "states.db", checkpoint_every=0.01)
    try:
        store["u"] = {"x": 1}
        assert entered.wait(60), "the checkpoint thread never checkpointed"
        pid = os.fork()
        if pid == 0:                                            # the child: its own connection, its first statements
            code = 1
            try:
                store["v"] = {"y": 2}
                code = 0 if store.get("u") is not None else 1
            finally:
                os._exit(code)
        events.append("forked")
        assert _wait_child(pid) == 0
        assert events[:3] == ["enter", "exit", "forked"], events
        assert store.get("v") is not None                      # the child's write, seen by the parent
    finally:
        store.close()


def test_fork_handlers_leave_both_locks_free_in_parent_and_child(tmp_path):
    """After a fork, the parent and the child can take the checkpoint locks (the handlers released what they took);
    the child opens a store of its own file and writes."""
    store = SQLiteStateStore(tmp_path / "a.db", checkpoint_every=0.01)
    try:
        store["u"] = {"x": 1}
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                got = S._IN_SQLITE.acquire(timeout=5) and S._CHECKPOINTERS_LOCK.acquire(timeout=5)
                S._IN_SQLITE.release()
                S._CHECKPOINTERS_LOCK.release()
                other = SQLiteStateStore(str(tmp_path / "b.db"), checkpoint_every=0.01)
                other["w"] = {"z": 3}
                code = 0 if got and other.get("w") is not None else 1
            finally:
                os._exit(code)
        assert _wait_child(pid) == 0
        assert S._IN_SQLITE.acquire(timeout=5)
        S._IN_SQLITE.release()
        assert S._CHECKPOINTERS_LOCK.acquire(timeout=5)
        S._CHECKPOINTERS_LOCK.release()
    finally:
        store.close()
