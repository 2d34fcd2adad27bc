import json

import torch


def build_info() -> dict:
    """What the installed extension was compiled with.

    Returns a dict with keys ``version`` (largeout), ``torch`` (the torch version
    it was built against), ``torch_runtime`` (the torch running now),
    ``cuda_kernels`` (whether CUDA kernels are compiled in), ``cuda`` (nvcc
    version or None), ``cuda_archs`` (list such as ``["80", "90a"]``),
    ``cutlass`` (CUTLASS version or None) and ``cpu_threads`` (``"openmp"``: the CPU
    kernels run on torch's intra-op threads; ``"one"``: a build without OpenMP, whose CPU
    kernels run on one thread).
    """
    info = json.loads(torch.ops.largeout.build_info())
    info["torch_runtime"] = torch.__version__
    return info
