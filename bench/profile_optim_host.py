#!/usr/bin/env python3
"""Where the host time of a largeout.optim step over many small tensors goes.

    python bench/profile_optim_host.py --device cuda --out host_parts.json

For each case (SGD with momentum, AdamW; bf16), --tensors parameters of --elements
elements: the whole step, then its parts timed alone on the same optimizer: the Python
checks (_check_step, which the fused step runs only after an error), the Python that
gathers the launches' arguments (_plan_group), the native op alone on the arguments the
step passed it, the op on the first tensor alone (its fixed cost: the slot table's copy
and the launch) and the native checks alone (_fused_optim_check, which a step of several
launches runs on each first). Each is the
median over --rounds rounds of --iters calls, the device synchronized around a round.
A cProfile listing of the whole step (top functions by own time) goes to the JSON too."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time

import torch

import largeout
from largeout import optim as lo_optim


def per_call(fn, device: str, iters: int, rounds: int) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for r in range(rounds + 1):
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        if r:
            times.append((time.perf_counter() - t) / iters)
    return statistics.median(times)


CASES = {
    "sgd-momentum bf16": lambda ps: lo_optim.SGD(ps, lr=1e-2, momentum=0.9),
    "adamw bf16": lambda ps: lo_optim.AdamW(ps, lr=1e-3),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--tensors", type=int, default=200)
    ap.add_argument("--elements", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--note", default="", help="what code ran (recorded in the JSON)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    ns = torch.ops.largeout
    real_op = ns._fused_optim_step_
    rows = []
    for case, make in CASES.items():
        ps = [torch.nn.Parameter(torch.randn(a.elements, generator=gen).to(a.device, torch.bfloat16))
              for _ in range(a.tensors)]
        for p in ps:
            p.grad = torch.randn(a.elements, generator=gen).to(a.device, torch.bfloat16) * 1e-3
        opt = make(ps)
        opt.step()  # the state exists from here on
        row = {"case": case}
        us = lambda s: round(s * 1e6, 2)  # noqa: E731
        row["step_us"] = us(per_call(opt.step, a.device, a.iters, a.rounds))
        row["check_step_us"] = us(per_call(opt._check_step, a.device, a.iters, a.rounds))
        group = opt.param_groups[0]

        def plan():
            launches = []
            opt._plan_group(group, [], launches, [])
            return launches
        row["plan_group_python_us"] = us(per_call(plan, a.device, a.iters, a.rounds))
        args = plan()[0]
        row["native_check_us"] = us(per_call(lambda: ns._fused_optim_check(*args), a.device, a.iters, a.rounds))
        row["op_alone_us"] = us(per_call(lambda: real_op(*args), a.device, a.iters, a.rounds))
        # the op on one tensor: its fixed cost (pinned table, copy, launch) without the per-tensor part
        one = tuple(x[:1] if isinstance(x, list) and x else x for x in args)
        row["op_one_tensor_us"] = us(per_call(lambda: real_op(*one), a.device, a.iters, a.rounds))
        row["randint_us"] = us(per_call(lambda: torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64,
                                                              generator=opt._gen).tolist(), a.device, a.iters,
                                        a.rounds))
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(a.iters):
            opt.step()
        prof.disable()
        if a.device == "cuda":
            torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
        row["cprofile_top"] = s.getvalue().splitlines()
        print(case, {k: v for k, v in row.items() if k != "cprofile_top"}, flush=True)
        rows.append(row)
    out = {"what": __doc__.splitlines()[0], "device": a.device,
           "device_name": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "tensors": a.tensors,
           "elements": a.elements, "iters": a.iters, "rounds": a.rounds, "torch": torch.__version__,
           "largeout": largeout.__version__, "note": a.note, "rows": rows}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
