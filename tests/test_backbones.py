"""Backbones: every registered backbone builds, gives pooled and spatial features at a tiny
input, splits its parameters into ordered layer groups exactly once, and round-trips its
weights through a file. The packaged MobileNetV2 recognises a real photo."""
from __future__ import annotations

import pytest
import torch

from harness.api.errors import WeightsUnavailable
from harness.api.manager import PluginSystem

# every registered backbone; the parametric ``timm`` spec is tested with a small architecture
_NAMES = PluginSystem(builtins=("plugins.backbones",), entry_points=False).backbones.names()
BACKBONES = [n for n in _NAMES if n != "timm"] + ["timm:resnet10t"]
SIZE = 32


@pytest.fixture(scope="module")
def built():
    """Backbones built once per module (VGG-19 takes a second to initialise)."""
    system = PluginSystem(entry_points=False)
    cache = {}

    def get(name):
        if name not in cache:
            spec, arg = system.backbones.resolve(name)
            torch.manual_seed(0)
            bb = spec.build(**({"arg": arg} if arg is not None else {})).eval()
            cache.clear()  # keep one big model in memory at a time
            cache[name] = (spec, bb)
        return cache[name]

    get.system = system
    return get


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_gives_pooled_and_spatial_features(built, name):
    _, bb = built(name)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        pooled = bb(x)
        spatial = bb.forward_spatial(x)
    assert pooled.shape == (2, bb.num_features)
    assert spatial.dim() == 4 and spatial.shape[:2] == (2, bb.feature_channels)
    assert spatial.shape[2] >= 1 and spatial.shape[3] >= 1
    assert torch.isfinite(pooled).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_layer_groups_partition_parameters_in_order(built, name):
    _, bb = built(name)
    groups = bb.layer_groups()
    names = [n for n, _ in bb.named_parameters()]
    flat = [p for g in groups for p in g.params]
    assert len(groups) >= 2, f"{name} has a single layer group: strategies cannot thaw gradually"
    assert sorted(flat) == sorted(names), "every parameter must be in exactly one group"
    assert len({g.name for g in groups}) == len(groups)
    position = {n: i for i, n in enumerate(names)}
    firsts = [min(position[p] for p in g.params) for g in groups]
    assert firsts == sorted(firsts), "groups must run from input to output"
    assert names[0] in groups[0].params


@pytest.mark.parametrize("name", BACKBONES)
def test_weights_round_trip_through_files(built, name, tmp_path):
    spec, bb = built(name)
    load_file = built.system.weights.get("file").load
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        before = bb(x)
    from safetensors.torch import save_file
    st_path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(st_path))
    pth_path = tmp_path / "w.pth"
    torch.save(bb.state_dict(), pth_path)  # the harness backbone's own names ("model." ...)
    for path in (st_path, pth_path):
        with torch.no_grad():  # scramble every weight and statistic, then load the file
            for t in bb.state_dict().values():
                if t.is_floating_point():
                    t.copy_(torch.randn_like(t).abs_() + 0.1)
            assert not torch.allclose(bb(x), before)
        info = load_file(spec, bb, str(path), {})
        assert info["pretrained"] and info["file"] == str(path)
        with torch.no_grad():
            assert torch.equal(bb(x), before), f"{path.suffix} round trip changed the outputs"


