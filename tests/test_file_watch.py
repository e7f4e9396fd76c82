"""The mounted-file watcher against real files swapped the way kubelet swaps a Secret's
`..data` link, including a swap that lands between its stat and its read."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptomni_relay import file_watch
from gptomni_relay.file_watch import FileWatcher
from tests.harness import write_raw_pool_file


def refuse(raw: bytes) -> None:
    raise ValueError(f"not a pool: {raw!r}")


def test_a_swap_between_the_stat_and_the_read_is_reported_once(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "credentials.json"
    write_raw_pool_file(tmp_path, b"first bad version")
    results: list[str] = []
    watcher = FileWatcher(path, "credentials", 1.0, 1000, load=refuse, on_result=results.append)
    first = file_watch.file_identity(path)
    write_raw_pool_file(tmp_path, b"second bad version")  # swapped after the stat below saw the first
    with monkeypatch.context() as patched:
        patched.setattr(file_watch, "file_identity", lambda _: first)
        watcher.check_now()  # its stat: the first version; its read: the second
    watcher.check_now()  # the second version again: nothing new to say
    assert results == ["invalid"]


def test_a_file_over_the_limit_is_rejected_once(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    write_raw_pool_file(tmp_path, b"x" * 2000)
    results: list[str] = []
    watcher = FileWatcher(path, "credentials", 1.0, 1000, load=lambda raw: None, on_result=results.append)
    watcher.check_now()
    watcher.check_now()
    assert results == ["invalid"]
    write_raw_pool_file(tmp_path, b"{}")
    watcher.check_now()
    assert results == ["invalid", "ok"]
