"""The extraction spec: what is remembered in resolved.json, and the check that a
rebuilt model is the one an extraction recorded."""

import json
import threading
import time

import featx.spec as S
from featx.cache import Cache


def test_concurrent_resolvers_keep_each_others_entries(tmp_path, monkeypatch):
    cache = Cache(tmp_path / "c")
    cache.ensure()
    read = S._resolved

    def slow_read(c):  # widens the window between reading resolved.json and replacing it
        found = read(c)
        time.sleep(0.2)
        return found

    monkeypatch.setattr(S, "_resolved", slow_read)
    threads = [threading.Thread(target=S._remember, args=(cache, "blocks", f"bb{i}", [[f"b{i}", "x"]]))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = json.loads((tmp_path / "c" / "resolved.json").read_text())["blocks"]
    assert sorted(entries) == ["bb0", "bb1", "bb2"]
