"""Run a Python snippet as other CPUs would: what one machine can imitate of another's
arithmetic, for the tests that claim a dataset is the same on every machine."""

from __future__ import annotations

import os
import subprocess
import sys

#: The defaults on one thread, then another CPU's arithmetic as far as one machine can
#: imitate it: MKL's reproducible (SSE2) kernels, OpenBLAS's generic ones, NumPy without its
#: AVX2 / AVX-512 paths, torch's scalar kernels, and two threads.
CPU_VARIANTS = (
    {"OMP_NUM_THREADS": "1"},
    {
        "OMP_NUM_THREADS": "2",
        "MKL_CBWR": "COMPATIBLE",
        "OPENBLAS_CORETYPE": "Prescott",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL X86_V3",
        "ATEN_CPU_CAPABILITY": "default",
    },
)


def outputs_on_cpu_variants(code: str) -> list[str]:
    """The stdout of ``python -c code`` under each of :data:`CPU_VARIANTS`."""
    outputs = []
    for extra in CPU_VARIANTS:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    return outputs
