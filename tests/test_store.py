"""The object store contract, identical on file:// and s3:// (moto via minio)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller_service.contract.store import FileStore, ObjectNotFound, StoreError, open_store


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "file":
        return open_store(tmp_path.as_uri())
    return open_store(request.getfixturevalue("s3_store_uri"))


def test_put_get_list_delete(store) -> None:
    store.check()
    store.put("runs/a/state.json", b"{}")
    store.put("runs/a/policy/round-001.json", b"1")
    store.put("runs/b/state.json", b"2")
    assert store.get("runs/a/state.json") == b"{}"
    assert store.list("runs/a/") == ["runs/a/policy/round-001.json", "runs/a/state.json"]
    store.put("runs/a/state.json", b"new")
    assert store.get("runs/a/state.json") == b"new"
    assert store.exists("runs/b/state.json")
    store.delete("runs/b/state.json")
    assert not store.exists("runs/b/state.json")
    with pytest.raises(ObjectNotFound, match="runs/b/state.json"):
        store.get("runs/b/state.json")


def test_json_and_uris(store) -> None:
    store.put_json("x/y.json", {"b": 1, "a": [1.5]})
    assert store.get_json("x/y.json") == {"a": [1.5], "b": 1}
    uri = store.uri_of("x/y.json")
    assert uri.endswith("/x/y.json") and store.key_of(uri) == "x/y.json"
    with pytest.raises(StoreError):
        store.key_of("s3://elsewhere/x/y.json")


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "a/.tmp-x"])
def test_bad_keys_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        FileStore(tmp_path).put(key, b"")


def test_file_put_leaves_no_temp_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    for i in range(3):
        store.put("k/v.bin", bytes([i]))
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["v.bin"]


def test_open_store_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store(str(tmp_path)), FileStore)
    with pytest.raises(StoreError, match="unsupported"):
        open_store("gs://bucket")
    monkeypatch.delenv("ADASEG_S3_ENDPOINT", raising=False)
    with pytest.raises(StoreError, match="ADASEG_S3_ENDPOINT"):
        open_store("s3://bucket/prefix")


def test_s3_missing_bucket_is_not_ready(s3_env: dict[str, str]) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_store("s3://no-such-bucket-here/x").check()
