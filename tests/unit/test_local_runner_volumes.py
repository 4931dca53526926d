"""The local runner's volume writer: the kubelet's ..data layout, swapped atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubetune_dev.local_pod_setup import UnsupportedPodSpec
from kubetune_dev.local_pod_volumes import DATA_LINK, write_atomically


def _versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("..2"))


def test_files_are_symlinks_through_data_to_one_version(tmp_path: Path) -> None:
    assert write_atomically(tmp_path, {"a.json": (b"1", 0o644), "dir/b": (b"x", 0o600)})
    assert os.readlink(tmp_path / "a.json") == f"{DATA_LINK}/a.json"
    assert os.readlink(tmp_path / "dir") == f"{DATA_LINK}/dir"  # top-level entries only
    assert os.readlink(tmp_path / DATA_LINK) == _versions(tmp_path)[0]
    assert (tmp_path / "dir" / "b").read_bytes() == b"x"
    assert (tmp_path / "dir" / "b").stat().st_mode & 0o777 == 0o600


def test_same_content_writes_nothing(tmp_path: Path) -> None:
    payload = {"a": (b"1", 0o644)}
    write_atomically(tmp_path, payload)
    before = _versions(tmp_path)
    assert not write_atomically(tmp_path, payload)
    assert _versions(tmp_path) == before
    assert write_atomically(tmp_path, {"a": (b"1", 0o600)})  # a new mode is a change


def test_update_swaps_the_version_and_drops_what_is_gone(tmp_path: Path) -> None:
    write_atomically(tmp_path, {"a": (b"old", 0o644), "gone": (b"x", 0o644)})
    held = (tmp_path / "a").open("rb")  # a reader that opened the old version
    assert write_atomically(tmp_path, {"a": (b"new", 0o644)})
    with held:
        assert held.read() == b"old"  # a new file, not the old one rewritten
    assert (tmp_path / "a").read_bytes() == b"new"
    assert not (tmp_path / "gone").exists() and not (tmp_path / "gone").is_symlink()
    assert len(_versions(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == sorted([DATA_LINK, "a", *_versions(tmp_path)])


def test_plain_files_of_an_older_layout_are_replaced(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("plain")
    write_atomically(tmp_path, {"a": (b"linked", 0o644)})
    assert (tmp_path / "a").is_symlink() and (tmp_path / "a").read_text() == "linked"


@pytest.mark.parametrize("path", ["../escape", "/abs", "..hidden"])
def test_paths_leaving_the_volume_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(UnsupportedPodSpec):
        write_atomically(tmp_path, {path: (b"x", 0o644)})
