"""How far a runtime's outputs may be from PyTorch eager fp32's, per precision: the one
table the whole project uses.

The run compares every runtime's outputs on the test images with PyTorch's by their
relative RMS difference ``||out - ref|| / ||ref||`` (:func:`harness.run.contracts.compare_outputs`);
a runtime may also check itself where it runs (the built-in GPU runtimes do, element by
element, with ``atol = tol x max(1, max|ref|)`` and ``rtol = tol``). Both read the
tolerance here, so a precision is held to one number wherever it is checked.

Why these numbers: fp32 allows operator reordering; TF32 tensor cores keep 10 mantissa
bits in their multiplies (about 1e-3 relative each, accumulated over the network); fp16
the same plus fp16 activations; bf16 7 bits; int8 its quantization error. A runtime off by
more computes something else: negated or shuffled outputs differ by about 1.4-2, zeros by 1.
No module here imports torch (runtime workers import it cheaply).
"""
from __future__ import annotations

#: the largest allowed difference from PyTorch eager fp32, per precision (``"tf32"``: an
#: fp32 row that ran with TF32 tensor cores)
OUTPUT_TOLERANCE = {"fp32": 1e-3, "tf32": 1e-2, "fp16": 5e-2, "bf16": 1e-1, "int8": 0.3}
#: for a precision the table does not name
DEFAULT_TOLERANCE = 0.3


def tolerance_key(precision: str, tf32: object = False) -> str:
    """The table's key for a row: ``"tf32"`` for an fp32 row that ran with TF32 on."""
    return "tf32" if precision == "fp32" and tf32 else str(precision)


def output_tolerance(precision: str, tf32: object = False) -> float:
    """The tolerance of a row of ``precision`` (TF32's for an fp32 row with ``tf32``)."""
    return OUTPUT_TOLERANCE.get(tolerance_key(precision, tf32), DEFAULT_TOLERANCE)
