"""Fuzzed checkpoint files: a damaged safetensors header or config.json fails with a clear error, fast and small.

The recorded sha256 is updated to each damaged file's real one, so the sha256 check passes and what is
tested is the parser and the config validation behind it.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

import zoo
from zoo.errors import ConfigError, IntegrityError, InvalidSourceError, UnknownModelError, ZooError

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
MAX_SECONDS = 5.0
MAX_RSS_GROWTH_MB = 500


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _write_weights(folder: Path, data: bytes) -> None:
    """Write ``data`` as the weights and record its real sha256, so only the parser stands in the way."""
    (folder / "model.safetensors").write_bytes(data)
    config = json.loads((folder / "config.json").read_text())
    config["zoo"]["files"]["model.safetensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "config.json").write_text(json.dumps(config))


def _load_bounded(source: str) -> tuple[Any, BaseException | None]:
    """``zoo.from_pretrained(source)``: (model or None, error or None), checking time and peak memory."""
    rss, start = _peak_rss_mb(), time.monotonic()
    model, error = None, None
    try:
        model = zoo.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 - the type is what the tests check
        error = err
    elapsed = time.monotonic() - start
    assert elapsed < MAX_SECONDS, f"loading took {elapsed:.1f} s"
    growth = _peak_rss_mb() - rss
    assert growth < MAX_RSS_GROWTH_MB, f"peak RSS grew by {growth:.0f} MB"
    return model, error


class _Original(tuple):
    """(folder, weights bytes, config) of the checkpoint copy; a short repr for hypothesis' reports."""

    def __repr__(self) -> str:
        return f"original({self[0]})"


@pytest.fixture
def original(checkpoint_copy: Path) -> _Original:
    weights = (checkpoint_copy / "model.safetensors").read_bytes()
    config = json.loads((checkpoint_copy / "config.json").read_text())
    return _Original((checkpoint_copy, weights, config))


# ------------------------------------------------------------------------------------------- safetensors header


def _header(data: bytes) -> tuple[int, bytes, bytes]:
    (n,) = struct.unpack("<Q", data[:8].ljust(8, b"\0"))
    return n, data[8 : 8 + n], data[8 + n :]


_JSON_HEADERS = [
    b"{}",
    b"[]",
    b"null",
    b'{"a": 1}',
    b'{"__metadata__": 5}',
    b'{"fc.bias": {"dtype": "F32", "shape": [10], "data_offsets": [0, 999999999999]}}',
    b'{"fc.bias": {"dtype": "F32", "shape": [1099511627776], "data_offsets": [0, 40]}}',
    b'{"fc.bias": {"dtype": "X9", "shape": [10], "data_offsets": [0, 40]}}',
]
_header_mutation = st.one_of(
    # the declared header length: any 64-bit value, huge ones included
    st.tuples(st.just("length"), st.integers(min_value=0, max_value=2**64 - 1)),
    st.tuples(st.just("length"), st.sampled_from([2**60, 2**63, 2**64 - 1, 100_000_001, 0, 1, 7])),
    # random bytes written over the JSON header
    st.tuples(st.just("overwrite"), st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
                                             min_size=1, max_size=6)),  # fmt: skip
    # the file cut anywhere (inside the length field, the header or the data)
    st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=10**7)),
    # the header replaced by random bytes of the same length (declared length kept)
    st.tuples(st.just("replace"), st.binary(min_size=0, max_size=64)),
    # a header of valid JSON that is not the right description
    st.tuples(st.just("json"), st.sampled_from(_JSON_HEADERS)),
)  # fmt: skip