def test_mismatched_file_names_missing_and_unexpected_keys(built, tmp_path):
    spec, bb = built("resnet18")
    state = dict(bb.model.state_dict())
    state.pop("fc.weight", None)
    dropped = "layer4.1.bn2.weight"
    state.pop(dropped)
    state["extra.head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsUnavailable) as err:
        built.system.weights.get("file").load(spec, bb, str(path), {})
    msg = str(err.value)
    assert "missing keys: " + dropped in msg and "unexpected keys: extra.head.weight" in msg
    assert str(path) in msg


def test_unknown_timm_architecture_suggests_names(built):
    spec = built.system.backbones.get("timm")
    with pytest.raises(ValueError, match="resnet18"):
        spec.build(arg="resnet18x")


def _center_crop(img: torch.Tensor, size: int = 224, resize: int = 256) -> torch.Tensor:
    """torchvision's ImageNet evaluation transform: shorter side to 256, centre 224 crop."""
    x = img.permute(2, 0, 1)[None].float() / 255.0
    h, w = x.shape[-2:]
    scale = resize / min(h, w)
    x = torch.nn.functional.interpolate(x, size=(round(h * scale), round(w * scale)),
                                        mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


def test_packaged_mobilenetv2_recognises_espresso():
    """The packaged weights must be the real ImageNet ones, not merely tensors of the right shape.

    The harness backbone is headless (timm ``num_classes=0``), and the packaged source drops
    the checkpoint's 1000-class classifier. To ask the network what it sees we put that very
    classifier (torchvision's ``classifier.1``, kept in the same file) back on the features the
    harness backbone computes after ``packaged`` loaded it. ImageNet class 967 is espresso.
    """
    skimage_data = pytest.importorskip("skimage.data")
    from plugins.weights import PACKAGED, packaged_path
    system = PluginSystem(entry_points=False)
    spec = system.backbones.get("mobilenetv2_100")
    try:
        path = packaged_path(spec.name)
    except WeightsUnavailable as exc:
        pytest.skip(f"packaged weights unavailable here: {exc}")
    bb = spec.build().eval()
    info = system.weights.get("packaged").load(spec, bb, None, {})
    assert info["pretrained"] and "ImageNet" in info["description"]
    state = torch.load(path, map_location="cpu", weights_only=True)
    classifier = torch.nn.Linear(bb.num_features, 1000)
    classifier.load_state_dict({"weight": state["classifier.1.weight"],
                                "bias": state["classifier.1.bias"]})
    x = _center_crop(torch.from_numpy(skimage_data.coffee()))
    mean = torch.tensor(bb.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.std).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = classifier(bb((x - mean) / std)).softmax(-1)[0]
    assert int(probs.argmax()) == 967, f"top class {int(probs.argmax())} (p={probs.max():.2f})"
    assert float(probs[967]) > 0.5
    assert PACKAGED[spec.name][0] in info["description"]


def test_facts_are_computed_without_building_weights():
    """Facts come from the meta device; the GMACs match the published anchors at 224 px."""
    system = PluginSystem(builtins=("plugins.backbones",), entry_points=False)
    r18 = dict(system.backbones.get("resnet18").facts)
    assert 11.0e6 < r18["params"] < 11.3e6  # headless ResNet-18: 11.18 M
    assert abs(r18["gmacs"] - 1.82) < 0.05 and r18["gmacs_at"] == 224
    assert abs(r18["weights_mb"] - r18["params"] * 4 / 2**20) < 0.2  # fp32 + BN statistics
    assert r18["imagenet_top1"] == 69.758 and r18["weights_tag"] == "resnet18.tv_in1k"
    assert r18["mean"] == [0.485, 0.456, 0.406] and r18["input_size"] == 224
    v19 = dict(system.backbones.get("vgg19").facts)
    assert v19["params"] > 19e6 and v19["gmacs"] > 19  # conv layers alone: 19.5 GMACs
    mv2 = dict(system.backbones.get("mobilenetv2_100").facts)
    assert mv2["imagenet_top1"] == 71.878  # the packaged torchvision weights


def test_the_shipped_facts_table_is_what_a_measurement_gives():
    """bench list reads plugins/backbone_facts.json instead of importing torch and timm:
    it must hold every built-in backbone, for the installed timm, as measured now."""
    import importlib.metadata as md
    import json

    from plugins import backbones as b
    table = json.loads(b.FACTS_FILE.read_text())
    assert table["timm"] == md.version("timm"), (
        "timm changed: regenerate the table with python -m plugins.backbones --write-facts")
    assert set(table["facts"]) == set(b._FAMILIES)
    for name in ("resnet18", "mobilenetv3_small_100", "vgg11"):
        _, _, weights, pool, _ = b._FAMILIES[name]
        assert table["facts"][name] == {**b.measure_facts(name, pool, weights), "pool": pool}
        assert b.backbone_facts(name, pool, weights) == b.measure_facts(name, pool, weights)


def test_bench_list_backbones_shows_the_facts(plugin_system):
    from click.testing import CliRunner

    from harness.cli import cli
    result = CliRunner().invoke(cli, ["list", "backbones"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("resnet18 "))
    for fact in ("11.2M params", "43 MB", "1.81 GMACs@224px", "ImageNet top-1 69.8%",
                 "input 224px", "mean (0.485,0.456,0.406)"):
        assert fact in line
