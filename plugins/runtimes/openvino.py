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

Each profile is measured in its own worker process (:mod:`harness.isolate`).
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from harness.latency import PeakMemory, measure

from ._common import (as_float_images, failed, file_mb, fixed_batch_outputs, inputs,
                      parity_vs_pytorch, threads, unsupported)

PRECISIONS = ("fp32", "bf16", "int8")
_OV_TYPE = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: fp32 for the layers NNCF
#                                                            leaves unquantized


def openvino_available() -> tuple[bool, str]:
    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    if missing:
        return False, (f"{' and '.join(missing)} not installed "
                       f"(pip install 'transfer-bench[openvino]')")
    return True, ""


def quantize(art, core) -> tuple[Path, dict]:
    """An NNCF int8 copy of ``art.onnx_path`` saved as OpenVINO IR; its path and how."""
    import nncf
    import openvino as ov
    calib = as_float_images(art.calibration)
    if calib is None or not len(calib):
        raise ValueError("OpenVINO int8 (NNCF) needs calibration images; the cell passed none "
                         "(Artifacts.calibration)")
    t0 = time.perf_counter()
    model = core.read_model(str(art.onnx_path))
    name = model.inputs[0].get_any_name()
    data = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda x: {name: x})
    qmodel = nncf.quantize(model, data, subset_size=len(calib),
                           preset=nncf.QuantizationPreset.PERFORMANCE)
    dst = Path(art.workdir) / f"{Path(art.onnx_path).stem}.openvino-int8.xml"
    ov.save_model(qmodel, str(dst), compress_to_fp16=False)
    return dst, {"method": f"nncf.quantize {nncf.__version__}: PERFORMANCE preset (symmetric "
                           "int8 weights and activations), fast bias correction",
                 "calibration_images": int(len(calib)),
                 "quantize_s": time.perf_counter() - t0}


def _ir_mb(path: Path):
    return sum(file_mb(p) or 0 for p in (path, path.with_suffix(".bin"))) if path.suffix == ".xml" \
        else file_mb(path)


def compile_model(core, path, batch: int, image_size: int, precision: str, n_threads: int):
    """A CPU compiled model for a static ``(batch, 3, S, S)`` input; the settings asked for
    and those the compiled model reports."""
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): [batch, 3, image_size, image_size]})
    asked = {"INFERENCE_NUM_THREADS": n_threads, "PERFORMANCE_HINT": "LATENCY",
             "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": _OV_TYPE[precision]}
    compiled = core.compile_model(model, "CPU", asked)
    used = {k: str(compiled.get_property(k)) for k in
            ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS",
             "INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING")}
    return compiled, used


def openvino_measure(art, profile, settings) -> list[dict]:
    """fp32, bf16 and int8 (NNCF) on OpenVINO's CPU plugin, as the profile asks."""
    if profile.device == "gpu":
        return [unsupported(p, "the openvino runtime measures the CPU plugin; it does not run "
                               "gpu profiles") for p in profile.precisions]
    import openvino as ov
    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    n, x = threads(profile), inputs(art, profile)
    test = as_float_images(art.test_images)
    rows = []
    for prec in profile.precisions:
        if prec not in PRECISIONS:
            rows.append(unsupported(prec, f"OpenVINO's CPU plugin is measured in "
                                          f"{', '.join(PRECISIONS)}; {prec} is not"))
            continue
        if prec == "bf16" and "BF16" not in caps:
            rows.append(unsupported(prec, f"this CPU has no native bf16: OpenVINO reports "
                                          f"OPTIMIZATION_CAPABILITIES = {caps}"))
            continue
        try:
            path, how = (Path(art.onnx_path), {}) if prec != "int8" else quantize(art, core)
            with PeakMemory() as mem:
                compiled, used = compile_model(core, path, profile.batch_size, art.image_size,
                                               prec, n)
                req = compiled.create_infer_request()

                def run(batch):
                    return req.infer({0: batch})[compiled.outputs[0]]

                stats = measure(lambda: req.infer({0: x}), profile.batch_size, settings)
            row = {"precision": prec, "stats": stats, "device": "cpu", "threads": n,
                   "openvino": ov.__version__, "compiled_with": used,
                   "memory": {**mem.as_dict(), "scope": "compilation + inference"},
                   "file_mb": _ir_mb(path), **how}
            row["parity"] = parity_vs_pytorch(art, x, run(x), strict=(prec == "fp32"))
            if prec != "fp32" and test is not None:
                row["test_outputs"] = fixed_batch_outputs(run, test, profile.batch_size)
            rows.append(row)
        except Exception as exc:  # one precision failing does not hide the others
            rows.append(failed(prec, exc))
    return rows
