"""Plot the group-sparse benchmark grid: time per training step (or one pass) against L.

    python bench/plot_group_sparse.py [--json bench/results/group_sparse_grid_h200.json [MORE.json ...]]
        [--B 512] [--pass step|fwd|dx|dw] [--haste HASTE.json] [--out PNG]

Reads the JSON written by bench/bench_group_sparse.py (several files: their rows together, a
later file's row replacing an earlier one's of the same shape; the title names the first
file's GPU and every commit) and draws one subplot per (K, G)
(rows: K, columns: G) at a fixed batch size B, log-log: ours, the cuBLAS GEMM of equal
FLOPs ([B, K] x [K, L]) and the full dense layer in cuBLAS ([B, H] x [H, L]). With
--pass step (the default) each point is the sum of the fwd, dx and dW times. --haste adds
a file {"rows": [{"B", "K", "G", "L", "step_ms"}]} (or "<pass>_ms" for a single pass)
as a fourth series. Passes that did not run on the sm90 kernels are named in the subplot.
"""

import argparse
import json
import sys

PASSES = ("fwd", "dx", "dw")
PASS_LABEL = {"fwd": "forward", "dx": "dx", "dw": "dW"}


def pass_ms(row: dict, which: str, key: str) -> float:
    """One pass's time in ms, or the sum of the three for which == "step"."""
    if which == "step":
        return sum(row[p][key] for p in PASSES)
    return row[which][key]


def short_count(n: int) -> str:
    """131072 -> '131k', 2812281 -> '2.81M'."""
    if n >= 1_000_000:
        return f"{n / 1e6:.3g}M"
    if n >= 1_000:
        return f"{n / 1e3:.3g}k"
    return str(n)


def load_haste(path: str, B: int, which: str) -> dict:
    """{(K, G): [(L, ms), ...]} from a HASTE result file, rows of batch size B only."""
    with open(path) as f:
        data = json.load(f)
    key = "step_ms" if which == "step" else f"{which}_ms"
    out = {}
    for r in data.get("rows", []):
        if r.get("B") != B or r.get(key) is None:
            continue
        out.setdefault((r["K"], r["G"]), []).append((r["L"], r[key]))
    for pts in out.values():
        pts.sort()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", nargs="+", default=["bench/results/group_sparse_grid_h200.json"],
                    help="benchmark results of bench_group_sparse.py (later files override shapes)")
    ap.add_argument("--B", type=int, default=512, help="batch size to plot")
    ap.add_argument("--pass", dest="which", choices=("fwd", "dx", "dw", "step"), default="step",
                    help="one pass, or step = fwd + dx + dW (default)")
    ap.add_argument("--haste", default=None, help="JSON with HASTE timings (optional)")
    ap.add_argument("--out", default="bench/results/group_sparse_grid_h200.png")
    args = ap.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    files = []
    for path in args.json:
        with open(path) as f:
            files.append(json.load(f))
    data = files[0]
    gpus = sorted({d.get("gpu", "?") for d in files})
    if len(gpus) > 1:
        sys.exit(f"--json: the files come from different GPUs ({', '.join(gpus)}); plot one GPU at a time")
    by_shape = {}
    for d in files:
        for r in d["rows"]:
            by_shape[(r["B"], r["H"], r["K"], r["G"], r["L"])] = r
    rows = [r for r in by_shape.values() if r["B"] == args.B]
    if not rows:
        have = sorted({k[0] for k in by_shape})
        sys.exit(f"no rows with B={args.B} in {', '.join(args.json)} (batch sizes there: {have})")
    commits = ", ".join(dict.fromkeys(str(d.get("git_commit", "?"))[:7] for d in files))

    Ks = sorted({r["K"] for r in rows})
    Gs = sorted({r["G"] for r in rows})
    Hs = sorted({r["H"] for r in rows})
    haste = load_haste(args.haste, args.B, args.which) if args.haste else None

    if args.which == "step":
        ylabel = "ms per training step (fwd + dx + dW)"
    else:
        ylabel = f"ms per {PASS_LABEL[args.which]} pass"

    # Fixed margins in inches: two title lines and the legend above, axis labels at the edges.
    top_in, bottom_in, left_in, right_in = 1.25, 0.75, 0.95, 0.2
    w, h = 4.2 * len(Gs) + left_in + right_in, 3.0 * len(Ks) + top_in + bottom_in
    fig, axes = plt.subplots(len(Ks), len(Gs), figsize=(w, h), sharex=True, sharey=True,
                             squeeze=False)
    fig.subplots_adjust(left=left_in / w, right=1 - right_in / w, bottom=bottom_in / h,
                        top=1 - top_in / h, wspace=0.08, hspace=0.25)
    series = [
        ("ours_ms", "ours", "tab:blue", "o"),
        ("matched_ms", "cuBLAS, equal FLOPs", "tab:orange", "s"),
        ("dense_ms", "dense layer (cuBLAS)", "tab:gray", "^"),
    ]
    all_L = sorted({r["L"] for r in rows})
    haste_points = 0
    for i, K in enumerate(Ks):
        for j, G in enumerate(Gs):
            ax = axes[i][j]
            cell = sorted((r for r in rows if r["K"] == K and r["G"] == G), key=lambda r: r["L"])
            Ls = [r["L"] for r in cell]
            for key, label, color, marker in series:
                ax.plot(Ls, [pass_ms(r, args.which, key) for r in cell],
                        marker=marker, color=color, label=label)
            if haste is not None and (K, G) in haste:
                hL, hms = zip(*haste[(K, G)])
                ax.plot(hL, hms, marker="D", color="tab:red", label="HASTE (public kernels)")
                haste_points += len(hL)
            # Name passes that fell back from the sm90 kernels (e.g. to the generic ones).
            shown = PASSES if args.which == "step" else (args.which,)
            other = sorted({(PASS_LABEL[p], r[p]["path"]) for r in cell for p in shown
                            if r[p].get("path", "sm90") != "sm90"})
            if other:
                ax.text(0.97, 0.04, "\n".join(f"{p}: {path} kernel" for p, path in other),
                        transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                        color="dimgray")
            ax.set_xscale("log")
            ax.set_yscale("log")
            # Ticks at the measured L only: the default minor labels of a short log axis collide.
            ax.set_xticks(all_L, [short_count(L) for L in all_L])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ax.set_title(f"K = {K}, G = {G}", fontsize=10)
            ax.grid(True, which="major", alpha=0.4)
            ax.grid(True, which="minor", alpha=0.15)

    title = (f"{data.get('gpu', '?')}, {data.get('dtype', 'bf16')}, "
             f"H = {', '.join(map(str, Hs))}, B = {args.B}, commit {commits}")
    if haste is None:
        title += "\nHASTE not measured in this run"
    elif haste_points > 0:
        with open(args.haste) as f:
            meta = json.load(f)
        title += (f"\nHASTE: {args.haste.rsplit('/', 1)[-1]} ({meta.get('gpu', '?')}, "
                  f"{str(meta.get('date', '?'))[:10]}, its own run)")
    elif haste_points == 0:
        key = "step_ms" if args.which == "step" else f"{args.which}_ms"
        title += f"\nHASTE: no rows with B = {args.B} and {key} in {args.haste}"
    fig.suptitle(title, fontsize=12, y=1 - 0.12 / h, va="top")
    fig.supxlabel("L (labels)", y=0.12 / h, va="bottom")
    fig.supylabel(ylabel, x=0.12 / w, ha="left")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:  # the HASTE series may be missing from the first subplot
        for handle, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(handle)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.6 / h))
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
