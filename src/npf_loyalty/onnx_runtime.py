"""Batched scoring with onnxruntime (scoring side: onnxruntime + numpy only).

The scoring graph keeps its intermediates at [~2k splits, rows] bytes, so it is fastest fed
1–2k rows at a time (they stay in cache); ``run_in_batches`` slices the input and stitches
the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime

__all__ = ["make_session", "run_in_batches"]


def make_session(
    model: bytes | str | Path, threads: int = 2, *, spinning: bool = False
) -> onnxruntime.InferenceSession:
    """CPU session with ``intra_op_num_threads=threads``.

    Spinning worker threads are off by default: on a shared 2-vCPU host (Lambda, CI) a
    spinning thread competes with the one doing the work."""
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    source = str(model) if isinstance(model, Path) else model
    return onnxruntime.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_in_batches(
    session: onnxruntime.InferenceSession,
    x: np.ndarray,
    batch_rows: int = 2048,
    *,
    outputs: Sequence[str] | None = None,
    workers: int = 1,
) -> dict[str, np.ndarray]:
    """Run ``session`` on ``x`` [N, F] in row batches; returns {output name: [N, ...] array}.

    The first batch runs normally (to learn output shapes and types); the others write
    into the result arrays through an IO binding.  ``workers`` > 1 runs batches
    concurrently on that many threads (``InferenceSession.run`` is thread-safe and releases
    the GIL); with single-threaded sessions this parallelises without onnxruntime's
    per-operator thread synchronisation.  ``outputs`` selects outputs (all by default);
    onnxruntime still runs every node, but unfetched outputs are not copied out."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    x = np.ascontiguousarray(x, dtype=np.float32)
    input_name = session.get_inputs()[0].name
    names = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
    n_rows = x.shape[0]
    first_hi = min(batch_rows, n_rows)
    first = session.run(names, {input_name: x[:first_hi]})
    result = {
        name: np.empty((n_rows, *np.shape(part)[1:]), dtype=np.asarray(part).dtype)
        for name, part in zip(names, first, strict=True)
    }
    for name, part in zip(names, first, strict=True):
        result[name][:first_hi] = part

    def run(lo: int) -> None:
        # Bind this batch's slices of the result arrays as the outputs: onnxruntime writes
        # straight into them instead of returning new arrays that we would copy again
        # (the int32 leaf_index of 1M rows × 300 trees is 1.2 GB).
        hi = min(lo + batch_rows, n_rows)
        binding = session.io_binding()
        binding.bind_cpu_input(input_name, x[lo:hi])
        for name in names:
            view = result[name][lo:hi]
            binding.bind_output(name, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
        session.run_with_iobinding(binding)

    starts = range(first_hi, n_rows, batch_rows)
    if workers <= 1:
        for lo in starts:
            run(lo)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(run, starts):
                pass
    return result
