#!/usr/bin/env bash
# Exports the public HASTE kernels (github.com/xmc-aalto/haste, fetched with the
# session's fetch tool into /work/.mirror) into .haste/, an ignored folder that a device
# call carries for the side-by-side benchmark (bench/haste_side_by_side.py). None of
# that code enters this repository.
set -euo pipefail
MIRROR=${1:-/work/.mirror/xmc-aalto+haste/repo}
cd "$(dirname "$0")/.."
grep -qx '/.haste/' .git/info/exclude 2>/dev/null || echo '/.haste/' >> .git/info/exclude
rm -rf .haste && mkdir -p .haste
git --git-dir="$MIRROR" archive HEAD setup.py shared_ffi | tar -x -C .haste
git --git-dir="$MIRROR" rev-parse HEAD > .haste/COMMIT
# torch >= 2.10 headers need C++20; HASTE's setup.py asks nvcc for C++17.
sed -i 's/"-std=c++17"/"-std=c++20"/' .haste/setup.py
echo "exported $(cat .haste/COMMIT) to .haste/"
