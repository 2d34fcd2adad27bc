"""Summarize the issue-4 grid from bench_group_sparse.py JSON files (one or more, e.g. one per
batch size as run_device.sh's grid writes them): for each pass, on how many shapes ours is
within --target of the cuBLAS GEMM of equal FLOPs, the median and worst ratio; then a
markdown table of the ratios per (B, K, G, L).

    python bench/grid_summary.py bench/results/grid_B*_s26_h100.json [--target 1.15] [--table] [--by-lg]

--by-lg adds, per pass, the count within --target and the ratios' range for each (L, G).
"""

import argparse
import json
import statistics

PASSES = ("fwd", "dx", "dw")


def load_rows(paths):
    """The rows of all files (later files replace earlier rows of the same shape), and the files' headers."""
    rows, heads = {}, []
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        heads.append({k: d.get(k) for k in ("gpu", "git_commit", "date")})
        for r in d["rows"]:
            rows[(r["B"], r["K"], r["G"], r["L"])] = r
    return [rows[k] for k in sorted(rows)], heads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--target", type=float, default=1.15, help="ratio to cuBLAS at equal FLOPs counted as met")
    ap.add_argument("--table", action="store_true", help="also print the per-shape table")
    ap.add_argument("--by-lg", action="store_true", help="also print, per pass, the hits and ratio range per (L, G)")
    a = ap.parse_args()
    rows, heads = load_rows(a.json)
    for h in heads:
        print(f"{h['gpu']}, commit {str(h['git_commit'])[:7]}, {str(h['date'])[:10]}")
    print(f"{len(rows)} shapes; batch sizes {sorted({r['B'] for r in rows})}\n")
    print(f"| pass | within {a.target}x | median | worst (B, K, G, L) | paths |")
    print("|---|---|---|---|---|")
    for p in PASSES:
        rs = [r for r in rows if p in r and "ours_over_matched" in r[p]]
        ratios = [r[p]["ours_over_matched"] for r in rs]
        worst = max(rs, key=lambda r: r[p]["ours_over_matched"])
        paths = sorted({r[p].get("path", "generic") for r in rs})
        met = sum(x <= a.target for x in ratios)
        print(f"| {p} | {met} of {len(rs)} | {statistics.median(ratios):.2f}x | "
              f"{worst[p]['ours_over_matched']:.2f}x ({worst['B']}, {worst['K']}, {worst['G']}, {worst['L']:,}) | "
              f"{', '.join(paths)} |")
    if a.by_lg:
        print("\n| pass | L | G | within | ratios |")
        print("|---|---|---|---|---|")
        for p in PASSES:
            for L, G in sorted({(r["L"], r["G"]) for r in rows}):
                xs = [r[p]["ours_over_matched"] for r in rows
                      if r["L"] == L and r["G"] == G and p in r and "ours_over_matched" in r[p]]
                if xs:
                    print(f"| {p} | {L:,} | {G} | {sum(x <= a.target for x in xs)} of {len(xs)} | "
                          f"{min(xs):.2f}-{max(xs):.2f}x |")
    if a.table:
        print("\n| B | K | G | L | fwd ms (x matched) | dx ms (x matched) | dW ms (x matched) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            cells = [f"{r[p]['ours_ms']:.3f} ({r[p]['ours_over_matched']:.2f}x)" for p in PASSES]
            print(f"| {r['B']} | {r['K']} | {r['G']} | {r['L']:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
