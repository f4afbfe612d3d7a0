"""The TensorRT runtime against the API surfaces of TensorRT 10 (weakly typed: precision
builder flags, int8 calibrators) and TensorRT 11 (strongly typed: those removed), without a
GPU: fake ``tensorrt`` modules shaped like each version's Python API build from real ONNX
files (exported and converted here by the installed onnx and ONNX Runtime)."""
from __future__ import annotations

import enum
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from harness.measure.export import export_onnx
from plugins.runtimes import tensorrt as trt_rt

SIZE = 16


class _Builder:
    def __init__(self, trt):
        self.trt = trt
        self.created_with = None

    def create_network(self, flags=0):
        self.created_with = flags
        return self.trt.network

    def create_builder_config(self):
        return self.trt.Config()

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        trt = self.trt
        trt.built.append({"flags": sorted(f.name for f in config.flags),
                          "network_flags": self.created_with, "parsed": network.parsed,
                          "config": config})
        cal = getattr(config, "int8_calibrator", None)
        if cal is not None:  # what TensorRT 10 does: read whole calibration-profile batches
            shape = config.calibration_profile.shapes[network.get_input(0).name][1]
            assert shape[0] == cal.get_batch_size(), "calibration profile batch != calibrator's"
            volume = int(np.prod(shape))
            while True:
                ptrs = cal.get_batch([network.get_input(0).name])
                if ptrs is None:
                    break
                assert cal.buf.numel() >= volume, "TensorRT would read past the buffer"
                trt.calibration_batches += 1
        return b"plan"


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (lo, opt, hi)


class _Network:
    parsed = None

    def get_input(self, i):
        return types.SimpleNamespace(name="images")


class _Parser:
    def __init__(self, network, logger):
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path):
        self.network.parsed = onnx.load(path)
        return True


