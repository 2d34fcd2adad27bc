"""Instruction counts of a kernel's SASS, without a GPU (static analysis of a cubin).

Make the SASS (cuobjdump comes in the `nvidia-cuda-cuobjdump` wheel: unzip it, the binary is
`nvidia/cu13/bin/cuobjdump`):

    nvcc -std=c++20 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \\
         -I csrc -DLARGEOUT_WITH_CUDA=1 -DLARGEOUT_WITH_SM90=1 -I $CUTLASS/include \\
         -cubin csrc/kernels/cuda/sm90/group_sparse_sm90.cu -o gs90.cubin
    cuobjdump -sass gs90.cubin > gs90.sass

Then:

    python bench/sass_count.py ops gs90.sass REGEX
        opcode histogram of every function whose mangled name matches REGEX
    python bench/sass_count.py path gs90.sass REGEX START STOP [ADDR:T|F,...]
        the instructions executed from address START to STOP (hex, e.g. the top of a loop
        and its back edge) along one path: unconditional branches are followed, and each
        conditional branch on the way must be decided (T: taken, F: falls through); the
        first undecided one is printed, so the path is built one decision at a time.
        Predicated instructions count as issued.

Used for the forward's instructions per unit (bench/NOTES.md, session 22)."""

import argparse
import collections
import re
import sys


def functions(sass_path, pattern):
    text = open(sass_path).read()
    for chunk in re.split(r"\n\s*Function : ", text)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        if re.search(pattern, name):
            ins = []
            for line in chunk.split("\n"):
                m = re.search(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
                if m:
                    ins.append((int(m.group(1), 16), m.group(2).strip()))
            yield name, ins


def opcode(text):
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


def cmd_ops(a):
    for name, ins in functions(a.sass, a.pattern):
        ops = collections.Counter(opcode(t) for _, t in ins)
        print(f"{name}\n  {len(ins)} instructions: " + ", ".join(f"{k} {v}" for k, v in ops.most_common(a.top)))


def cmd_path(a):
    decide = {}
    for item in filter(None, (a.decisions or "").split(",")):
        addr, d = item.split(":")
        decide[int(addr, 16)] = d.upper() == "T"
    start, stop = int(a.start, 16), int(a.stop, 16)
    for name, ins in functions(a.sass, a.pattern):
        at = {addr: i for i, (addr, _) in enumerate(ins)}
        if start not in at:
            sys.exit(f"{hex(start)} is not an instruction address of {name}")
        i, n, ops = at[start], 0, collections.Counter()
        while ins[i][0] != stop:
            addr, t = ins[i]
            n += 1
            ops[opcode(t)] += 1
            if n > 100000:
                sys.exit("no STOP after 100000 instructions: a loop on the path (decide its branch)")
            m = re.search(r"\bBRA(?:\.\S+)? (?:`\(.*?\) )?0x([0-9a-f]+)", t)
            if m and opcode(t).startswith("BRA"):
                target = int(m.group(1), 16)
                if not t.startswith("@"):
                    i = at[target]
                    continue
                if addr not in decide:
                    sys.exit(f"undecided: {hex(addr)} {t} (after {n} instructions)")
                if decide[addr]:
                    i = at[target]
                    continue
            i += 1
        print(f"{name}\n  {n} instructions from {hex(start)} to {hex(stop)}: "
              + ", ".join(f"{k} {v}" for k, v in ops.most_common(a.top)))
        return
    sys.exit(f"no function matches {a.pattern}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ops")
    p.add_argument("sass")
    p.add_argument("pattern")
    p.add_argument("--top", type=int, default=20)
    p.set_defaults(fn=cmd_ops)
    p = sub.add_parser("path")
    p.add_argument("sass")
    p.add_argument("pattern")
    p.add_argument("start")
    p.add_argument("stop")
    p.add_argument("decisions", nargs="?")
    p.add_argument("--top", type=int, default=12)
    p.set_defaults(fn=cmd_path)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
