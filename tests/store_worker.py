"""Helpers for the tests of stores shared by processes: a serving worker for the multi-process test of
``tests/test_user_states.py`` (imported by spawned processes, so this module imports neither torch nor the zoo: only
NumPy, ONNX Runtime and ``export``), and a store whose commits another writer races."""

from __future__ import annotations


def send_events(graph_dir: str, store, start_at: float, users: list, items: list) -> int:
    """From ``start_at`` (``time.time()``, so the workers start together), each of ``items`` (the caller's ids, in
    order) as one event for every user in ``users``, through this process's own ``UserStateRecommender`` on the shared
    ``store`` (a versioned store, pickled as its path or URL); returns the commits the store refused (conflicts)."""
    import time

    from export.runtime import UserStateRecommender

    rec = UserStateRecommender(graph_dir, store=store, threads=1)
    rec.recommend("warm-up", [items[0]])
    time.sleep(max(0.0, start_at - time.time()))
    for item in items:
        for user in users:
            rec.recommend(user, [item])
    return rec.conflicts


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
