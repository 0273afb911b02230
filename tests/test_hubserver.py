"""The real ``huggingface_hub`` client against :class:`LoopbackHub`: downloads, cache, faults and uploads.

The assertions document how ``huggingface_hub`` 2.4 behaves, so that model-zoo code can rely on it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import pytest
from hubserver import LoopbackHub, sha256_hex
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

if TYPE_CHECKING:
    from conftest import HfEnv

REPO = "zoo-test/tiny"
CONFIG = b'{"hidden_size": 4}'
WEIGHTS = bytes(range(256)) * 8  # served as LFS (".safetensors")
TOKEN = "hf_test"


def _blobs(env: HfEnv, repo_id: str = REPO) -> list[Path]:
    """All files stored under the ``blobs`` folder of ``repo_id`` in the client cache."""
    blobs = env.cache_dir / f"models--{repo_id.replace('/', '--')}" / "blobs"
    return sorted(blobs.iterdir()) if blobs.exists() else []


def _cache_files(env: HfEnv) -> list[str]:
    """Every file name in the client cache (any folder)."""
    return [name for _, _, names in os.walk(env.cache_dir) for name in names]


# ---- downloads and the cache -------------------------------------------------------------------------------


def test_first_download_lands_in_cache_with_commit(hf_env: HfEnv) -> None:
    sha = hf_env.hub.add_files(REPO, {"config.json": CONFIG, "model.safetensors": WEIGHTS})

    config_path = Path(hf_hub_download(REPO, "config.json"))
    weights_path = Path(hf_hub_download(REPO, "model.safetensors"))

    storage = hf_env.cache_dir / "models--zoo-test--tiny"
    assert config_path == storage / "snapshots" / sha / "config.json"
    assert config_path.read_bytes() == CONFIG
    assert weights_path.read_bytes() == WEIGHTS
    assert (storage / "refs" / "main").read_text() == sha
    # LFS files are stored under their sha256 (X-Linked-Etag), regular files under their git blob id (ETag).
    assert weights_path.resolve() == storage / "blobs" / sha256_hex(WEIGHTS)
    assert hf_env.hub.requests == [
        ("HEAD", f"/{REPO}/resolve/main/config.json"),
        ("GET", f"/{REPO}/resolve/main/config.json"),
        ("HEAD", f"/{REPO}/resolve/main/model.safetensors"),
        ("GET", f"/{REPO}/resolve/main/model.safetensors"),
    ]


def test_cached_reload_with_server_stopped_and_offline(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG, "sub/extra.txt": b"extra"})
    online_file = hf_hub_download(REPO, "config.json")
    online_snapshot = snapshot_download(REPO)
    hf_env.hub.stop()
    hf_env.set_offline(True)

    assert hf_hub_download(REPO, "config.json") == online_file
    assert snapshot_download(REPO) == online_snapshot
    assert (Path(online_snapshot) / "sub" / "extra.txt").read_bytes() == b"extra"
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "never-downloaded.json")


def test_cached_file_is_used_when_hub_is_down_but_not_offline(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG})
    cached = hf_hub_download(REPO, "config.json")
    hf_env.hub.stop()

    assert hf_hub_download(REPO, "config.json") == cached
    assert hf_env.retry_sleeps == []  # the failed HEAD is not retried when a cached copy exists


def test_pinned_revision(hf_env: HfEnv) -> None:
    first = hf_env.hub.add_files(REPO, {"config.json": b"first"})
    second = hf_env.hub.add_files(REPO, {"config.json": b"second"})

    assert Path(hf_hub_download(REPO, "config.json", revision=first)).read_bytes() == b"first"
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == b"second"
    assert Path(hf_hub_download(REPO, "config.json", revision=second)).read_bytes() == b"second"
    # A commit sha already in the cache is served without any request.
    requests_before = len(hf_env.hub.requests)
    hf_hub_download(REPO, "config.json", revision=first)
    assert len(hf_env.hub.requests) == requests_before


def test_snapshot_download_and_model_info(hf_env: HfEnv, tmp_path: Path) -> None:
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "config.json").write_bytes(CONFIG)
    (tmp_path / "src" / "sub" / "model.safetensors").write_bytes(WEIGHTS)
    sha = hf_env.hub.add_folder(REPO, tmp_path / "src")

    snapshot = Path(snapshot_download(REPO))
    info = HfApi().model_info(REPO, files_metadata=True)

    assert snapshot.name == sha
    assert (snapshot / "sub" / "model.safetensors").read_bytes() == WEIGHTS
    assert info.sha == sha
    assert {s.rfilename: s.size for s in info.siblings or []} == {
        "config.json": len(CONFIG),
        "sub/model.safetensors": len(WEIGHTS),
    }
    assert ("GET", f"/api/models/{REPO}/tree/{sha}") in hf_env.hub.requests


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision", "error"),
    [
        ("zoo-test/missing", "config.json", None, RepositoryNotFoundError),
        (REPO, "missing.json", None, EntryNotFoundError),  # RemoteEntryNotFoundError, a subclass
        (REPO, "config.json", "no-such-branch", RevisionNotFoundError),
        (REPO, "config.json", "0" * 40, RevisionNotFoundError),
    ],
)
def test_not_found_errors(
    hf_env: HfEnv, repo_id: str, filename: str, revision: str | None, error: type[Exception]
) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG})

    with pytest.raises(error):
        hf_hub_download(repo_id, filename, revision=revision)
    assert hf_env.retry_sleeps == []


def test_not_found_errors_from_api(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG})

    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("zoo-test/missing")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch")


def test_persistent_500_is_retried_then_raises(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG})
    hf_env.hub.faults.fail(500, times=None)

    with pytest.raises(LocalEntryNotFoundError) as excinfo:
        hf_hub_download(REPO, "config.json")

    # One fast HEAD, then (nothing cached) one more try with up to 5 retries and exponential backoff.
    assert isinstance(excinfo.value.__cause__, HfHubHTTPError)
    assert excinfo.value.__cause__.response.status_code == 500
    assert hf_env.hub.requests == [("HEAD", f"/{REPO}/resolve/main/config.json")] * 7
    assert hf_env.retry_sleeps == [1, 2, 4, 8, 8]


def test_transient_500_is_absorbed_by_the_retry(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG})
    hf_env.hub.faults.fail(500, times=1)

    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == CONFIG
    assert [method for method, _ in hf_env.hub.requests] == ["HEAD", "HEAD", "GET"]


def test_500_on_download_get_or_api_is_not_retried(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG})
    hf_env.hub.faults.fail(503, method="GET", times=2)

    with pytest.raises(HfHubHTTPError) as excinfo:
        hf_hub_download(REPO, "config.json")
    assert excinfo.value.response.status_code == 503
    with pytest.raises(HfHubHTTPError):
        HfApi().model_info(REPO)
    assert hf_env.retry_sleeps == []
    assert _blobs(hf_env) == []


def test_truncated_body_is_retried_from_scratch(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"model.safetensors": WEIGHTS})
    fault = hf_env.hub.faults.truncate(times=1)

    path = Path(hf_hub_download(REPO, "model.safetensors"))

    assert fault.remaining == 0
    assert path.read_bytes() == WEIGHTS
    # Bytes are consumed in DOWNLOAD_CHUNK_SIZE (10 MiB) chunks: the partial chunk is dropped and the retry
    # downloads the whole file again, without a Range header.
    gets = [seen for seen in hf_env.hub.log if seen.method == "GET"]
    assert [seen.headers.get("range") for seen in gets] == [None, None]
    assert hf_env.retry_sleeps == [1]


def test_truncated_body_resumes_with_range_after_complete_chunks(
    hf_env: HfEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)
    hf_env.hub.add_files(REPO, {"model.safetensors": WEIGHTS})
    hf_env.hub.faults.truncate(keep_bytes=1000)

    assert Path(hf_hub_download(REPO, "model.safetensors")).read_bytes() == WEIGHTS
    gets = [seen for seen in hf_env.hub.log if seen.method == "GET"]
    assert [seen.headers.get("range") for seen in gets] == [
        None,
        "bytes=768-",
    ]  # 3 whole 256-byte chunks kept


def test_persistently_truncated_body_leaves_no_file_in_cache(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"model.safetensors": WEIGHTS})
    hf_env.hub.faults.truncate(times=None)

    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(REPO, "model.safetensors")

    assert [method for method, _ in hf_env.hub.requests] == ["HEAD"] + ["GET"] * 6
    assert _blobs(hf_env) == []
    leftovers = [name for name in _cache_files(hf_env) if name.endswith((".incomplete", ".safetensors"))]
    assert leftovers == []
    hf_env.set_offline(True)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "model.safetensors")


def test_connection_refused_without_cache(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG})
    hf_hub_download(REPO, "config.json")  # leaves a keep-alive connection in the client pool
    hf_env.hub.stop()

    with pytest.raises(LocalEntryNotFoundError) as excinfo:
        hf_hub_download(REPO, "other.json")

    assert isinstance(excinfo.value.__cause__, httpx2.ConnectError)
    assert hf_env.retry_sleeps == [1, 2, 4, 8, 8]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(hf_env.endpoint.rsplit(":", 1)[1])), timeout=1).close()


def test_metadata_timeout_falls_back_to_a_second_try(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG})
    hf_env.set_timeouts(etag=0.2)
    hf_env.hub.faults.hang(1.0, method="HEAD")

    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == CONFIG
    assert [method for method, _ in hf_env.hub.requests] == ["HEAD", "HEAD", "GET"]


# ---- a file that changes under the same commit -------------------------------------------------------------


def test_swapped_bytes_with_original_etag_are_accepted_unverified(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"model.safetensors": WEIGHTS})
    tampered = bytes(reversed(WEIGHTS))
    hf_env.hub.faults.swap_content(tampered, match="model.safetensors", keep_etag=True)

    path = Path(hf_hub_download(REPO, "model.safetensors"))

    # No checksum is computed on download: the blob named after the original sha256 holds other bytes.
    assert path.resolve().name == sha256_hex(WEIGHTS)
    assert path.read_bytes() == tampered


def test_swapped_bytes_of_other_size_fail_the_lfs_size_check(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"model.safetensors": WEIGHTS})
    hf_env.hub.faults.swap_content(WEIGHTS[:100], match="model.safetensors", keep_etag=True)

    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download(REPO, "model.safetensors")
    assert _blobs(hf_env) == []


def test_changed_etag_under_same_commit_keeps_the_cached_file(hf_env: HfEnv) -> None:
    hf_env.hub.add_files(REPO, {"model.safetensors": WEIGHTS})
    cached = Path(hf_hub_download(REPO, "model.safetensors"))
    rewritten = bytes(reversed(WEIGHTS))
    hf_env.hub.faults.swap_content(rewritten, match="model.safetensors", keep_etag=False)

    assert Path(hf_hub_download(REPO, "model.safetensors")).read_bytes() == WEIGHTS
    # Even force_download keeps the snapshot link on the old blob: the new blob is downloaded but left unused.
    assert Path(hf_hub_download(REPO, "model.safetensors", force_download=True)) == cached
    assert cached.read_bytes() == WEIGHTS
    assert [blob.name for blob in _blobs(hf_env)] == sorted([sha256_hex(WEIGHTS), sha256_hex(rewritten)])


# ---- uploads -----------------------------------------------------------------------------------------------


def test_upload_folder_round_trip(hf_env: HfEnv, tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_bytes(CONFIG)
    (folder / "sub" / "model.safetensors").write_bytes(WEIGHTS)
    api = HfApi(token=TOKEN)

    repo_url = api.create_repo("zoo-test/uploaded", exist_ok=True)
    assert api.create_repo("zoo-test/uploaded", exist_ok=True) == repo_url  # 409 tolerated
    commit = api.upload_folder(repo_id="zoo-test/uploaded", folder_path=folder, commit_message="upload")

    assert repo_url == f"{hf_env.endpoint}/zoo-test/uploaded"
    assert commit.oid == hf_env.hub.head("zoo-test/uploaded")
    assert hf_env.hub.files_at("zoo-test/uploaded") == {
        "config.json": CONFIG,
        "sub/model.safetensors": WEIGHTS,
    }
    downloaded = hf_hub_download("zoo-test/uploaded", "sub/model.safetensors", revision=commit.oid)
    assert Path(downloaded).read_bytes() == WEIGHTS


def test_upload_folder_with_delete_patterns(hf_env: HfEnv, tmp_path: Path) -> None:
    hf_env.hub.add_files(REPO, {"old.bin": b"old", "config.json": b"{}"})
    (tmp_path / "config.json").write_bytes(CONFIG)

    HfApi(token=TOKEN).upload_folder(repo_id=REPO, folder_path=tmp_path, delete_patterns="*.bin")

    assert hf_env.hub.files_at(REPO) == {"config.json": CONFIG}


def test_upload_without_token_is_refused(hf_env: HfEnv, tmp_path: Path) -> None:
    hf_env.hub.add_files(REPO, {"config.json": CONFIG})
    (tmp_path / "config.json").write_bytes(b"changed")
    api = HfApi()  # hf_env configures no token

    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo("zoo-test/new-repo")
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_folder(repo_id=REPO, folder_path=tmp_path)
    assert excinfo.value.response.status_code == 401
    assert hf_env.hub.files_at(REPO) == {"config.json": CONFIG}


# ---- the hub itself ----------------------------------------------------------------------------------------


def test_restart_reuses_the_port_and_stop_releases_hanging_requests() -> None:
    hub = LoopbackHub()
    with hub:
        endpoint = hub.endpoint
        hub.faults.hang(5.0)
        with socket.create_connection(("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))) as client:
            client.sendall(b"GET /api/models/a/b HTTP/1.1\r\nHost: x\r\n\r\n")
            deadline = time.monotonic() + 2
            while not hub.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            assert hub.faults.pending == []  # the request is now held by the hang
            started = time.monotonic()
            hub.stop()
            assert time.monotonic() - started < 2
            assert client.recv(1024) == b""  # dropped unanswered
        hub.start()
        assert hub.endpoint == endpoint
