"""Weight sources: ImageNet offline fails fast and names alternatives, a file in the Hugging
Face cache is used without network, ``source:DATASET`` pretrains once and is cached."""
from __future__ import annotations

import socket
import time

import pytest
import torch
from torch import nn

from harness import BackboneSpec, hookimpl
from harness.api.errors import UnknownName, WeightsUnavailable
from harness.train.model import Backbone, LayerGroup


def _closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The hub points at a closed local port and the Hugging Face cache is empty."""
    monkeypatch.setenv("TRANSFER_BENCH_HUB_HOST", f"127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hf-hub"


def test_imagenet_offline_fails_fast_naming_alternatives(plugin_system, offline_hub):
    spec = plugin_system.backbones.get("mobilenetv2_100")
    bb = spec.build()
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        plugin_system.weights.get("imagenet").load(spec, bb, None, {})
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "out of reach" in msg and "127.0.0.1" in msg
    for alternative in ("mobilenetv2_100=packaged", "file:PATH", "source:DATASET", "=random"):
        assert alternative in msg


def test_imagenet_uses_a_file_in_the_hub_cache_without_network(plugin_system, offline_hub):
    """The layout huggingface_hub writes: refs/main names a snapshot holding the file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    full = timm.create_model("resnet18", num_classes=1000)  # as published: with its classifier
    commit = "0" * 40
    repo = offline_hub / "models--timm--resnet18.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()},
              str(snap / "model.safetensors"))

    spec = plugin_system.backbones.get("resnet18")
    torch.manual_seed(2)
    bb = spec.build()
    info = plugin_system.weights.get("imagenet").load(spec, bb, None, {})
    assert info["weights_tag"] == "resnet18.tv_in1k" and info["imagenet_top1"] == 69.758
    assert info["file"].endswith("model.safetensors")
    assert torch.equal(bb.model.conv1.weight, full.conv1.weight)
    assert torch.equal(bb.model.layer4[1].bn2.running_var, full.layer4[1].bn2.running_var)


def test_imagenet_unknown_tag_lists_the_tags(plugin_system, offline_hub):
    spec = plugin_system.backbones.get("resnet18")
    with pytest.raises(WeightsUnavailable, match="resnet18.tv_in1k"):
        plugin_system.weights.get("imagenet").load(spec, spec.build(), "nope_in1k", {})


# -- source:DATASET ----------------------------------------------------------------------------
class TinyBackbone(Backbone):
    """Two conv stages: enough to learn digits a little, in a second."""

    num_features = feature_channels = 32

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.stage = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32),
                                   nn.ReLU())

    def forward_spatial(self, x):
        return self.stage(self.stem(x))

    def forward(self, x):
        return self.forward_spatial(x).mean((2, 3))

    def layer_groups(self):
        return [LayerGroup("stem", [n for n, _ in self.named_parameters() if n.startswith("stem")]),
                LayerGroup("stage", [n for n, _ in self.named_parameters()
                                     if n.startswith("stage")])]


class TinyPlugin:
    @hookimpl
    def register_backbones(self):
        return [BackboneSpec("tiny", build=TinyBackbone, device_class="mobile")]


def _load_source(system, arg, cache, seed=0):
    spec = system.backbones.get("tiny")
    torch.manual_seed(seed)
    bb = spec.build()
    info = system.weights.get("source").load(
        spec, bb, arg, {"plugins": system, "cache_dir": cache, "image_size": 16, "seed": seed})
    return bb, info


