"""Print the README's performance table (markdown) from a bench_group_sparse JSON.

    python bench/readme_table.py bench/results/group_sparse_h200.json
"""
import json
import sys


def main(path: str) -> None:
    d = json.load(open(path))
    print(f"{d['gpu']}, torch {d['torch']}, commit {d['git_commit'][:7]}, {d['date'][:10]}; "
          f"measured bf16 GEMM peak {d['gemm_peak_tflops']:.0f} TFLOP/s\n")
    has_generic = any("generic_ms" in r["fwd"] for r in d["rows"])
    head = "| B | K | G | L | pass | kernels | ours ms | cuBLAS matched ms | cuBLAS dense ms | ours / matched | TFLOP/s |"
    sep = "|---|---|---|---|---|---|---|---|---|---|---|"
    if has_generic:
        head += " generic ms |"
        sep += "---|"
    print(head)
    print(sep)
    for r in sorted(d["rows"], key=lambda r: (r["B"], r["K"], r["G"], r["L"])):
        for p in ("fwd", "dx", "dw"):
            q = r[p]
            line = (f"| {r['B']} | {r['K']} | {r['G']} | {r['L']:,} | {p} | {q.get('path', 'generic')} | "
                    f"{q['ours_ms']:.3f} | {q['matched_ms']:.3f} | {q['dense_ms']:.3f} | "
                    f"{q['ours_over_matched']:.2f}x | {q['ours_tflops']:.1f} |")
            if has_generic:
                line += f" {q['generic_ms']:.3f} |" if "generic_ms" in q else " |"
            print(line)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/group_sparse_h200.json")