def _mutate(data: bytes, mutation: tuple[str, Any]) -> bytes:
    kind, arg = mutation
    n, header, rest = _header(data)
    n = min(n, len(data) - 8)  # a declared length past the end: mutate what is there
    if kind == "length":
        return struct.pack("<Q", arg) + data[8:]
    if len(data) < 8:
        return data
    if kind == "overwrite":
        buf = bytearray(header)
        for pos, chunk in arg:
            pos %= max(len(buf), 1)
            buf[pos : pos + len(chunk)] = chunk
        return struct.pack("<Q", len(buf)) + bytes(buf) + rest
    if kind == "truncate":
        return data[: arg % max(len(data), 1)]
    if kind == "replace":
        new = (arg * (n // max(len(arg), 1) + 1))[:n] if arg else b" " * n
        return struct.pack("<Q", n) + new + rest
    if kind == "json":
        return struct.pack("<Q", len(arg)) + arg + rest
    raise AssertionError(kind)


def _benign(path: Path) -> bool:
    """Whether safetensors itself reads the file (the mutation left a valid file, e.g. in the metadata)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                f.get_tensor(key)
    except Exception:  # noqa: BLE001
        return False
    return True


@FUZZ
@given(mutations=st.lists(_header_mutation, min_size=1, max_size=2))
def test_fuzzed_safetensors_header_raises_a_zoo_error(original, mutations) -> None:
    folder, weights, config = original
    (folder / "config.json").write_text(json.dumps(config))
    data = weights
    for mutation in mutations:
        data = _mutate(data, mutation)
    _write_weights(folder, data)
    model, error = _load_bounded(f"local-dir:{folder}")
    if error is None:
        assert _benign(folder / "model.safetensors"), "a file safetensors refuses was loaded"
    else:
        assert isinstance(error, ZooError), f"{type(error).__name__}: {error}"
        assert str(error)


@pytest.mark.parametrize("declared", [2**60, 2**63 - 1, 2**64 - 1])
def test_huge_declared_header_length_is_not_allocated(original, declared) -> None:
    folder, weights, _ = original
    _write_weights(folder, struct.pack("<Q", declared) + weights[8:])
    model, error = _load_bounded(f"local-dir:{folder}")
    assert isinstance(error, ZooError) and "not a valid safetensors file" in str(error), repr(error)


# ------------------------------------------------------------------------------------------------- config.json

_huge = st.one_of(st.integers(min_value=65_537, max_value=10**12), st.sampled_from([10**9, 2**31, 2**63]))
_bad_int = st.one_of(st.integers(max_value=-1), _huge)
_wrong_type = st.one_of(st.none(), st.text(max_size=5), st.floats(allow_nan=True), st.booleans(),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))  # fmt: skip

_config_mutation = st.one_of(
    st.tuples(st.just("architecture"), st.one_of(
        st.text(max_size=20).filter(lambda s: s not in zoo.list_architectures()),
        st.integers(), st.none(), st.lists(st.integers(), max_size=2), st.sampled_from(["resnet20 ", "RESNET20"]))),
    st.tuples(st.just("stage_widths"), st.one_of(
        st.lists(_bad_int, min_size=3, max_size=3),
        st.tuples(st.integers(16, 64), st.integers(16, 64), _huge).map(list),
        st.tuples(_bad_int, st.just(32), st.just(64)).map(list),
        st.lists(st.sampled_from([4096, 8192, 60_000]), min_size=3, max_size=3),  # below the bound, huge product
        _wrong_type, st.integers())),
    st.tuples(st.just("model_args"), st.one_of(_wrong_type.filter(lambda v: not isinstance(v, dict)),
                                               st.lists(st.integers(), max_size=2))),
    st.tuples(st.just("extra_arg"), st.tuples(st.sampled_from(["foo", "width", "stage_width", "num_class"]),
                                              st.one_of(st.integers(), st.text(max_size=3)))),
    st.tuples(st.just("pretrained_cfg"), st.one_of(_wrong_type.filter(lambda v: not isinstance(v, dict)),
                                                   st.lists(st.integers(), max_size=2))),
    st.tuples(st.just("num_classes"), st.one_of(_bad_int, st.sampled_from(["10", 10.5, [10], True]))),
    st.tuples(st.just("pretrained_cfg.num_classes"), st.one_of(_bad_int, st.sampled_from(["10", 10.5, [10]]))),
)  # fmt: skip


def _apply(config: dict[str, Any], mutation: tuple[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))
    key, value = mutation
    if key == "stage_widths":
        config["model_args"] = {"stage_widths": value}
    elif key == "extra_arg":
        config["model_args"] = {value[0]: value[1]}
    elif key == "pretrained_cfg.num_classes":
        config["pretrained_cfg"]["num_classes"] = value
    else:
        config[key] = value
    return config


def _is_clear(error: BaseException | None) -> bool:
    return isinstance(error, (ZooError, ValueError, TypeError)) and bool(str(error).strip())


@FUZZ
@given(mutation=_config_mutation)
def test_fuzzed_config_fails_clearly_before_allocating(original, mutation) -> None:
    folder, weights, config = original
    mutated = _apply(config, mutation)
    try:
        text = json.dumps(mutated, allow_nan=True)
    except (TypeError, ValueError):
        return
    (folder / "config.json").write_text(text)
    model, error = _load_bounded(f"local-dir:{folder}")
    assert model is None, f"config {mutation} was accepted"
    assert _is_clear(error), f"{type(error).__name__}: {error}"


@pytest.mark.parametrize(
    ("mutation", "error", "match"),
    [
        (("stage_widths", [16, 32, 10**9]), ConfigError, r"model_args\.stage_widths.*1000000000.*65536"),
        (("stage_widths", [4096, 4096, 4096]), ConfigError, r"parameters.*bound"),
        (("num_classes", 10**9), ConfigError, r"'num_classes' must be an integer from 0 to 65536"),
        (("num_classes", -3), ConfigError, r"'num_classes'"),
        (("pretrained_cfg.num_classes", 2**40), ConfigError, r"pretrained_cfg\.num_classes"),
        (("architecture", 7), ConfigError, r"'architecture' must be a string"),
        (("architecture", "resnet21"), UnknownModelError, r"Did you mean"),
        (("pretrained_cfg", [1]), ConfigError, r"'pretrained_cfg' must be a JSON object"),
    ],
)
def test_config_errors_name_the_key(original, mutation, error, match) -> None:
    folder, _, config = original
    (folder / "config.json").write_text(json.dumps(_apply(config, mutation)))
    _, err = _load_bounded(f"local-dir:{folder}")
    assert isinstance(err, error), repr(err)
    with pytest.raises(error, match=match):
        raise err


# ---------------------------------------------------------------------------------------------------- symlinks


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_symlink_leaving_the_folder_is_refused(original, tmp_path: Path, name: str) -> None:
    folder, _, _ = original
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    (folder / name).rename(outside)
    os.symlink(outside, folder / name)
    with pytest.raises(InvalidSourceError, match=r"symlink that leads outside the checkpoint folder.*Copy the real"):
        zoo.from_pretrained(f"local-dir:{folder}")


def test_symlink_inside_the_folder_and_linked_folder_are_accepted(original, tmp_path: Path) -> None:
    folder, _, _ = original
    (folder / "model.safetensors").rename(folder / "real.safetensors")
    os.symlink("real.safetensors", folder / "model.safetensors")  # relative link, stays inside
    link = tmp_path / "linked_ckpt"
    os.symlink(folder, link, target_is_directory=True)  # the folder itself may be reached through a link
    assert zoo.from_pretrained(f"local-dir:{link}") is not None


def test_dangling_symlink_is_reported(original, tmp_path: Path) -> None:
    folder, _, _ = original
    (folder / "model.safetensors").unlink()
    os.symlink(tmp_path / "missing.safetensors", folder / "model.safetensors")
    with pytest.raises(ZooError):
        zoo.from_pretrained(f"local-dir:{folder}")


def test_weights_with_no_tensors_are_refused(original) -> None:
    # An empty state dict used to reach timm, which took it for "no weights" and raised a bare FileNotFoundError.
    folder, _, _ = original
    _write_weights(folder, struct.pack("<Q", 2) + b"{}")
    _, error = _load_bounded(f"local-dir:{folder}")
    assert isinstance(error, IntegrityError) and "holds no tensors" in str(error), repr(error)
