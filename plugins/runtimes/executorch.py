"""ExecuTorch with the XNNPACK delegate: how PyTorch models ship to phones, run here on
the x86 CPU with the same XNNPACK kernels (the mobile runtime).

* fp32: ``torch.export.export`` of the trained model for the profile's static input shape,
  lowered by ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and
  serialized to a ``.pte`` program;
* int8: PT2E static post-training quantization before lowering: ``XNNPACKQuantizer`` with
  ``get_symmetric_quantization_config(is_per_channel=True)`` (per-channel symmetric int8
  weights, per-tensor int8 activations with histogram observers), ``prepare_pt2e``,
  calibration on the cell's training images, ``convert_pt2e``, export again and lower;
* run: ``executorch.runtime.Runtime`` loads the program; XNNPACK's thread pool is set to the
  profile's threads (``_unsafe_reset_threadpool``) and the count it reports is recorded;
* each row records how much of the graph XNNPACK took (delegated versus portable-kernel
  nodes), fp32 parity against PyTorch, and for int8 the outputs on the test images for
  the accuracy after quantization.

Lowering is slow (tens of seconds for a MobileNet on 2 loaded cores); ``lower_s`` says how
long. Each profile is measured in its own worker process (:mod:`harness.measure.isolate`).
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path


from ._common import Loaded, as_float_images, fixed_batch_outputs, inputs, measure_converted

PRECISIONS = ("fp32", "int8")
_NEEDED = ("executorch", "executorch.backends.xnnpack", "executorch.runtime", "torchao")


def executorch_available() -> tuple[bool, str]:
    """Whether ExecuTorch, its XNNPACK backend and its runtime bindings are installed.

    Only looks the modules up (importing ExecuTorch takes about 10 s); an import that fails
    all the same is reported with its exact error in the runtime's rows."""
    try:
        missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
    except ImportError as exc:
        return False, f"ExecuTorch is installed but cannot be looked up: {exc}"
    if missing:
        return False, (f"{', '.join(missing)} not installed "
                       f"(pip install 'transfer-bench[mobile]')")
    return True, ""


def lower(model, x, precision: str, calibration=None) -> tuple[bytes, dict]:
    """An ExecuTorch program (``.pte`` bytes) of ``model`` for inputs shaped like ``x``,
    XNNPACK-delegated, in fp32 or int8; and how it was made."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    t0 = time.perf_counter()
    ep = torch.export.export(model, (x,))
    how: dict = {}
    if precision == "int8":
        ep, how = _quantize(ep, x, calibration)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    program = edge.to_executorch()
    how.update(lower_s=time.perf_counter() - t0, delegate="XnnpackBackend",
               delegation={"subgraphs": info.num_delegated_subgraphs,
                           "delegated_nodes": info.num_delegated_nodes,
                           "portable_nodes": info.num_non_delegated_nodes})
    return program.buffer, how


def _quantize(ep, x, calibration):
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    calib = as_float_images(calibration)
    if calib is None or not len(calib):
        raise ValueError("ExecuTorch int8 needs calibration images; the cell passed none "
                         "(Artifacts.calibration)")
    t0 = time.perf_counter()
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():  # the observers see every calibration image, at the measured shape
        fixed_batch_outputs(lambda c: prepared(torch.from_numpy(c)).detach().numpy(), calib,
                            x.shape[0])
    converted = convert_pt2e(prepared)
    how = {"method": "PT2E static quantization, XNNPACKQuantizer symmetric: per-channel int8 "
                     "weights, per-tensor int8 activations (histogram observers)",
           "calibration_images": int(len(calib)), "quantize_s": time.perf_counter() - t0}
    return torch.export.export(converted, (x,)), how


def convert(art, profile, precision: str) -> tuple[Path, dict]:
    """Lower ``art.model`` for the profile's input shape; the ``.pte`` path and how."""
    import torch
    x = torch.from_numpy(inputs(art, profile))
    buffer, how = lower(art.model.eval(), x, precision, art.calibration)
    path = Path(art.workdir) / f"model.{precision}.b{profile.batch_size}.pte"
    path.write_bytes(buffer)
    return path, how


def loader(n_threads: int):
    """``load(path, precision, x)`` for :func:`measure_converted`: the program's forward
    method on ExecuTorch's runtime, XNNPACK's thread pool set to ``n_threads``."""
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime
    runtime = Runtime.get()

    def load(path, precision: str, x) -> Loaded:
        portable_lib._unsafe_reset_threadpool(n_threads)
        method = runtime.load_program(path).load_method("forward")
        xt = torch.from_numpy(x)
        return Loaded(call=lambda: method.execute([xt]),
                      run=lambda b: method.execute([torch.from_numpy(b)])[0].numpy(),
                      info={"threadpool_threads":
                            int(portable_lib._threadpool_get_thread_count()),
                            "executorch": _version()})

    return load


def refusal(precision: str):
    if precision not in PRECISIONS:
        return f"ExecuTorch + XNNPACK is measured in {', '.join(PRECISIONS)}; {precision} is not"
    return None


def executorch_measure(art, profile, settings) -> list[dict]:
    """fp32 and int8 programs lowered to XNNPACK, run by ExecuTorch's runtime."""
    return measure_converted(art, profile, settings, refusal, convert, loader,
                             scope="program load + inference",
                             cpu_only="ExecuTorch's XNNPACK delegate runs on the CPU; it does "
                                      "not run gpu profiles")


def _version() -> str:
    from importlib.metadata import version
    return version("executorch")
