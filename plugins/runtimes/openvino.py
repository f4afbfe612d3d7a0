"""OpenVINO on the CPU: the cell's exported ONNX file read by ``openvino.Core``, compiled
with a static input shape for the profile's batch, in fp32, bf16 or int8.

* precision: the CPU plugin defaults ``INFERENCE_PRECISION_HINT`` to bf16 on CPUs with
  AVX512-BF16 or AMX, so ``fp32`` sets it to f32 explicitly and ``bf16`` asks for bf16 (only
  where the CPU reports ``BF16`` in ``OPTIMIZATION_CAPABILITIES``);
* int8: NNCF post-training quantization (``nncf.quantize``, the default ``PERFORMANCE``
  preset: symmetric int8 weights and activations, min-max style range estimation and fast
  bias correction) calibrated on the cell's training images, as the ONNX Runtime int8 is;
* threads: ``INFERENCE_NUM_THREADS`` from the profile, ``PERFORMANCE_HINT`` LATENCY and one
  stream; each row records the values the compiled model reports it runs with;
* parity: fp32 outputs are compared with PyTorch's on the same inputs (a row whose fp32
  disagrees fails, with the comparison kept); int8 and bf16 outputs on the test images come
  back for the accuracy after conversion.

Each profile is measured in its own worker process (:mod:`harness.measure.isolate`).
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from ._common import Loaded, as_float_images, file_mb, measure_converted, once_per_cell

PRECISIONS = ("fp32", "bf16", "int8")
_OV_TYPE = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: fp32 for the layers NNCF
#                                                            leaves unquantized
_REPORTED = ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS",
             "INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING")


def openvino_available() -> tuple[bool, str]:
    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    if missing:
        return False, (f"{' and '.join(missing)} not installed "
                       f"(pip install 'transfer-bench[openvino]')")
    return True, ""


def _core():
    import openvino as ov
    return ov.Core()


def convert(art, profile, precision: str) -> tuple[Path, dict]:
    """The model OpenVINO reads for ``precision``: the ONNX file itself, or for int8 an NNCF
    int8 copy saved as OpenVINO IR (``.xml`` + ``.bin``), made once per cell (its batch axis
    is reshaped at load); its path and how it was made."""
    if precision != "int8":
        return Path(art.onnx_path), {}
    return once_per_cell(art, f"{Path(art.onnx_path).stem}.openvino-int8.xml",
                         lambda dst: _quantize(art, dst))


def _quantize(art, dst: Path) -> dict:
    import nncf
    import openvino as ov
    calib = as_float_images(art.calibration)
    if calib is None or not len(calib):
        raise ValueError("OpenVINO int8 (NNCF) needs calibration images; the cell passed none "
                         "(Artifacts.calibration)")
    t0 = time.perf_counter()
    model = _core().read_model(str(art.onnx_path))
    name = model.inputs[0].get_any_name()
    data = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda x: {name: x})
    qmodel = nncf.quantize(model, data, subset_size=len(calib),
                           preset=nncf.QuantizationPreset.PERFORMANCE)
    ov.save_model(qmodel, str(dst), compress_to_fp16=False)
    return {"method": f"nncf.quantize {nncf.__version__}: PERFORMANCE preset (symmetric int8 "
                      "weights and activations), fast bias correction",
            "calibration_images": int(len(calib)), "quantize_s": time.perf_counter() - t0,
            "file_mb": sum(file_mb(f) or 0 for f in (dst, dst.with_suffix(".bin")))}


def _shown(value) -> str:
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def loader(n_threads: int):
    """``load(path, precision, x)`` for :func:`measure_converted`: a CPU compiled model for
    the static shape of ``x``, with the settings asked for and those it reports."""
    import openvino as ov
    core = _core()

    def load(path, precision: str, x) -> Loaded:
        model = core.read_model(str(path))
        model.reshape({model.inputs[0].get_any_name(): list(x.shape)})
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": n_threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": _OV_TYPE[precision]})
        req, out = compiled.create_infer_request(), compiled.outputs[0]
        return Loaded(call=lambda: req.infer({0: x}), run=lambda b: req.infer({0: b})[out],
                      info={"openvino": ov.__version__,
                            "compiled_with": {k: _shown(compiled.get_property(k))
                                              for k in _REPORTED}})

    return load


def refusal(precision: str):
    """Why OpenVINO's CPU plugin does not measure ``precision`` here, or None."""
    if precision not in PRECISIONS:
        return f"OpenVINO's CPU plugin is measured in {', '.join(PRECISIONS)}; {precision} is not"
    if precision == "bf16":
        caps = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            return (f"this CPU has no native bf16: OpenVINO reports "
                    f"OPTIMIZATION_CAPABILITIES = {caps}")
    return None


def openvino_measure(art, profile, settings) -> list[dict]:
    """fp32, bf16 and int8 (NNCF) on OpenVINO's CPU plugin, as the profile asks."""
    return measure_converted(art, profile, settings, refusal, convert, loader,
                             scope="compilation + inference",
                             cpu_only="the openvino runtime measures the CPU plugin; it does "
                                      "not run gpu profiles")