def fake_tensorrt(major: int):
    """A module with the parts of ``tensorrt`` ``build_engine`` touches, as in ``major``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = f"{major}.0.0"
    names = ["TF32", "FP16", "INT8"] if major == 10 else ["TF32"]
    trt.BuilderFlag = enum.Enum("BuilderFlag", names)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                      {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.network = _Network()
    trt.built, trt.calibration_batches = [], 0
    trt.Builder = lambda logger: _Builder(trt)
    trt.OnnxParser = _Parser

    class Config10:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # on by default, as in TensorRT
            self.int8_calibrator = None
            self.calibration_profile = None

        def set_memory_pool_limit(self, pool, size):
            pass

        def add_optimization_profile(self, prof):
            self.profile = prof

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.flags.discard(f)

        def get_flag(self, f):
            return f in self.flags

        def set_calibration_profile(self, prof):
            self.calibration_profile = prof

    if major == 10:
        trt.Config = Config10

        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    else:  # 11: no calibrator attribute, no calibration profile, no calibrator classes
        class Config11:
            __slots__ = ("flags", "profile")
            __init__ = lambda self: setattr(self, "flags", {trt.BuilderFlag.TF32})
            set_memory_pool_limit = Config10.set_memory_pool_limit
            add_optimization_profile = Config10.add_optimization_profile
            set_flag, clear_flag, get_flag = Config10.set_flag, Config10.clear_flag, \
                Config10.get_flag

        trt.Config = Config11
    return trt


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3)).eval()
    path = export_onnx(model, SIZE, folder / "model.onnx")
    calib = np.random.default_rng(0).random((5, 3, SIZE, SIZE), dtype=np.float32)
    return types.SimpleNamespace(onnx_path=path, workdir=folder, cell_dir=folder,
                                 calibration=calib, model=model, image_size=SIZE)


def _types(model) -> set:
    return {i.data_type for i in model.graph.initializer}


def test_the_api_surface_decides_weak_or_strong_typing():
    assert trt_rt.typing_of(fake_tensorrt(10)) == "weak"
    assert trt_rt.typing_of(fake_tensorrt(11)) == "strong"


@pytest.mark.parametrize("precision", trt_rt.PRECISIONS)
def test_tensorrt_10_builds_with_precision_flags_and_int8_falls_back_to_fp16(art, precision):
    trt = fake_tensorrt(10)
    path, how = trt_rt.onnx_for(art, precision, "weak")
    plan, info = trt_rt.build_engine(path, 8, SIZE, precision, art.calibration, art.workdir,
                                     trt=trt, calib_device="cpu")
    built = trt.built[-1]
    assert built["network_flags"] == 0 and info["typing"] == "weak"
    expected = {"fp32": ["TF32"], "fp16": ["FP16", "TF32"], "int8": ["FP16", "INT8", "TF32"]}
    assert built["flags"] == expected[precision]
    assert _types(built["parsed"]) == {onnx.TensorProto.FLOAT}  # the fp32 file every time
    if precision == "int8":
        # 5 calibration images and batch 8: one calibration batch of 5, never 8
        assert trt.calibration_batches == 1
        assert built["config"].calibration_profile.shapes["images"][1][0] == 5


@pytest.mark.parametrize("precision", trt_rt.PRECISIONS)
def test_tensorrt_11_builds_strongly_typed_from_converted_onnx(art, precision):
    trt = fake_tensorrt(11)
    path, how = trt_rt.onnx_for(art, precision, "strong")
    plan, info = trt_rt.build_engine(path, 8, SIZE, precision, art.calibration, art.workdir,
                                     trt=trt)
    built = trt.built[-1]
    assert built["network_flags"] == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert built["flags"] == ["TF32"]  # no precision flag: they do not exist in 11
    graph = built["parsed"].graph
    ops = {n.op_type for n in graph.node}
    io = {v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    assert io == {onnx.TensorProto.FLOAT}  # inputs and outputs stay fp32
    if precision == "fp16":
        assert onnx.TensorProto.FLOAT16 in _types(built["parsed"])
    onnx.checker.check_model(built["parsed"])  # valid, nodes topologically sorted
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        zero_points = [onnx.numpy_helper.to_array(i) for i in graph.initializer
                       if i.name.endswith("zero_point")]
        assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
        scales = {i.data_type for i in graph.initializer if i.name.endswith("scale")}
        assert scales == {onnx.TensorProto.FLOAT16}, "fp16 outside the int8 layers"
        producer = {o: n.op_type for n in graph.node for o in n.output}
        for node in graph.node:  # int8 layers read their DequantizeLinear directly
            if node.op_type in ("Conv", "Gemm"):
                assert producer.get(node.input[0]) == "DequantizeLinear"
    if precision == "fp32":
        assert _types(built["parsed"]) == {onnx.TensorProto.FLOAT} and "QuantizeLinear" not in ops
    assert "strongly typed" in how["types"] or precision == "fp32"


def test_tf32_is_cleared_when_asked_and_recorded(art):
    trt = fake_tensorrt(11)
    _, on = trt_rt.build_engine(art.onnx_path, 1, SIZE, "fp32", trt=trt)
    _, off = trt_rt.build_engine(art.onnx_path, 1, SIZE, "fp32", trt=trt, tf32=False)
    assert (on["tf32"], off["tf32"]) == (True, False)
    assert trt.built[-1]["flags"] == []


def test_int8_without_calibration_images_is_refused_on_tensorrt_10(art):
    with pytest.raises(ValueError, match="calibration images"):
        trt_rt.build_engine(art.onnx_path, 4, SIZE, "int8", None, trt=fake_tensorrt(10))


def test_the_converted_files_compute_what_the_model_computes(art):
    """The fp16 and Q/DQ files a TensorRT 11 build parses are the same model: ONNX Runtime's
    CPU provider runs them close to PyTorch (fp16 at fp16's tolerance)."""
    import onnxruntime as ort
    x = art.calibration[:2]
    ref = art.model(torch.from_numpy(x)).detach().numpy()
    # the graphs as written: ONNX Runtime's own CPU optimizations fuse Q/DQ with fp16
    # scales wrongly (ORT 1.32: a QDQ Gemm gave -4320 for 0.04); TensorRT parses the file
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for precision, tol in (("fp16", 1e-2), ("int8", 0.1)):
        path, _ = trt_rt.onnx_for(art, precision, "strong")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        scale = max(1.0, float(np.abs(ref).max()))
        assert np.abs(got - ref).max() <= tol * scale, precision


@pytest.mark.parametrize("major", [10, 11])
def test_the_installed_tensorrt_module_is_the_one_used(art, monkeypatch, major):
    """A ``tensorrt`` of either version in sys.modules: build_engine imports it (no ``trt``
    argument), and without a GPU the runtime says the GPU is what is missing."""
    import importlib.machinery
    import sys
    trt = fake_tensorrt(major)
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    path, _ = trt_rt.onnx_for(art, "fp16", trt_rt.typing_of(trt))
    _, info = trt_rt.build_engine(path, 2, SIZE, "fp16")
    assert info["typing"] == ("weak" if major == 10 else "strong")
    assert trt.built and trt.built[-1]["flags"] == (["FP16", "TF32"] if major == 10
                                                    else ["TF32"])
    ok, why = trt_rt.tensorrt_available()
    if not torch.cuda.is_available():
        assert not ok and "CUDA" in why and "not installed" not in why


def test_the_gpu_extra_installs_exactly_one_onnx_runtime():
    """onnxruntime and onnxruntime-gpu share a package folder: the core requires neither,
    [cpu] brings the CPU build and [gpu] the GPU build, never both."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")

    def names(text):
        return {line.split(";")[0].split("=")[0].split(">")[0].split("<")[0].split("[")[0]
                .strip().lower() for line in text.splitlines() if line.strip()}

    core = names(cfg["options"]["install_requires"])
    extras = {k: names(v) for k, v in cfg["options.extras_require"].items()}
    ort = {"onnxruntime", "onnxruntime-gpu"}
    assert not core & ort
    assert extras["cpu"] & ort == {"onnxruntime"}
    assert extras["gpu"] & ort == {"onnxruntime-gpu"} and "tensorrt" in extras["gpu"]
    for name, reqs in extras.items():
        assert len(reqs & ort) <= 1, name
