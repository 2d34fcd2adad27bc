"""Summary of Nsight Compute's per-instruction page (the CSV that ``run_device.sh dwprof``
writes with ``ncu -i REPORT --page source --print-source sass --csv``): stall samples by
reason, the instructions with the most samples, and samples and executed instructions
grouped by execution count (instructions executed equally often usually belong to one
role of a warp-specialized kernel: a loader, the computing warpgroups).

    python bench/ncu_sass_summary.py bench/results/ncu_dw_sass_G32_s18b_h100.csv [--top 25]
"""

import argparse
import collections
import csv
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25, help="instructions listed by samples")
    ap.add_argument("--groups", type=int, default=8, help="execution-count groups listed")
    args = ap.parse_args(argv)
    rows = list(csv.reader(open(args.csv, newline="")))
    head = next((i for i, r in enumerate(rows) if r and r[0] == "Address"), None)
    if head is None:
        print(f"{args.csv}: no 'Address' header row (not ncu's source page as CSV)", file=sys.stderr)
        return 2
    hdr, data = rows[head], [r for r in rows[head + 1:] if len(r) == len(rows[head])]
    col = {name: i for i, name in enumerate(hdr)}
    stall = [(i, n) for i, n in enumerate(hdr) if n.startswith("stall_") and "(Not Issued)" not in n]

    def num(r, i):
        try:
            return int(r[i])
        except ValueError:
            return 0

    samples, executed = col["Warp Stall Sampling (All Samples)"], col["Instructions Executed"]
    by_reason = collections.Counter({n: sum(num(r, i) for r in data) for i, n in stall})
    total = sum(by_reason.values()) or 1
    print(f"{len(data)} instructions, {total} stall samples")
    for n, v in by_reason.most_common(8):
        print(f"  {n:28s} {v:9d} {100 * v / total:5.1f}%")
    print(f"\ntop {args.top} instructions by samples (samples, executed, two main reasons):")
    for r in sorted(data, key=lambda r: -num(r, samples))[: args.top]:
        why = sorted(((num(r, i), n[6:]) for i, n in stall), reverse=True)[:2]
        print(f"  {r[col['Source']].strip()[:64]:64s} {num(r, samples):7d} {num(r, executed):10d} "
              + ", ".join(f"{n} {v}" for v, n in why))
    groups = collections.defaultdict(lambda: [0, 0])
    for r in data:
        g = groups[num(r, executed)]
        g[0] += 1
        g[1] += num(r, samples)
    print(f"\nby execution count (the {args.groups} groups with the most samples):")
    print("  executed each   instructions   samples")
    for ex, (n, s) in sorted(groups.items(), key=lambda kv: -kv[1][1])[: args.groups]:
        print(f"  {ex:13d} {n:14d} {s:9d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