def test_source_pretrains_once_then_loads_from_cache(register_plugin, tmp_path):
    system = register_plugin(TinyPlugin(), name="tiny")
    arg = "digits,epochs=4,batch_size=32,lr=0.01"
    bb1, first = _load_source(system, arg, tmp_path)
    assert first["cached"] is False and first["pretrained"] is True
    assert first["short"].startswith("source:digits") and "not ImageNet" in first["description"]
    assert first["source_epochs_run"] >= 1 and len(first["source_curve"]) >= 1
    assert first["source_val_accuracy"] > 0.3  # 10 classes: chance is 0.1
    files = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "source-weights").iterdir()
                   if p.suffix != ".lock")  # the lock file of harness.run.locks stays, empty
    assert files == ["head.safetensors", "json", "safetensors"], \
        "written atomically: no temporary files left"
    # the source classifier is kept for LEEP/NCE: 10 digit classes on the pooled features
    assert bb1.source_classifier.weight.shape == (10, bb1.num_features)

    bb2, second = _load_source(system, arg, tmp_path)
    assert second["cached"] is True and second["cache_key"] == first["cache_key"]
    assert second["source_val_accuracy"] == first["source_val_accuracy"]
    for (k, a), b in zip(bb1.state_dict().items(), bb2.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(bb1.source_classifier.weight, bb2.source_classifier.weight)

    _, other = _load_source(system, "digits,epochs=1,batch_size=32,lr=0.01", tmp_path)
    assert other["cache_key"] != first["cache_key"] and other["cached"] is False


def test_source_pretraining_time_comes_from_what_was_measured_here(register_plugin, tmp_path):
    """The plan's pretraining time (issue 25): unknown before anything was pretrained here,
    "cached" for the same settings, and per-epoch time x epochs for another seed or epoch
    count; another dataset, image size or learning rate tells nothing."""
    from plugins.weights_source import pretraining_time
    system = register_plugin(TinyPlugin(), name="tiny")
    arg = "digits,epochs=2,batch_size=32,lr=0.01"
    ctx = {"backbone": "tiny", "backbone_arg": None, "image_size": 16, "seed": 0,
           "cache_dir": tmp_path, "device": "cpu", "amp": "off"}
    before = pretraining_time(arg, ctx)
    assert before["cached"] is False and before["seconds"] is None
    assert "never pretrained" in before["basis"]

    _, made = _load_source(system, arg, tmp_path)
    each = made["source_train_seconds"] / made["source_epochs_run"]
    same = pretraining_time(arg, ctx)
    assert same["cached"] is True and same["seconds"] == 0.0 and "cached here" in same["basis"]
    other_seed = pretraining_time(arg, {**ctx, "seed": 1})
    assert other_seed["cached"] is False
    assert other_seed["seconds"] == pytest.approx(2 * each)
    longer = pretraining_time("digits,epochs=6,batch_size=32,lr=0.01", ctx)
    assert longer["seconds"] == pytest.approx(6 * each) and "6 epochs" in longer["basis"]
    for unlike_arg, unlike_ctx in (("digits,epochs=2,batch_size=32,lr=0.1", ctx),
                                   (arg, {**ctx, "image_size": 32}),
                                   (arg, {**ctx, "amp": "bf16"}),
                                   ("fashion_mnist,epochs=2,batch_size=32,lr=0.01", ctx)):
        assert pretraining_time(unlike_arg, unlike_ctx)["seconds"] is None, unlike_arg


def test_source_cache_key_covers_what_determines_the_weights(register_plugin, tmp_path):
    from plugins.weights_source import cache_key, parse_source
    system = register_plugin(TinyPlugin(), name="tiny")
    spec = system.backbones.get("tiny")
    torch.manual_seed(0)
    bb = spec.build()
    name, train, data = parse_source("digits,epochs=3,val_frac=0.25")
    assert (name, train["epochs"], data) == ("digits", 3, {"val_frac": 0.25})
    key, material = cache_key(spec, bb, name, data, train)
    assert {"torch", "timm"} <= set(material["versions"])
    torch.manual_seed(1)
    assert cache_key(spec, spec.build(), name, data, train)[0] != key  # another init
    assert cache_key(spec, bb, name, {"val_frac": 0.3}, train)[0] != key
    assert cache_key(spec, bb, name, data, {**train, "lr": 0.01})[0] != key


@pytest.mark.parametrize("arg, message", [
    ("", "source:DATASET"),
    ("digits,epochs", "key=value"),
    ("digits,epochs=0", "epochs must be a positive integer"),
    ("digits,lr=-1", "lr must be a positive number"),
])
def test_source_bad_syntax_says_how_to_write_it(plugin_system, arg, message):
    spec = plugin_system.backbones.get("resnet18")
    with pytest.raises(WeightsUnavailable, match=message):
        plugin_system.weights.get("source").load(spec, None, arg, {"plugins": plugin_system})


def test_source_unknown_dataset_lists_datasets(plugin_system):
    spec = plugin_system.backbones.get("resnet18")
    with pytest.raises(UnknownName, match="digits"):
        plugin_system.weights.get("source").load(spec, None, "digitz", {"plugins": plugin_system})


def test_weights_option_keeps_source_parameters_together():
    """``--weights resnet18=source:digits,epochs=3``: the commas stay in the weights string."""
    from harness.run.options import weights_mapping
    assert weights_mapping(["resnet18=source:digits,epochs=3"]) == {
        "resnet18": "source:digits,epochs=3"}
