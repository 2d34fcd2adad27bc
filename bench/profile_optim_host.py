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

import cProfile
import io
import pstats

import torch

from largeout import optim as lo_optim

from bench_optim_host import make_params, parse_args, per_call, write_json


CASES = {
    "sgd-momentum bf16": lambda ps: lo_optim.SGD(ps, lr=1e-2, momentum=0.9),
    "adamw bf16": lambda ps: lo_optim.AdamW(ps, lr=1e-3),
}


def main() -> None:
    a = parse_args(__doc__)
    gen = torch.Generator().manual_seed(0)
    ns = torch.ops.largeout
    real_op = ns._fused_optim_step_
    rows = []
    for case, make in CASES.items():
        ps = make_params(a, torch.bfloat16, gen)
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
    write_json(a, __doc__, rows)


if __name__ == "__main__":
    main()
