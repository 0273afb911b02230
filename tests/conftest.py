"""Shared pytest fixtures (a loopback Hugging Face Hub and a ``huggingface_hub`` client pointed at it) and the
one-thread-per-worker setting of a pytest-xdist run."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hubserver import LoopbackHub
from huggingface_hub import constants, file_download, hf_api
from huggingface_hub.utils import _cache_manager, _http

from zoo.allocator import retain_freed_memory


def pytest_configure(config: pytest.Config) -> None:
    """The CLI's allocator setting (``zoo.allocator``); under pytest-xdist (``-n N``), one torch thread per worker
    and per subprocess it starts.

    ``-n <cores>`` workers of one thread each keep every core busy without oversubscribing them (each worker would
    otherwise start one thread per core, and so would every training subprocess it runs).
    """
    retain_freed_memory()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


#: Client timeouts (seconds) set by ``hf_env``; short, since the hub is on loopback.
DEFAULT_CLIENT_TIMEOUT = 5


class _InstantSleep:
    """Stand-in for ``time`` in ``huggingface_hub`` modules: records ``sleep`` calls instead of sleeping."""

    def __init__(self, sleeps: list[float]):
        self._sleeps = sleeps

    def sleep(self, seconds: float) -> None:
        self._sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@dataclass
class HfEnv:
    """The ``huggingface_hub`` client configuration set up by the ``hf_env`` fixture.

    Attributes:
        hub: the running :class:`LoopbackHub` the client talks to.
        home: ``HF_HOME`` (token, xet and assets caches live under it).
        cache_dir: ``HF_HUB_CACHE``, where ``hf_hub_download`` / ``snapshot_download`` store files.
        retry_sleeps: seconds the client asked to sleep between retries. The sleeps are skipped so that retry
            paths stay fast; this list shows the backoff the client would have applied.
    """

    hub: LoopbackHub
    home: Path
    cache_dir: Path
    monkeypatch: pytest.MonkeyPatch = field(repr=False)
    retry_sleeps: list[float] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """The hub URL the client uses (``HF_ENDPOINT``)."""
        return self.hub.endpoint

    def set_offline(self, offline: bool) -> None:
        """Turn ``HF_HUB_OFFLINE`` on or off (env variable and the value the client actually reads)."""
        self.monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    def set_timeouts(self, *, etag: float | None = None, download: float | None = None) -> None:
        """Set the client's metadata (``HEAD``) and download timeouts, in seconds.

        Note: when a ``HEAD`` fails and nothing is cached, ``hf_hub_download`` retries it with a hard-coded
        60 s timeout (``file_download._ETAG_RETRY_TIMEOUT``), whatever is set here.
        """
        if etag is not None:
            self.monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", str(etag))
            self.monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", etag)
        if download is not None:
            self.monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", str(download))
            self.monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", download)


@pytest.fixture
def loopback_hub() -> Iterator[LoopbackHub]:
    """A started :class:`LoopbackHub`, stopped after the test."""
    with LoopbackHub() as hub:
        yield hub


@pytest.fixture
def hf_env(loopback_hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HfEnv]:
    """Point ``huggingface_hub`` at ``loopback_hub``, with caches and token under ``tmp_path``, online.

    ``huggingface_hub`` copies its environment into ``huggingface_hub.constants`` at import time, so the
    fixture sets both the env variables (for subprocesses) and the module attributes the client reads at call
    time. No token is configured: pass ``token=...`` explicitly for write calls.
    """
    home, cache_dir = tmp_path / "hf_home", tmp_path / "hf_home" / "hub"
    env = HfEnv(hub=loopback_hub, home=home, cache_dir=cache_dir, monkeypatch=monkeypatch)
    endpoint, assets, xet, token = loopback_hub.endpoint, home / "assets", home / "xet", home / "token"
    settings: list[tuple[str, str, Any]] = [
        # (env variable and `constants` attribute, env value, value the client reads from `constants`)
        ("HF_HOME", str(home), str(home)),
        ("HF_HUB_CACHE", str(cache_dir), str(cache_dir)),
        ("HF_ASSETS_CACHE", str(assets), str(assets)),
        ("HF_XET_CACHE", str(xet), str(xet)),
        ("HF_TOKEN_PATH", str(token), str(token)),
        ("HF_HUB_OFFLINE", "0", False),
        ("HF_HUB_DISABLE_TELEMETRY", "1", True),
        ("HF_HUB_DISABLE_XET", "1", True),
        ("HF_HUB_ETAG_TIMEOUT", str(DEFAULT_CLIENT_TIMEOUT), DEFAULT_CLIENT_TIMEOUT),
        ("HF_HUB_DOWNLOAD_TIMEOUT", str(DEFAULT_CLIENT_TIMEOUT), DEFAULT_CLIENT_TIMEOUT),
    ]
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    for name, env_value, constant_value in settings:
        monkeypatch.setenv(name, env_value)
        monkeypatch.setattr(constants, name, constant_value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(name, raising=False)
    _patch_derived_constants(env)
    for module in (_http, file_download):  # retry backoff (`_http`) and download resume (`file_download`)
        monkeypatch.setattr(module, "time", _InstantSleep(env.retry_sleeps))

    _http.close_session()  # no pooled connection from an earlier test may be reused
    yield env
    _http.close_session()


def _patch_derived_constants(env: HfEnv) -> None:
    """Patch the values ``huggingface_hub`` derives from its environment at import time."""
    endpoint, home, cache_dir = env.endpoint, env.home, env.cache_dir
    derived: list[tuple[object, str, Any]] = [
        (constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
        (constants, "HUGGINGFACE_HUB_CACHE", str(cache_dir)),
        (constants, "HUGGINGFACE_ASSETS_CACHE", str(home / "assets")),
        (constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens")),
        (constants, "CHECK_FOR_UPDATE_DONE_PATH", str(home / ".check_for_update_done")),
        (constants, "CHECK_FOR_SKILL_UPDATE_DONE_PATH", str(home / ".check_for_skill_update_done")),
        (constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json")),
        (_cache_manager, "HF_HUB_CACHE", str(cache_dir)),  # `from ..constants import HF_HUB_CACHE` copy
        (hf_api.api, "endpoint", endpoint),  # module-level HfApi behind `huggingface_hub.model_info` & co
    ]
    for target, name, value in derived:
        env.monkeypatch.setattr(target, name, value)


REPO_ROOT = Path(__file__).resolve().parent.parent


def released_ids() -> list[str]:
    import zoo

    return zoo.list_checkpoints()


@pytest.fixture
def checkpoint_copy(tmp_path: Path) -> Path:
    """A private copy of the first released checkpoint folder, safe to damage."""
    import shutil

    from zoo.registry import models_dir

    dest = tmp_path / "ckpt" / released_ids()[0]
    shutil.copytree(models_dir() / released_ids()[0], dest)
    return dest


@pytest.fixture
def no_local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the zoo's local hub at an empty folder, so registry ids resolve through the HF cache/Hub."""
    empty = tmp_path / "empty_models"
    empty.mkdir()
    monkeypatch.setenv("ZOO_MODELS_DIR", str(empty))
    return empty
