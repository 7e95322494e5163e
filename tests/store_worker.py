"""Helpers for the tests of stores shared by processes: a serving worker for the multi-process test of
``tests/test_user_states.py`` (imported by spawned processes, so this module imports neither torch nor the zoo: only
NumPy, ONNX Runtime and ``export``), and a store whose commits another writer races."""

from __future__ import annotations


def send_events(graph_dir: str, store, barrier, users: list, items: list) -> int:
    """Each of ``items`` (the caller's ids, in order) as one event for every user in ``users``, through this process's
    own ``UserStateRecommender`` on the shared ``store`` (a versioned store, pickled as its path or URL); returns the
    commits the store refused (conflicts).

    The workers go in rounds, one event each, all to the same user: ``barrier`` (a ``multiprocessing.Manager()``
    barrier of the workers) starts every round, so they send at once whatever their start-up took. In the rounds of
    the even items every worker also waits at the barrier between reading the user's state and committing its new
    one (:class:`HoldAfterRead`): all have read the same version, so one commit goes through and every other one is
    refused and run again -- at least ``workers - 1`` conflicts in each such round, however the processes are
    scheduled (a store that ignored the versions would lose those events every time). The odd items' rounds race
    freely."""
    from export.runtime import UserStateRecommender

    held = HoldAfterRead(store, barrier)
    rec = UserStateRecommender(graph_dir, store=held, threads=1)
    rec.recommend("warm-up", [items[0]])
    for j, item in enumerate(items):
        for user in users:
            barrier.wait()
            held.hold = j % 2 == 0
            rec.recommend(user, [item])
    return rec.conflicts


class HoldAfterRead:
    """``store`` (a versioned store) whose next read, once ``hold`` is set, waits at ``barrier`` before it returns:
    every worker of the barrier has then read before any of them commits. Everything else is ``store``'s."""

    def __init__(self, store, barrier):
        self.store, self.barrier, self.hold = store, barrier, False

    def _held(self, got):
        if self.hold:
            self.hold = False
            self.barrier.wait()
        return got

    def get_versioned(self, key):
        return self._held(self.store.get_versioned(key))

    def get_versioned_many(self, keys):
        return self._held(self.store.get_versioned_many(keys))

    def commit(self, writes) -> bool:
        return self.store.commit(writes)

    def __getattr__(self, name):
        return getattr(self.store, name)


def raced_sqlite(path, rival):
    """A ``SQLiteStateStore`` on ``path`` whose every commit first lets ``rival`` (a recommender on its own handle of
    the same file, as another process would) send the events queued in its ``rival_events`` list: each such event
    lands between the call's read and its commit."""
    from export.state_store import SQLiteStateStore

    class Raced(SQLiteStateStore):
        def commit(self, writes):
            while self.rival_events:
                rival.recommend(*self.rival_events.pop(0))
            return super().commit(writes)

    store = Raced(path)
    store.rival_events = []
    return store
