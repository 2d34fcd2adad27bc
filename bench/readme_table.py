"""Print the README's performance table (markdown) from a bench_group_sparse JSON.

    python bench/readme_table.py bench/results/group_sparse_h200.json
"""
import json
import sys

SHAPES = [(512, 128, 32, 670208), (512, 128, 128, 670208), (128, 128, 32, 131072), (512, 256, 32, 670208)]


def main(path: str) -> None:
    d = json.load(open(path))
    print(f"{d['gpu']}, torch {d['torch']}, commit {d['git_commit']}, {d['date'][:10]}; "
          f"measured bf16 GEMM peak {d['gemm_peak_tflops']:.0f} TFLOP/s\n")
    print("| B | K | G | L | pass | ours ms | cuBLAS matched ms | cuBLAS dense ms | ours / matched | ours TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = {(r["B"], r["K"], r["G"], r["L"]): r for r in d["rows"]}
    for key in SHAPES:
        r = rows.get(key)
        if r is None:
            continue
        for p in ("fwd", "dx", "dw"):
            q = r[p]
            print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:,} | {p} | {q['ours_ms']:.3f} | {q['matched_ms']:.3f} | "
                  f"{q['dense_ms']:.3f} | {q['ours_over_matched']:.1f}x | {q['ours_tflops']:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/group_sparse_h200.json")
