"""A config.json never silently changes a model (issue 16).

Every field of config.json that fixes a tensor's shape (``num_classes`` at top level, in ``pretrained_cfg`` or in
``model_args``, ``in_chans`` / ``input_size``, widths, the architecture itself) is checked against the stored tensors:
a config that disagrees is refused with a ShapeMismatchError naming the tensors and the fix, whichever way the
checkpoint is reached (``local-dir:``, a registry id from the local hub or through the Hub, ``hf-hub:``). A new
head or input stem comes only from the caller's own arguments.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import zoo
from zoo import registry
from zoo.errors import ShapeMismatchError, ZooError
from zoo.inference import unpack_binary_weights
from zoo.models import _builder
from zoo.registry import models_dir

MODELS = models_dir()  # the real local hub, resolved before any test points ZOO_MODELS_DIR elsewhere
SOURCES = ["local-dir", "registry", "registry-via-hub", "hf-hub"]
FIX = r".*python -m training\.export.*num_classes="


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        config = config[key]
    config[last] = value


def _setter(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: _set(config, dotted, value)


def _width(dotted: str, index: int, value: int) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        for key in parents:
            config = config[key]
        config[last][index] = value

    return edit


def _pretrained_cfg_classes_only(config: dict[str, Any]) -> None:
    del config["num_classes"]  # the top-level field would override pretrained_cfg's
    config["pretrained_cfg"]["num_classes"] = 7


def _classes_disagree_between_fields(config: dict[str, Any]) -> None:
    config["num_classes"] = 7  # timm would build model_args' 10 classes, then drop the stored head as "not 7"
    config["model_args"]["num_classes"] = 10


# (checkpoint, edit of its config.json, what the error must name)
EDITS = [
    pytest.param("resnet20.fmnist", _setter("num_classes", 7),
                 r"fc\.weight: config implies \(7, 64\), stored \(10, 64\)", id="num_classes"),
    pytest.param("resnet20.fmnist", _pretrained_cfg_classes_only, r"fc\.bias: config implies \(7,\)",
                 id="pretrained_cfg.num_classes"),
    pytest.param("resnet20.fmnist", _setter("model_args.num_classes", 7), r"fc\.weight: config implies \(7, 64\)",
                 id="model_args.num_classes"),
    pytest.param("resnet20.fmnist", _classes_disagree_between_fields, r"num_classes.*7.*give 10 classes",
                 id="num_classes-vs-model_args"),
    pytest.param("resnet20.fmnist", _setter("model_args.in_chans", 3),
                 r"conv1\.weight: config implies \(16, 3, 3, 3\), stored \(16, 1, 3, 3\)", id="model_args.in_chans"),
    pytest.param("resnet20.fmnist", _setter("pretrained_cfg.input_size", [3, 28, 28]),
                 r"conv1\.weight: config implies \(16, 3, 3, 3\)", id="pretrained_cfg.input_size"),
    pytest.param("resnet20.fmnist", _setter("model_args.stage_widths", [16, 32, 48]),
                 r"layer3\.0\.conv1\.weight: config implies \(48, 32, 3, 3\), stored \(64, 32, 3, 3\)",
                 id="model_args.stage_widths"),
    pytest.param("resnet56_ucp.fmnist", _width("model_args.inner_widths", 3, 9),
                 r"layer1\.3\.conv1\.weight: config implies \(9, 16, 3, 3\), stored \(8, 16, 3, 3\)",
                 id="pruned-width"),
    pytest.param("vgg19_ucp.fmnist", _width("model_args.widths", 0, 34), r"stage1\.0\.\S+: config implies \(34,",
                 id="vgg-pruned-width"),
    pytest.param("resnet20_sdbnn.fmnist", _setter("num_classes", 4), r"fc\.weight: config implies \(4, 64\)",
                 id="binary-num_classes"),
    pytest.param("resnet20_sdbnn.fmnist", _setter("model_args.stage_widths", [16, 32, 128]),
                 r"layer3\.0\.bn1\.weight: config implies \(128,\), stored \(64,\)", id="binary-stage_widths"),
    pytest.param("resnet20_bnn.fmnist", _setter("architecture", "resnet20_sdbnn"),
                 r"layer1\.0\.conv1\.alpha: config implies \(16,\), missing from the weights",
                 id="binary-method-parts-missing"),
    pytest.param("resnet20_sdbnn.fmnist", _setter("architecture", "resnet20_bnn"),
                 r"layer1\.0\.conv1\.asd\.fc1\.weight: stored \(\d+, 16\), unexpected",
                 id="binary-method-parts-unexpected"),
]  # fmt: skip


def _edited_copy(checkpoint: str, dest: Path, edit: Callable[[dict[str, Any]], None] | None) -> Path:
    """A copy of ``checkpoint``'s folder under ``dest``, its config.json edited (the weights and their sha256 kept)."""
    folder = dest / checkpoint
    shutil.copytree(MODELS / checkpoint, folder, ignore=shutil.ignore_patterns("test"))
    if edit is not None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def serve(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``serve(source_kind, checkpoint, edit)``: publish an edited copy that way; return the name that loads it."""

    def publish(kind: str, checkpoint: str, edit: Callable[[dict[str, Any]], None] | None) -> str:
        folder = _edited_copy(checkpoint, tmp_path / "models", edit)
        if kind == "local-dir":
            return f"local-dir:{folder}"
        if kind == "registry":
            monkeypatch.setenv("ZOO_MODELS_DIR", str(folder.parent))
            return checkpoint
        hub = request.getfixturevalue("hf_env").hub
        if kind == "hf-hub":
            hub.add_folder(f"org/{checkpoint}", folder)
            return f"hf-hub:org/{checkpoint}"
        assert kind == "registry-via-hub"
        hub.add_folder(registry.manifest_entry(checkpoint)["hf_hub_id"], folder)
        monkeypatch.setenv("ZOO_MODELS_DIR", str(tmp_path / "empty_models"))
        return checkpoint

    return publish


def _load(name: str, via: str, **kwargs: Any) -> torch.nn.Module:
    if via == "timm":
        return timm.create_model(name, pretrained=True, **kwargs)
    return zoo.from_pretrained(name, **kwargs)


def _stored_tensors(checkpoint: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors in the model's form (binary weights unpacked)."""
    return unpack_binary_weights(load_file(MODELS / checkpoint / "model.safetensors"), model)


def _assert_holds_exactly(model: torch.nn.Module, tensors: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    expected = {k: v for k, v in tensors.items() if not k.startswith(skip)}
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


@pytest.mark.parametrize("via", ["zoo", "timm"])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("checkpoint", "change", "names"), EDITS)
def test_shape_field_that_disagrees_with_the_weights_is_refused(serve, source, checkpoint, change, names, via) -> None:
    name = serve(source, checkpoint, change)
    with pytest.raises(ShapeMismatchError, match=f"(?s)config.json.*{names}{FIX}"):
        _load(name, via)


@pytest.mark.parametrize("source", SOURCES)
def test_unedited_binary_checkpoint_loads_its_stored_tensors(serve, source: str) -> None:
    model = _load(serve(source, "resnet20_sdbnn.fmnist", None), "zoo")
    _assert_holds_exactly(model, _stored_tensors("resnet20_sdbnn.fmnist", model))


@pytest.mark.parametrize("source", SOURCES)
def test_a_new_head_and_stem_come_from_the_call(serve, source: str) -> None:
    model = _load(serve(source, "resnet20.fmnist", None), "zoo", num_classes=5, in_chans=3)
    assert (model.fc.out_features, model.conv1.in_channels) == (5, 3)
    _assert_holds_exactly(model, _stored_tensors("resnet20.fmnist", model), skip=("fc.", "conv1."))


def test_mismatch_is_raised_before_the_real_model_is_built(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    name = serve("local-dir", "resnet20.fmnist", _setter("model_args.num_classes", 7))
    loaded = []  # builds that load weights (the check's own build is weightless, on the meta device)
    real_build = _builder.build_model_with_cfg

    def recording_build(model_cls, variant, pretrained, **kwargs):
        loaded.extend([variant] if pretrained else [])
        return real_build(model_cls, variant, pretrained, **kwargs)

    monkeypatch.setattr(_builder, "build_model_with_cfg", recording_build)
    with pytest.raises(ShapeMismatchError):
        zoo.from_pretrained(name)
    assert loaded == []
    assert isinstance(zoo.from_pretrained("resnet20.fmnist"), torch.nn.Module) and loaded == ["resnet20"]


# ---------------------------------------------------------------------------------------------------- fuzzed

_odd_value = st.sampled_from([None, "7", 7.5, True, -1, 0, [16, 32, 64]])
_config_change = st.one_of(
    st.tuples(st.just("num_classes"), st.integers(0, 12)),
    st.tuples(st.just("pretrained_cfg.num_classes"), st.integers(0, 12)),
    st.tuples(st.just("pretrained_cfg.input_size"), st.tuples(st.integers(1, 4), st.just(28), st.just(28)).map(list)),
    st.tuples(st.just("model_args.num_classes"), st.one_of(st.integers(0, 12), _odd_value)),
    st.tuples(st.just("model_args.in_chans"), st.one_of(st.integers(1, 4), _odd_value)),
    st.tuples(st.just("model_args.stage_widths"), st.one_of(
        st.lists(st.sampled_from([8, 16, 32, 64]), min_size=3, max_size=3), _odd_value)),
    st.tuples(st.just("model_args.global_pool"), st.sampled_from(["avg", "max", "avgmax", "catavgmax"])),
    st.tuples(st.just("model_args.depth"), st.sampled_from([20, 32])),
)  # fmt: skip


class _State(dict):
    """A state dict with a short repr, for hypothesis' reports."""

    def __repr__(self) -> str:
        return f"<state dict of {len(self)} tensors>"


@pytest.fixture(scope="module")
def unedited_state() -> _State:
    return _State(zoo.from_pretrained("resnet20.fmnist").state_dict())


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=st.lists(_config_change, min_size=1, max_size=3), via=st.sampled_from(["zoo", "timm"]))
def test_fuzzed_config_loads_the_stored_model_or_fails_clearly(tmp_path_factory, unedited_state, changes, via) -> None:
    folder = _edited_copy("resnet20.fmnist", tmp_path_factory.mktemp("fuzz"), lambda c: [_set(c, *x) for x in changes])
    # timm.create_model calls the entrypoint before any zoo code runs: a model_args key the entrypoint fixes itself
    # (e.g. depth) fails there with Python's own TypeError; zoo.from_pretrained checks the config first.
    refusals = ZooError if via == "zoo" else (ZooError, TypeError)
    try:
        model = _load(f"local-dir:{folder}", via)
    except refusals:
        return
    _assert_holds_exactly(model, unedited_state)
