#!/usr/bin/env bash
# One call on the GPU machine: build largeout, run the GPU tests and the benchmarks.
# Logs and JSON go to $OUT. The ignored folders some modes carry (.whl, .qdata, .mdla, .mdlb) are made on a new
# machine by bench/carry_prepare.sh.
# The whole suite no longer fits one call after a build (session 49 on the H100, torch 2.11: 47% of it in
# 380 s, inductor's CPU compiles among it): split it, e.g. TESTS="tests/test_[a-g]*.py" in the building call,
# then on the warm machine "python3 -m pytest tests/test_[h-z]*.py" with the build kept (SKIP_BUILD=1).
#
#   bash bench/run_device.sh [full|quick|tests|sm90]
#     sm90   build, the Hopper-kernel tests, memcheck on them, the headline benchmark
#     tests  build, the whole test suite, memcheck (no benchmarks)
#     quick  tests + the headline benchmark (ours, generic kernels and cuBLAS)
#     full   tests + the grid of issue 4 (B x K x G x L) with generic and cuBLAS
#     haste  build, then the training step next to the public HASTE kernels (carry .haste,
#            made by bench/haste_prepare.sh): haste$HASTE_TAG.json (default _h200), then HASTE over the
#            B=512 grid until HASTE_BUDGET s (haste_grid$HASTE_TAG.json); HASTE_OURS=1: our headline first
#     lowp   build, the low-precision tests, the fused optimizer and FP8 layer benchmarks
#            (BENCH=0: tests only; OPTIM_BENCH=0 / FP8_BENCH=0: without that benchmark;
#            LOWP_TESTS: the test paths; PROFILE_FP8=1: profile)
#     fp8    build, the FP8 layer/GEMM tests and the group-sparse fp8 tests (TESTS_ALL=1: the whole suite; SUBSET_TESTS=0: none;
#            MEMCHECK_FP8=1: memcheck on the FP8 GEMM, quantization and group-sparse fp8 kernel tests),
#            bench/bench_fp8.py (FP8_BENCH=0: without; FP8_BENCH_ARGS: its arguments), bench/bench_group_sparse_fp8.py (GS_FP8_BENCH=0:
#            without); PROFILE_FP8=1: torch.profiler of the dense fp8 layer's training step; OPTIM_BENCH=1:
#            the optimizer tests and bench/bench_optim.py; NCU_OPTIM="case;case": ncu of those optimizer cases;
#            GATHER_BW=1: largeout_bench_gather_bw first; FP8_CLOCKS=1: bench/fp8_clocks.py (SM clock and power
#            under sustained bf16 and fp8 GEMMs; FP8_CLOCKS_CONFIGS: its --configs) before bench_fp8; FP8_FWD_PROFILE=1: profile_fp8.py --forward after it
#     linpad build, tests/test_linear_pad.py, test_layer_modes.py, test_optim.py and test_ddp.py (LINPAD_TESTS: other pytest arguments;
#            SUBSET_TESTS=0: none), tests/test_train.py (LINPAD_TRAIN_TESTS=1), bench/bench_linear_pad.py (LINPAD_ARGS:
#            its arguments), LINPAD_FP8=1: then bench/bench_fp8.py (FP8_BENCH_ARGS), until LINPAD_BUDGET s after the start
#     fp8dx  build, the fp8/pad/dx tests, bench_dx3 --quick, bench_fp8 (one round), bench_group_sparse_fp8
#     oofft  build, then bench/xmc_rank_oof.py --encoder ft on the GPU (issue 3: the rank-1 rule chosen on
#            cross-fitted predictions of the fine-tuned MiniLM; carry .qdata and .mdlb after a call that carried .mdla
#            and copied it to /tmp/mdl, or in one call carry .oofc alone (CUTLASS headers, model and jsonl; no .whl);
#            fold models kept in /tmp/oofft for a later warm call; OOF_BUDGET s, OOF_TAG; the fold logs and the
#            dump's SHA-256 in oofft_logs$OOF_TAG.tgz, the dump in parts in oofft_dump$OOF_TAG/ (8 files: add none);
#            OOF_PARALLEL: folds trained at once, default 5)
#     evidence build, bench/lowp_memory.py and bench/lowp_evidence.py (issue 5)
#     quality build, the fused optimizer benchmark (unless BENCH=0), then bench/xmc_quality.py for our trainer on
#            the GPU (data and baselines JSON carried in .qdata/; QUALITY_METHODS: its --methods; with .mdlb/
#            carried, the cut MiniLM of bench/minilm_prune.py from /tmp/mdl's first half and .mdlb's second)
#     dx3    build, the Hopper dx tests (v1, v2, v3; DX3_K: another -k; TESTS_ALL=1: the whole suite), memcheck on two v3 tests
#            (MEMCHECK_DX3=0: without), bench/bench_dx3.py (DX3_QUICK=1: three shapes), PAD_DY_BENCH=1: the step
#            at odd L (bench/bench_pad_dy.py), BENCH_HEADLINE=1:
#            bench_group_sparse.py at B=512, K=128
#     dwprof build, Nsight Compute of the Hopper dW at the headline (PROFILE_G: the G's, default 32;
#            PROFILE_PASS=fwd or dx3: that pass instead), the B=512 K=128 benchmark (DWPROF_BENCH=0: without)
#     optdw  build, the optimizer / rounding / Hopper dW tests, bench_optim, the B=512 K=128 benchmark, bench_fp8 as
#            time allows (OPTDW_BUDGET s after the start, default 570); OPTDW_OPTIM=0: the dW and group-sparse fp8
#            tests, the B=512 K=128 benchmark, bench_group_sparse_fp8
#     dwcp   build, dW v2's probes (bench/probe_fwd.py --passes dw), the forward's (--passes fwd, 3 computing
#            warpgroups, 8 stages), dW's variants at the headline twice in turn
#            (tma: LARGEOUT_SM90_DW_DBIAS=loader; cp: that and LARGEOUT_SM90_DW_DY=cp; dbc: the default since
#            session 24, dbias by the computing warpgroups; dbccp: dbc with LARGEOUT_SM90_DW_DY=cp),
#            the Hopper dW tests, as DWCP_BUDGET s after the start allow (default 480)
#     padfrozen build, the step at odd L (670,091 and 2,812,281; G 32-128) with a frozen input and with a frozen
#            weight, dY padded for the pass that runs (LARGEOUT_PAD_DY=1) and not (0)
#     tmaprobe (no library build) bench/cpp/probe_tma_coords.cu: a TMA load and store of a box at inner coordinates 0, 3,
#            997 (partly out of bounds) and -5, no swizzle and 128-byte swizzle, each case in its own process
#     knob   build, the tests KNOB_TESTS names (pytest arguments; none by default), then bench/bench_knob.py: the
#            environment variable KNOB_ENV set to each of KNOB_VALUES (comma list) in turn, with KNOB_ARGS (its shape
#            arguments, e.g. "--pass fwd --B 512 --K 128 --G 32,64 --L 670208") -> knob.json
#     splitb build, the dW tests (SPLITB_ALL=1: the whole suite), the K = 64 split-batch test with kDbC
#            SPLITB_REPEATS times (default 5), dW at B 128/320/512/1024, K = 64 with dbias by the computing
#            warpgroups and by the loader twice in turn, the step with a frozen input at odd L with and
#            without dY's padding (bench_pad_dy.py --frozen x), synccheck and memcheck on the split-batch
#            test (SPLITB_BUDGET s, default 560)
#     dbc    build, the dW tests, memcheck on the K = 64 dW tests, dW at B 128/512 and K 64/256 with dbias by the
#            computing warpgroups (the default) and by the loader (LARGEOUT_SM90_DW_DBIAS=loader) twice in turn, then
#            the issue-4 grid per batch size (SWEEP_B) as DBC_BUDGET s after the start allow (default 560)
#     dwstages build, the dW tests, the B=512 benchmark for each LARGEOUT_SM90_DW_STAGES in DW_STAGES_LIST (8 10 11)
#     dwload build, the Hopper kernel tests (tests/test_group_sparse_sm90.py and _fp8.py: dW with 2 and 4 loader
#            warpgroups, session 22's forward / dx v2 / dW instruction cuts), then the B=512
#            K=128 benchmark (L=670,208, G 32 64 128) per LARGEOUT_SM90_DW_LOADERS in DWLOAD_LIST (default
#            "1 2 4 1 2 4"; 4 applies at G = 32 only, 2 elsewhere), memcheck on the 2- and 4-loader bf16 tests, then
#            bench/bench_fp8_configs.py (its back-to-back times: the GEMMs run at the power cap), each as
#            DWLOAD_BUDGET s after the start allow (default 570)
#     suite  build, the whole suite, the B=512 K=128 headline, bench_optim (OPTIM_CASES; again per
#            LARGEOUT_OPTIM_L2_PREFETCH value in PREFETCH_LIST; SUITE_OPTIM=0: none), Nsight Compute profiles
#            (SUITE_NCU: "pass:G:dW loaders ...", default the forward's "fwd:32:1"), as SUITE_BUDGET s after
#            the start allow (default 585); SUITE_MEMCHECK_K: memcheck of the Hopper tests matching it;
#            GATHER_BW=1: largeout_bench_gather_bw first; FP8_FWD_PROFILE=1:
#            bench/profile_fp8.py --forward before the forward's profile
#     gatherbw build, largeout_bench_gather_bw
#     dwopt  build, the optimizer and dW tests, dwstages' benchmarks, bench_optim (OPTIM_CASES: a subset) until
#            DWOPT_BUDGET s after the start (default 580)
#     check  build, the whole test suite, the optimizer benchmark, dW probes, the grid of issue 4
#            per batch size until CHECK_BUDGET s after the start (default 560; tarred into check.tgz)
#     build  build and install only
#     optim  build, the optimizer and rounding tests, bench_optim and largeout_bench_optim (OPTIM_ROUNDS times, default 1),
#            the SASS of three optimizer kernels
#     optab  build, the optimizer tests, bench_optim, then the same benchmark with ab_base/'s sources built
#            incrementally, then the new ones again (OPTAB_BUDGET s, default 560; OPTAB_TESTS=0: no tests)
#     optvar (no library build) each ab/<name>/csrc variant of the kernel sources built with bench/cpp/bench_optim.cu,
#            run in turn (OPTVAR_ROUNDS, OPTVAR_CASES), Nsight Compute of OPTVAR_NCU's variants (OPTVAR_BUDGET s)
#     host   build, bench/profile_optim_host.py and bench/bench_optim_host.py on CUDA (HOST_PROFILE=0: neither;
#            HOST_OLD_OPTIM: a base version of
#            largeout/optim/__init__.py, timed from a copy of the installed package, then the new one again), bench_optim (HOST_OPTIM_BENCH=0:
#            without), then HOST_TESTS (default: the optimizer tests first, then the whole suite) as HOST_BUDGET s allow
#     rowclass build, dW and dx v2 through row classes at odd L (session 38): their tests, LARGEOUT_SM90_D{W,X}_RC=0,1 by
#            bench_knob.py (RC_KNOB_B / _K / _L), the step padded and not (frozen x, frozen weight, neither), memcheck,
#            then the other dW / dx tests and the optimizer tests as RC_BUDGET s after the start allow (default 585);
#            RC_TESTS_K / RC_TESTS_TIMEOUT: the first tests' -k expression and time limit
#     rcdefault build, the row classes as the default (session 39): their tests and the padding rule's (RCD_TESTS_K,
#            RCD_TESTS_TIMEOUT), the step padded / not with x, the weight or neither frozen (RCD_FROZEN), then the
#            grid at odd L per batch size (SWEEP_B) until RCD_BUDGET s (default 585)
#     rcspread build, the row-class tests (RCS_TESTS_K), the B=512 K=128 headline, dW's ring size at L = 131,072
#            (RCS_STAGES=0 skips it), the step at odd L unpadded, then the grid at odd L per batch size (SWEEP_B)
#            until RCS_BUDGET s (default 585; session 41)
#     k64stages build, dW at K = 64 with 8 and 16 stages (bench_knob.py) over B 128-1024, G 32-128 and the three L,
#            the second-derivative and compile tests, then the dW tests (K64S_TESTS_K) until K64S_BUDGET s
#            (default 480; session 42)
#     optknob build (SKIP_BUILD=1: the installed one), bench_optim (OPTIM_CASES) with OPTKNOB_ENV set to each of
#            OPTKNOB_VALUES in turn (OPTKNOB_ROUNDS rounds, default 2), then the whole suite with its 20 slowest
#            tests listed, as OPTKNOB_BUDGET s after the start allow (default 560)
#     grid   build, the issue-4 grid one batch size after another until GRID_BUDGET s (default 500)
#     order  build, the L = 131,072 grid per index order (ORDER_LIST, ORDER_ROUNDS rounds), the index-order tests
#            (TESTS_ALL=1: the whole suite), then the whole grid with ORDER_GRID's order per batch size until
#            ORDER_BUDGET s (default 585)
#     settle build, the forward's bias tests, a shape timed alone and after a heavy one (--warmup-ms 0 / 200),
#            the bias-pairs knob, Nsight Compute of the forward per PROFILE_G, then the grid (session 31)
#     fwdgrid build, the forward's Hopper tests (FWD_TESTS_K), Nsight Compute of the forward per PROFILE_G
#            (PROFILE_ARGS, NCU_TAG), then the grid per batch size (SWEEP_B) until FWDGRID_BUDGET s (default 585)
#     issue4 build, the Hopper tests, the B=512 K=128 benchmark, the forward with 2 and 3 computing warpgroups
#     dw2    build, the Hopper tests, dW probes, the B=512 K=128 benchmark, memcheck on dW v2
#     verify build, the whole suite, the B=512 K=128 benchmark, the fused optimizer benchmark and
#            its ncu profile, memcheck on Hopper tests (tarred into verify.tgz)
#     probe  build, then bench/probe_fwd.py (the Hopper forward with parts switched off)
#     tune   build, then bench/xmc_tune.py on the datasets carried
#            in .qdata/ (NAME/{train,test}.txt.gz; grids bench/tune/NAME_gpu.json)
#
# Expects the nvidia-cutlass wheel under .whl/ (made here by `pip download --no-deps -d .whl nvidia-cutlass==4.2.0.0`,
# carried to the device machine by the call: carry [".whl"]).
# ARCHS (default 90a) picks the CUDA targets built there; TESTS the test paths.
set -uo pipefail
OUT=${OUT:-/tmp/largeout_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
MODE=${1:-full}
# The device machine's copy of the tree may keep the .git of the session's first call (session 43), so
# pass the commit run: LARGEOUT_GIT_COMMIT=$(git rev-parse --short HEAD) in the call's command.
[ -n "${LARGEOUT_GIT_COMMIT:-}" ] && export LARGEOUT_GIT_COMMIT \
  || echo "(LARGEOUT_GIT_COMMIT unset: results name the device copy's .git HEAD, which may be stale)"
T0=$(date +%s)

# At most 8 files come back from $OUT: on exit, if there are more, the small ones (JSON, logs, text under
# 2 MB) go into one small.tgz and the rest stay as they are.
bundle_out() {
  local n; n=$(find "$OUT" -maxdepth 1 -type f | wc -l)
  [ "$n" -le 8 ] && return
  (cd "$OUT" && find . -maxdepth 1 -type f -size -2M ! -name '*.tgz' -printf '%f\n' > /tmp/small.list \
    && tar czf small.tgz -T /tmp/small.list && xargs rm -f < /tmp/small.list)
  echo "== $n files in \$OUT: the small ones are in small.tgz"
}
trap bundle_out EXIT
TESTS=${TESTS:-tests}
ARCHS=${ARCHS:-90a}

{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } \
  > "$OUT/device.txt" 2>&1

# (optvar needs no CUTLASS and no library build: it runs before both.)
if [ "$MODE" = optvar ]; then  # session 35: variants of the optimizer kernel sources, no library build: each
  # folder ab/<name>/csrc (a copy of csrc/kernels with a change, carried as untracked files, deleted after) built
  # with bench/cpp/bench_optim.cu into its own binary (in parallel), the binaries run in turn for OPTVAR_ROUNDS
  # rounds (default 3; every other round in reverse order) on OPTVAR_CASES (default sgd-e4m3,sgd-momentum-e4m3),
  # then Nsight Compute (the full set, with the per-instruction stall samples) of each variant in OPTVAR_NCU
  # (default: the first) on sgd-e4m3, as OPTVAR_BUDGET s after the start allow (default 540)
  deadline=$(( T0 + ${OPTVAR_BUDGET:-540} ))
  names=(); for d in ab/*/; do [ -d "$d" ] && names+=("$(basename "$d")"); done
  [ ${#names[@]} -gt 0 ] || { echo "optvar: no variant folders ab/<name>/csrc in the tree"; exit 1; }
  echo "== build: ${names[*]}"
  pids=()
  for v in "${names[@]}"; do
    rm -f "/tmp/bo_$v"  # (a warm machine's binary of an earlier call must not stand in for a failed build)
    nvcc -std=c++20 -O3 -DNDEBUG -lineinfo --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
      -DLARGEOUT_WITH_CUDA=1 -I "ab/$v/csrc" "ab/$v/csrc/kernels/cuda/optim_step.cu" bench/cpp/bench_optim.cu \
      -Xptxas -v -o "/tmp/bo_$v" > "$OUT/build_$v.log" 2>&1 &
    pids+=($!)
  done
  built=()
  for i in "${!names[@]}"; do
    if wait "${pids[$i]}"; then built+=("${names[$i]}"); else echo "build of ${names[$i]} failed:"; tail -20 "$OUT/build_${names[$i]}.log"; fi
  done
  echo "built ${built[*]:-nothing} in $(( $(date +%s) - T0 )) s"
  order=("${built[@]}")
  for round in $(seq "${OPTVAR_ROUNDS:-3}"); do
    for v in "${order[@]}"; do
      [ $(( deadline - $(date +%s) )) -gt 60 ] || break 2
      echo "== $v (round $round)"
      timeout 90 "/tmp/bo_$v" --cases "${OPTVAR_CASES:-sgd-e4m3,sgd-momentum-e4m3}" --out "$OUT/optvar_${v}_r$round.json" \
        > "/tmp/bo_$v.out" 2>&1
      rc=$?
      tail -4 "/tmp/bo_$v.out"
      [ $rc = 0 ] || echo "!! $v exited with status $rc (3: checked elements differ from the host rule; 1: a CUDA error)"
    done
    rev=(); for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[$i]}"); done; order=("${rev[@]}")
  done
  for v in ${OPTVAR_NCU:-${built[0]:-}}; do
    left=$(( deadline - $(date +%s) ))
    [ $left -gt 90 ] || { echo "(no time left for ncu of $v)"; break; }
    echo "== ncu: $v, sgd-e4m3"
    timeout $(( left - 30 )) ncu --clock-control none -k regex:optim_kernel --launch-skip 4 --launch-count 1 --set full \
      -o "$OUT/ncu_$v" "/tmp/bo_$v" --cases sgd-e4m3 --iters 3 > "$OUT/ncu_${v}_run.log" 2>&1; echo "rc=$?"
    ncu -i "$OUT/ncu_$v.ncu-rep" --page details > "$OUT/ncu_${v}_details.txt" 2>&1
    ncu -i "$OUT/ncu_$v.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_${v}_source.csv" 2>&1
    grep -E "SM Frequency|Duration|DRAM Throughput|Issue Slots Busy|Issued Ipc|No Eligible|Warp Cycles Per Issued|Executed Instructions  " \
      "$OUT/ncu_${v}_details.txt" | head -20
  done
  exit 0
fi

# CUTLASS headers from the carried, pinned wheel.
# Or, where no .whl is carried, the wheel's include/ folder from .oofc/ (bench/carry_prepare.sh: the one-call bundle).
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/cutlass .whl/nvidia_cutlass-*.whl || exit 1
elif [ -f .oofc/cutlass_include.tar.xz ]; then
  mkdir -p /tmp/cutlass/cutlass_library/source
  python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" .oofc/cutlass_include.tar.xz \
    /tmp/cutlass/cutlass_library/source || exit 1
else
  echo "run_device: no CUTLASS headers: carry .whl (or .oofc), made by bench/carry_prepare.sh" >&2; exit 1
fi
export CUTLASS_DIR=/tmp/cutlass/cutlass_library/source

if [ "$MODE" = tmaprobe ]; then  # session 26: TMA boxes whose innermost start is off 16 bytes, each case in its
  # own process (needs the CUTLASS headers only, so before the library build)
  echo "== TMA at inner coordinates off 16 bytes (bench/cpp/probe_tma_coords.cu)"
  nvcc -std=c++20 -O2 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -I csrc -I "$CUTLASS_DIR/include" \
    bench/cpp/probe_tma_coords.cu -o /tmp/probe_tma > "$OUT/probe_tma_build.log" 2>&1 || tail -20 "$OUT/probe_tma_build.log"
  for c in "load 0 0" "load 0 3" "load 128 0" "load 128 3" "load 128 997" "load 128 -5" \
           "store 0 0" "store 0 3" "store 128 0" "store 128 3" "store 128 997"; do
    echo "$c: $(timeout 20 /tmp/probe_tma $c 2>&1 | tail -1)"
  done | tee "$OUT/probe_tma.txt"
  exit 0
fi


build_install() {  # $1: the log's name under $OUT; builds the tree as it is (incrementally in build/) and installs it
  local start; start=$(date +%s)
  LARGEOUT_CUDA=on LARGEOUT_CUDA_ARCHS="$ARCHS" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    python3 -m pip install --no-build-isolation --no-deps -v . > "$OUT/$1" 2>&1 \
    || { tail -50 "$OUT/$1"; exit 1; }
  echo "built in $(( $(date +%s) - start )) s"
}

if [ "${SKIP_BUILD:-0}" = 1 ] && python3 -c "import largeout" 2>/dev/null; then
  echo "== build skipped (SKIP_BUILD=1; the installed largeout of an earlier call on this machine)"
else
  echo "== build ($ARCHS)"
  build_install build.log
fi
python3 -c "import largeout, json; print(json.dumps(largeout.build_info()))" || exit 1
{ g++ --version | head -1; nvcc --version | tail -1; cmake --version | head -1; } >> "$OUT/device.txt" 2>&1

[ "$MODE" = build ] && exit 0

run_tests() {  # $1: log name, rest: pytest args
  local log=$1; shift
  timeout "${RUN_TESTS_TIMEOUT:-420}" python3 -X faulthandler -m pytest "$@" -q -ra -p no:cacheprovider \
    -o faulthandler_timeout=60 2>&1 | tee "$OUT/$log" | tail -25
  echo "pytest rc=${PIPESTATUS[0]}"
}

tests_subset() {  # $1: log name, rest: pytest args of a subset; TESTS_ALL=1 runs the whole suite instead, SUBSET_TESTS=0 none
  if [ "${SUBSET_TESTS:-1}" = 0 ]; then
    echo "== tests skipped (SUBSET_TESTS=0)"
  elif [ "${TESTS_ALL:-0}" = 1 ]; then
    echo "== tests: the whole suite"
    run_tests gpu_tests.log $TESTS
  else
    echo "== tests: $*"
    run_tests "$@"
  fi
}

memcheck_tests() {  # $1: log name, $2: test file, $3: -k expression
  echo "== compute-sanitizer memcheck: $2 -k \"$3\""
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m pytest -q -p no:cacheprovider "$2" \
    -k "$3" > "$OUT/$1" 2>&1
  echo "memcheck rc=$? ($(tail -1 "$OUT/$1"))"
}

ncu_optim() {  # Nsight Compute profile of the optimizer kernel for each bench_optim case named
  local c
  for c in "$@"; do
    timeout 100 ncu --clock-control none -k regex:optim_kernel --launch-skip 2 --launch-count 1 \
      --section SpeedOfLight --section WarpStateStats --section InstructionStats --section Occupancy \
      --section LaunchStats --section MemoryWorkloadAnalysis --section SchedulerStats \
      python3 bench/bench_optim.py --cases "$c" --iters 1 --elements 200000000 --out /tmp/ncu_optim.json \
      > "$OUT/ncu_optim_$(echo "$c" | tr -c 'a-z0-9' _).txt" 2>&1
    echo "ncu $c rc=$?"
  done
  grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Executed Instructions  " "$OUT"/ncu_optim_*.txt | head -60
}

run_grid() {  # $1: deadline (epoch s), rest: batch sizes; the issue-4 grid, one file per batch size (a cut-off run keeps
  # the others): $OUT/${GRID_PREFIX:-grid}_B<B>.json, with GRID_ARGS (more bench_group_sparse.py arguments)
  local deadline=$1 B left; shift
  for B in "$@"; do
    left=$(( deadline - $(date +%s) ))
    [ $left -lt 30 ] && { echo "(grid: no time left for B=$B)"; break; }
    echo "== grid ${GRID_ARGS:-}: B=$B (${left} s left)"
    timeout $left python3 bench/bench_group_sparse.py --B $B --K 64,128,256 --G 32,64,128 \
      --L 131072,670091,2812281 ${GRID_ARGS:-} --out "$OUT/${GRID_PREFIX:-grid}_B$B.json" 2>&1 | tail -3
  done
}

dbias_rounds() {  # $1: deadline (epoch s), $2: file prefix, rest: bench_group_sparse.py's shape arguments; dW with
  # dbias by the computing warpgroups and by the loader (LARGEOUT_SM90_DW_DBIAS), twice in turn, as the deadline allows
  local deadline=$1 tag=$2 n v; shift 2
  for n in 1 2; do
    for v in computing loader; do
      [ $(( deadline - $(date +%s) )) -gt 60 ] || return 0
      echo "== dW with dbias by the $v, round $n"
      LARGEOUT_SM90_DW_DBIAS=$v timeout 40 python3 bench/bench_group_sparse.py "$@" --out "$OUT/${tag}_${n}_$v.json" \
        2>&1 | grep -E " dw " | tail -12
    done
  done
}

frozen_steps() {  # $1: deadline (epoch s), $2: x or weight (the frozen tensor), $3: G list, $4: L list, rest: the
  # LARGEOUT_PAD_DY values in turn; bench_pad_dy.py's step at odd L with that tensor frozen, dY padded for the pass
  # that runs (1) or not (0), as the deadline allows -> pad_frozen_{x,weight}_{n}_{value}.json
  local deadline=$1 fr=$2 gs=$3 ls=$4 n=0 v; shift 4
  for v in "$@"; do
    [ $(( deadline - $(date +%s) )) -gt 100 ] || return 0
    n=$(( n + 1 ))
    echo "== step with $fr frozen, LARGEOUT_PAD_DY=$v"
    LARGEOUT_PAD_DY=$v timeout 60 python3 bench/bench_pad_dy.py --frozen "$fr" --G "$gs" --L "$ls" \
      --out "$OUT/pad_frozen_${fr}_${n}_$v.json" 2>&1 | grep -o "'G': [0-9]*.*'step_ms': [0-9.]*"
  done
}

bench_headline() {  # $1: timeout (s), $2: the L list; bench_group_sparse.py at B=512, K=128, G 32-128 -> group_sparse.json
  echo "== benchmark: B=512, K=128 (library defaults)"
  timeout "$1" python3 bench/bench_group_sparse.py --B 512 --K 128 --G 32,64,128 --L "$2" \
    --out "$OUT/group_sparse.json" 2>&1 | tail -28
}

if [ "$MODE" = haste ]; then
  # HASTE_OURS=1: first our kernels alone at the headline (bench_headline, L 670,091 and 670,208)
  [ "${HASTE_OURS:-0}" = 1 ] && bench_headline 90 670091,670208
  echo "== HASTE side by side"
  TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 timeout 400 python3 -m pip install --no-build-isolation --no-deps ./.haste \
    > "$OUT/haste_build.log" 2>&1 || { tail -30 "$OUT/haste_build.log"; exit 1; }
  if [ "${HASTE_HEADLINE:-1}" = 1 ]; then
    timeout 120 python3 bench/haste_side_by_side.py --out "$OUT/haste${HASTE_TAG:-_h200}.json" 2>&1 | tail -3
  fi
  left=$(( T0 + ${HASTE_BUDGET:-580} - $(date +%s) ))
  echo "== HASTE over the grid at B=512 (the PNG's fourth series: bench/plot_group_sparse.py --haste; ${left} s left)"
  timeout $left python3 bench/haste_side_by_side.py --K 64,128,256 --G 32,64,128 --L 131072,670091,2812281 --iters 20 \
    --out "$OUT/haste_grid${HASTE_TAG:-_h200}.json" 2>&1 | tail -30
  exit 0
fi

if [ "$MODE" = issue4 ]; then  # Hopper tests, the B=512 K=128 benchmark, the forward with 2 and 3 computing warpgroups
  echo "== tests: Hopper kernels"
  run_tests gpu_tests_sm90.log tests/test_group_sparse_sm90.py
  bench_headline 120 131072,670091,670208
  for cons in 2 3; do
    echo "== forward with LARGEOUT_SM90_FWD_CONS=$cons"
    LARGEOUT_SM90_FWD_CONS=$cons timeout 120 python3 bench/bench_group_sparse.py --B 512 --K 64,128 --G 16,32,64 \
      --L 670091,670208 --out "$OUT/group_sparse_cons$cons.json" 2>&1 | grep " fwd " | tail -12
  done
  exit 0
fi

if [ "$MODE" = dx3 ]; then  # dx v3 (expanded weights): its tests, memcheck on two of them, bench/bench_dx3.py
  tests_subset gpu_tests_dx3.log tests/test_group_sparse_sm90.py -k "${DX3_K:-dx_versions}"
  [ "${MEMCHECK_DX3:-1}" = 1 ] && memcheck_tests memcheck_dx3.log tests/test_group_sparse_sm90.py \
    "dx_versions and v3 and (B5_H300 or B129_H520)"
  echo "== benchmark: dx v2 vs v3"
  timeout ${DX3_BENCH_TIMEOUT:-240} python3 bench/bench_dx3.py ${DX3_QUICK:+--quick} --out "$OUT/dx3.json" 2>&1 | tee "$OUT/bench_dx3.log" | tail -14
  if [ "${NCU_DX3:-0}" = 1 ]; then  # Nsight Compute of dx v3 at the headline shape
    LARGEOUT_SM90_DX=v3 timeout 120 ncu --clock-control none -k regex:gsl_dx3_sm90 \
      --launch-skip 3 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis_Tables \
      --section WarpStateStats --section SchedulerStats --section InstructionStats --section LaunchStats \
      python3 -c "import torch, largeout
from largeout.nn import random_group_indices
B, H, L, K, G = 512, 768, 670208, 128, 32
w = torch.randn(L, K, device='cuda', dtype=torch.bfloat16)
dy = torch.randn(B, L, device='cuda', dtype=torch.bfloat16)
idx = random_group_indices(-(-L // G), H, K).cuda()
for _ in range(5): torch.ops.largeout.group_sparse_linear_backward_input(dy, w, idx, G, H)
torch.cuda.synchronize()" > "$OUT/ncu_dx3.txt" 2>&1
    echo "ncu dx3 rc=$?"
    grep -E "Duration|Shared|Issue Slots|Warp Cycles Per Issued|Bank" "$OUT"/ncu_dx3.txt | head -40
  fi
  if [ "${PAD_DY_BENCH:-0}" = 1 ]; then  # the autograd step at odd L (the row-padded dY)
    echo "== benchmark: the step at odd L"
    timeout 120 python3 bench/bench_pad_dy.py --G 32 --L 670091,2812281 --out "$OUT/pad_dy.json" 2>&1 | grep -v Warn | tail -3
  fi
  if [ "${BENCH_HEADLINE:-0}" = 1 ]; then
    bench_headline 150 131072,670091,670208
  fi
  exit 0
fi

if [ "$MODE" = check ]; then  # whole test suite, optimizer benchmark, dW probes, the issue-4 grid (as time allows)
  deadline=$(( T0 + ${CHECK_BUDGET:-560} ))  # seconds after the script started
  echo "== tests: whole suite"
  run_tests gpu_tests.log $TESTS
  echo "== benchmark: fused optimizer step"
  timeout 150 python3 bench/bench_optim.py --out "$OUT/optim.json" 2>&1 | tee "$OUT/bench_optim.log" | tail -12
  echo "== probe: Hopper dW"
  timeout 60 python3 bench/probe_fwd.py --passes dw --out "$OUT/probe_dw.json" 2>&1 | tail -5
  run_grid $deadline ${SWEEP_B:-512 1024 128 256}
  (cd "$OUT" && tar czf check.tgz --remove-files *.json *.log 2>/dev/null; ls)
  exit 0
fi

if [ "$MODE" = optab ]; then  # sessions 33-34: the optimizer kernels against a base version of their sources, same
  # machine, same call: the optimizer / rounding / weight-scale tests, bench_optim (new), then the base sources
  # (ab_base/<path>: each file at its repository path under ab_base/, made here before the call by
  # `git show REV:<path>`, carried as untracked files, deleted after) built incrementally and bench_optim (base),
  # then the new sources rebuilt and bench_optim again, as OPTAB_BUDGET s after the start allow (default 560)
  budget=${OPTAB_BUDGET:-560}
  left() { echo $(( budget - ($(date +%s) - T0) )); }
  rebuild() { echo "== rebuild ($1)"; build_install "build_$1.log"; }
  [ "${OPTAB_TESTS:-1}" = 1 ] && run_tests gpu_tests_optim.log tests/test_optim.py tests/test_stochastic_round.py tests/test_weight_scale.py
  echo "== bench_optim (new)"
  timeout 150 python3 bench/bench_optim.py --iters 15 --cases "${OPTIM_CASES:-}" --out "$OUT/optim_new.json" 2>&1 | tail -10
  if [ "$(left)" -gt 200 ]; then
    rm -rf /tmp/ab_new && mkdir -p /tmp/ab_new
    (cd ab_base && find . -type f) | xargs -r cp --parents -t /tmp/ab_new  # the tree's versions, put back below
    cp -r ab_base/. .
    rebuild base
    echo "== bench_optim (base)"
    timeout 150 python3 bench/bench_optim.py --iters 15 --cases "${OPTIM_CASES:-}" --out "$OUT/optim_base.json" 2>&1 | tail -10
    cp -r /tmp/ab_new/. .
    if [ "$(left)" -gt 150 ]; then
      rebuild new
      echo "== bench_optim (new, again)"
      timeout 150 python3 bench/bench_optim.py --iters 15 --cases "${OPTIM_CASES:-}" --out "$OUT/optim_new2.json" 2>&1 | tail -10
    else
      echo "== no time left to rebuild the new sources: the installed build is the base one"
    fi
  fi
  exit 0
fi

if [ "$MODE" = host ]; then  # session 37: where the optimizer step's host time goes on CUDA, the host-time and
  # fused-step benchmarks, then the optimizer tests and the whole suite as HOST_BUDGET s after the start allow (585)
  deadline=$(( T0 + ${HOST_BUDGET:-585} ))
  if [ "${HOST_PROFILE:-1}" = 1 ]; then
  echo "== profile: the optimizer step's host time by part"
  timeout 90 python3 bench/profile_optim_host.py --device cuda --note "${HOST_NOTE:-}" --out "$OUT/host_parts.json" 2>&1 | tail -4
  echo "== benchmark: the optimizer step's host time"
  timeout 90 python3 bench/bench_optim_host.py --device cuda --note "${HOST_NOTE:-}" --out "$OUT/host.json" 2>&1 | tail -4
  if [ -n "${HOST_OLD_OPTIM:-}" ]; then  # a base version of largeout/optim/__init__.py (an untracked file in the
    # tree), run from a copy of the installed package, then the installed one again
    pkg=$(python3 -c 'import largeout, os; print(os.path.dirname(largeout.__file__))')
    rm -rf /tmp/oldpkg && mkdir -p /tmp/oldpkg && cp -r "$pkg" /tmp/oldpkg/ && cp "$HOST_OLD_OPTIM" /tmp/oldpkg/largeout/optim/__init__.py
    echo "== benchmark: host time with the base optimizer ($HOST_OLD_OPTIM)"
    (cd /tmp && PYTHONPATH=/tmp/oldpkg timeout 90 python3 "$OLDPWD/bench/bench_optim_host.py" --device cuda \
      --note "base: $HOST_OLD_OPTIM" --out "$OUT/host_base.json" 2>&1 | tail -4)
    echo "== benchmark: host time, the new optimizer again"
    timeout 90 python3 bench/bench_optim_host.py --device cuda --note "${HOST_NOTE:-} (again)" --out "$OUT/host2.json" 2>&1 | tail -4
  fi
  fi
  if [ "${HOST_OPTIM_BENCH:-1}" = 1 ]; then
    echo "== benchmark: fused optimizer step"
    timeout 150 python3 bench/bench_optim.py --iters 15 --out "$OUT/optim.json" 2>&1 | tail -10
  fi
  left=$(( deadline - $(date +%s) ))
  echo "== tests: ${HOST_TESTS:-the optimizer tests, then the rest of the suite} (${left} s left)"
  [ $left -gt 60 ] && RUN_TESTS_TIMEOUT=$(( left - 5 )) run_tests gpu_tests.log ${HOST_TESTS:-tests/test_optim.py \
    tests/test_stochastic_round.py tests/test_weight_scale.py tests} --durations=15
  exit 0
fi

if [ "$MODE" = rowclass ]; then  # session 38: dW and dx v2 through row classes at odd L; their tests, their knobs
  # against v1, the step padded / not (frozen x, frozen weight, neither), memcheck, then the other dW / dx tests and
  # the optimizer tests, as RC_BUDGET s allow (585)
  deadline=$(( T0 + ${RC_BUDGET:-585} ))
  echo "== tests: dW and dx through row classes"
  RUN_TESTS_TIMEOUT=${RC_TESTS_TIMEOUT:-180} run_tests gpu_tests_rc.log tests/test_group_sparse_sm90.py \
    -k "${RC_TESTS_K:-row_classes or pads_dy}"
  for pass in dw dx; do
    v=$(echo $pass | tr a-z A-Z)
    left=$(( deadline - $(date +%s) ))
    [ $left -gt 40 ] || break
    echo "== knob LARGEOUT_SM90_${v}_RC=0,1: $pass at odd L against cuBLAS matched (${left} s left)"
    timeout $(( left < 120 ? left : 120 )) python3 bench/bench_knob.py --pass $pass --env LARGEOUT_SM90_${v}_RC --values 0,1 --B ${RC_KNOB_B:-512} \
      --K ${RC_KNOB_K:-64,128,256} --G 32,64,128 --L ${RC_KNOB_L:-670091} --out "$OUT/knob_${pass}_rc.json" 2>&1 \
      | grep -o "'B'.*'over_matched': {[^}]*}, 'identical': [A-Za-z]*, 'max_rel_diff': [0-9.e-]*"
  done
  echo "== steps at odd L: padded (LARGEOUT_PAD_DY=1), not with row classes (0, LARGEOUT_SM90_D{W,X}_RC=1), v1 (0)"
  for fr in x weight none; do
    frozen_steps $(( deadline - 120 )) $fr 32,64,128 670091 1 0
    LARGEOUT_SM90_DW_RC=1 LARGEOUT_SM90_DX_RC=1 frozen_steps $(( deadline - 120 )) $fr 32,64,128 670091 0
  done
  [ $(( deadline - $(date +%s) )) -gt 200 ] &&
    memcheck_tests memcheck_rc.log tests/test_group_sparse_sm90.py "row_classes_match and (B7_ or B1024_) and bfloat16"
  left=$(( deadline - $(date +%s) ))
  echo "== tests: the other dW / dx tests, the optimizer tests (${left} s left)"
  [ $left -gt 60 ] && RUN_TESTS_TIMEOUT=$(( left - 5 )) run_tests gpu_tests_dwdx_optim.log tests/test_optim.py \
    tests/test_weight_scale.py tests/test_stochastic_round.py tests/test_group_sparse_sm90.py \
    -k "dw or dx or optim or round or scale or odd"
  exit 0
fi

if [ "$MODE" = rcdefault ]; then  # session 39: the row classes by default; their tests and the padding rule's, the
  # step padded (LARGEOUT_PAD_DY=1) and not (0: row classes) with x frozen, the weight frozen and neither, then the
  # grid at odd L per batch size (SWEEP_B) until RCD_BUDGET s after the start (default 585)
  deadline=$(( T0 + ${RCD_BUDGET:-585} ))
  echo "== tests: row classes, the padding rule, fresh threads, K = 64's batch split"
  RUN_TESTS_TIMEOUT=${RCD_TESTS_TIMEOUT:-170} run_tests gpu_tests_rcd.log tests/test_group_sparse_sm90.py \
    -k "${RCD_TESTS_K:-row_classes or pads_dy or reads_dy or fresh_thread or split_batch or alternate_groups or row_padded}"
  for fr in ${RCD_FROZEN:-none weight x}; do
    frozen_steps $(( deadline + 60 )) $fr 32,64,128 670091 1 0
  done
  GRID_ARGS="--L 670091,2812281" GRID_PREFIX=grid_oddL run_grid $deadline ${SWEEP_B:-512 1024 256 128}
  exit 0
fi

if [ "$MODE" = rcspread ]; then  # session 41: dW's row-class boxes issued by every loader warp, now the default: the
  # row-class tests, the B=512 K=128 headline, dW's ring size (LARGEOUT_SM90_DW_STAGES) at L = 131,072, the autograd
  # step at odd L (unpadded), then the grid at odd L per batch size (SWEEP_B) until RCS_BUDGET s after the start
  # (default 585)
  deadline=$(( T0 + ${RCS_BUDGET:-585} ))
  echo "== tests: row classes and the padding query"
  RUN_TESTS_TIMEOUT=${RCS_TESTS_TIMEOUT:-120} run_tests gpu_tests_rcs.log tests/test_group_sparse_sm90.py \
    -k "${RCS_TESTS_K:-row_classes or reads_dy}"
  bench_headline 100 670091,670208
  if [ "${RCS_STAGES:-1}" = 1 ]; then  # dW's ring at L = 131,072 (aligned rows), where G = 32 / 64 miss
    echo "== knob LARGEOUT_SM90_DW_STAGES=${RCS_STAGES_VALUES:-8,12,16} (dW, L = 131,072)"
    timeout 120 python3 bench/bench_knob.py --pass dw --env LARGEOUT_SM90_DW_STAGES --values ${RCS_STAGES_VALUES:-8,12,16} \
      --B ${RCS_STAGES_B:-1024,256} --K 64,128,256 --G 32,64 --L 131072 --out "$OUT/knob_dw_stages.json" 2>&1 \
      | grep -o "'B'.*'over_matched': {[^}]*}, 'identical': [A-Za-z]*"
  fi
  frozen_steps $(( deadline + 60 )) none 32,64,128 670091 0
  GRID_ARGS="--L 670091,2812281" GRID_PREFIX=grid_oddL run_grid $deadline ${SWEEP_B:-512 1024 256 128}
  exit 0
fi

if [ "$MODE" = k64stages ]; then  # session 42: dW's ring at K = 64, 8 against 16 stages (LARGEOUT_SM90_DW_STAGES;
  # branch s43-dw-k64-16 makes 16 the default there) over the issue's B, G and L, one file per L
  # (knob_dw_k64_stages_L<L>.json), then the dW tests (K64S_TESTS_K) as K64S_BUDGET s after the start allow
  # (default 480)
  deadline=$(( T0 + ${K64S_BUDGET:-480} ))
  for L in 131072 670091 2812281; do
    left=$(( deadline - $(date +%s) - 60 ))
    [ $left -gt 30 ] || { echo "(knob: no time left for L=$L)"; break; }
    echo "== knob LARGEOUT_SM90_DW_STAGES=8,16 (dW, K = 64, L = $L; $left s)"
    timeout $left python3 bench/bench_knob.py --pass dw --env LARGEOUT_SM90_DW_STAGES --values 8,16 \
      --B 512,1024,256,128 --K 64 --G 32,64,128 --L $L --iters 30 --out "$OUT/knob_dw_k64_stages_L$L.json" 2>&1 \
      | grep -o "'B'.*'over_matched': {[^}]*}, 'identical': [A-Za-z]*"
  done
  echo "== tests: second derivatives and torch.compile on CUDA (session 42's derivative registrations)"
  RUN_TESTS_TIMEOUT=120 run_tests gpu_tests_derivs.log tests/test_group_sparse_op.py tests/test_module.py \
    -k "gradcheck or compile or second_derivative"
  left=$(( deadline - $(date +%s) ))
  echo "== tests: dW (${left} s left)"
  [ $left -gt 30 ] && RUN_TESTS_TIMEOUT=$left run_tests gpu_tests_k64s.log tests/test_group_sparse_sm90.py \
    -k "${K64S_TESTS_K:-dw_}"
  exit 0
fi

if [ "$MODE" = optknob ]; then  # session 34: an optimizer launch knob (OPTKNOB_ENV) per value, then the whole suite
  deadline=$(( T0 + ${OPTKNOB_BUDGET:-560} ))
  for round in $(seq "${OPTKNOB_ROUNDS:-2}"); do
    for v in ${OPTKNOB_VALUES:?}; do
      left=$(( deadline - $(date +%s) ))
      [ $left -gt 60 ] || break 2
      echo "== ${OPTKNOB_ENV:?}=$v (round $round)"
      env "$OPTKNOB_ENV=$v" timeout $(( left - 40 )) python3 bench/bench_optim.py --iters 15 --cases "${OPTIM_CASES:-}" \
        --out "$OUT/optknob_${v}_r$round.json" 2>&1 | tail -6
    done
  done
  left=$(( deadline - $(date +%s) ))
  echo "== tests: whole suite (${left} s left)"
  [ $left -gt 60 ] && RUN_TESTS_TIMEOUT=$(( left - 10 )) run_tests gpu_tests_all.log $TESTS --durations=20
  exit 0
fi

if [ "$MODE" = optim ]; then  # optimizer and rounding tests, the optimizer benchmark, the SASS of two optimizer kernels
  echo "== tests: optimizers and stochastic rounding"
  run_tests gpu_tests_optim.log tests/test_optim.py tests/test_stochastic_round.py tests/test_weight_scale.py
  bin="$(python3 -c 'import largeout, os; print(os.path.dirname(largeout.__file__))')/bin"
  for round in $(seq "${OPTIM_ROUNDS:-1}"); do
    echo "== benchmark: fused optimizer step (round $round)"
    timeout 150 python3 bench/bench_optim.py --iters 15 --out "$OUT/optim_r$round.json" 2>&1 | tail -10
    echo "== the SGD kernels alone (largeout_bench_optim, round $round)"
    timeout 60 "$bin/largeout_bench_optim" --out "$OUT/optim_cpp_r$round.json" 2>&1 | tail -5
  done
  echo "== SASS of the bf16 SGD, SGD momentum and AdamW kernels (cuobjdump)"
  so=$(python3 -c "import largeout._C as c; print(c.__file__)" 2>/dev/null || ls "$(python3 -c 'import largeout,os;print(os.path.dirname(largeout.__file__))')"/*.so | head -1)
  cuobjdump -sass "$so" > /tmp/all.sass 2>&1; echo "cuobjdump rc=$? ($so)"
  python3 - "$OUT" <<'PY'
import re, sys
text = open("/tmp/all.sass").read()
parts = re.split(r"\n\s*Function : ", text)
for want, name in (("optim_kernelILNS_9OptimKindE0ELNS_8ElemTypeE1ELS4_1ELNS1_4BufsE0E", "sgd_bf16"),
                   ("optim_kernelILNS_9OptimKindE0ELNS_8ElemTypeE1ELS4_1ELNS1_4BufsE1E", "sgd_momentum_bf16"),
                   ("optim_kernelILNS_9OptimKindE1ELNS_8ElemTypeE1ELS4_1ELNS1_4BufsE4E", "adamw_bf16")):
    hits = [p for p in parts if want in p.split("\n", 1)[0]]
    if hits:
        open(f"{sys.argv[1]}/sass_{name}.txt", "w").write(hits[0])
        body = [l for l in hits[0].splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", l)]
        ops = {}
        for l in body:
            m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)", l)
            if m:
                op = m.group(2).split(".")[0]
                ops[op] = ops.get(op, 0) + 1
        print(name, len(body), "instructions;", sorted(ops.items(), key=lambda kv: -kv[1])[:25])
    else:
        print(name, "not found")
PY
  exit 0
fi

if [ "$MODE" = grid ]; then  # the issue-4 grid per batch size until GRID_BUDGET s after the start (default 500)
  deadline=$(( T0 + ${GRID_BUDGET:-500} ))
  run_grid $deadline ${SWEEP_B:-512 1024 256 128}
  exit 0
fi

if [ "$MODE" = dw2 ]; then  # dW v2: the Hopper tests, the dW probes, the B=512 K=128 benchmark, memcheck on v2
  echo "== tests: Hopper kernels"
  run_tests gpu_tests_sm90.log tests/test_group_sparse_sm90.py
  echo "== probe: Hopper dW"
  timeout 60 python3 bench/probe_fwd.py --passes dw --out "$OUT/probe_dw.json" 2>&1 | tail -6
  bench_headline 100 131072,670091,670208
  echo "== compute-sanitizer memcheck: dW v2"
  timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_group_sparse_sm90.py \
    -q -p no:cacheprovider -k "dw_versions and v2 and (L1008 or L640 or L2000)" > "$OUT/memcheck_dw2.log" 2>&1
  echo "memcheck rc=$?"; tail -3 "$OUT/memcheck_dw2.log"
  exit 0
fi

if [ "$MODE" = optdw ]; then  # the optimizer's and dW's changes: their tests, bench_optim, the B=512 K=128 headline, bench_fp8
  deadline=$(( T0 + ${OPTDW_BUDGET:-570} ))
  if [ "${OPTDW_OPTIM:-1}" = 1 ]; then
    echo "== tests: optimizers, rounding rules (CPU and GPU), Hopper dW"
    run_tests gpu_tests_optdw.log tests/test_optim.py tests/test_stochastic_round.py tests/test_weight_scale.py \
      tests/test_group_sparse_sm90.py -k "not dx and not fwd and not forward"
    echo "== benchmark: fused optimizer step"
    timeout 150 python3 bench/bench_optim.py --iters 15 --out "$OUT/optim.json" 2>&1 | tail -11
  else  # (OPTDW_OPTIM=0: the dW tests only, then the group-sparse fp8 benchmark instead of bench_fp8)
    echo "== tests: Hopper dW (and the layer through it)"
    run_tests gpu_tests_dw.log tests/test_group_sparse_sm90.py tests/test_group_sparse_fp8.py -k "not dx and not fwd and not forward"
  fi
  bench_headline 120 670091,670208
  left=$(( deadline - $(date +%s) ))
  if [ "${OPTDW_OPTIM:-1}" = 0 ] && [ $left -gt 60 ]; then
    echo "== benchmark: group-sparse layer with fp8 weights against bf16 (${left} s left)"
    timeout $left python3 bench/bench_group_sparse_fp8.py --out "$OUT/group_sparse_fp8.json" 2>&1 \
      | tee "$OUT/bench_group_sparse_fp8.log" | tail -12
  elif [ $left -gt 60 ]; then
    echo "== benchmark: FP8 layer against bf16 (${left} s left)"
    timeout $left python3 bench/bench_fp8.py --out "$OUT/fp8_linear.json" 2>&1 | tee "$OUT/bench_fp8.log" | tail -16
  fi
  exit 0
fi

dw_stages_bench() {  # the B=512 benchmark (K 64-256, G 32-128, L=670,208) per LARGEOUT_SM90_DW_STAGES in DW_STAGES_LIST
  local st
  for st in ${DW_STAGES_LIST:-8 10 11}; do
    echo "== benchmark: B=512, LARGEOUT_SM90_DW_STAGES=$st"
    LARGEOUT_SM90_DW_STAGES=$st timeout 120 python3 bench/bench_group_sparse.py --B 512 --K 64,128,256 --G 32,64,128 \
      --L 670208 --out "$OUT/group_sparse_dwstages$st.json" 2>&1 | grep " dw " | tail -9
  done
}

if [ "$MODE" = dwload ]; then  # session 22's kernels: Hopper tests, then 1 / 2 / 4 dW loaders; memcheck; FP8 configs
  deadline=$(( T0 + ${DWLOAD_BUDGET:-570} ))
  echo "== tests: every Hopper kernel path (dW with 1, 2 and 4 loader warpgroups; the forward and dx v2 with fewer instructions; fp8 weights)"
  run_tests gpu_tests_dwload.log tests/test_group_sparse_sm90.py tests/test_group_sparse_fp8.py
  n=0
  for v in ${DWLOAD_LIST:-1 2 4 1 2 4}; do
    n=$(( n + 1 )); left=$(( deadline - $(date +%s) ))
    [ $left -gt 40 ] || break
    echo "== LARGEOUT_SM90_DW_LOADERS=$v (run $n)"
    LARGEOUT_SM90_DW_LOADERS=$v timeout $(( left - 10 )) python3 bench/bench_group_sparse.py --B 512 --K 128 \
      --G 32,64,128 --L 670208 --out "$OUT/dwload_${n}_l$v.json" 2>&1 | grep -E " (fwd|dx|dw) " | tail -9
  done
  left=$(( deadline - $(date +%s) ))
  if [ $left -gt 60 ]; then
    echo "== compute-sanitizer memcheck: dW v2 with 2 and 4 loader warpgroups (${left} s left)"
    timeout $(( left - 30 < 150 ? left - 30 : 150 )) compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest \
      tests/test_group_sparse_sm90.py -q -p no:cacheprovider -k "dw_variants and loaders and bfloat16" > "$OUT/memcheck_dwload.log" 2>&1
    echo "memcheck rc=$?"; tail -3 "$OUT/memcheck_dwload.log"
  fi
  left=$(( deadline - $(date +%s) ))
  if [ $left -gt 60 ]; then
    echo "== FP8 GEMM configurations, alone and back to back (${left} s left)"
    timeout $(( left - 5 )) python3 bench/bench_fp8_configs.py --out "$OUT/fp8_gemm_configs.json" 2>&1 | tail -8
  fi
  exit 0
fi

if [ "$MODE" = dwcp ]; then  # dW v2's probes and variants (dY by cp.async, dbias by the computing warpgroups), the dW tests
  deadline=$(( T0 + ${DWCP_BUDGET:-480} ))
  echo "== probes: dW v2 at B=512 K=128 G=32 with parts switched off (bench/probe_fwd.py --passes dw)"
  timeout 90 python3 bench/probe_fwd.py --passes dw --out "$OUT/probe_dw.json" 2>&1 | grep -E "'pass'|cuBLAS" | tail -18
  echo "== probes: the forward at G=32 (three computing warpgroups, 8 stages; TMA and plain stores)"
  timeout 60 python3 bench/probe_fwd.py --passes fwd --cons 3 --stages 8 --out "$OUT/probe_fwd.json" 2>&1 \
    | grep -E "'probe'|cuBLAS" | tail -8
  for n in 1 2; do
    for v in tma cp dbc dbccp; do
      left=$(( deadline - $(date +%s) ))
      [ $left -gt 90 ] || break 2
      echo "== dW variant $v, round $n"
      env LARGEOUT_SM90_DW_DY=$([ "${v%cp}" != "$v" ] && echo cp || echo tma) \
        LARGEOUT_SM90_DW_DBIAS=$([ "${v#dbc}" != "$v" ] && echo computing || echo loader) \
        timeout 40 python3 bench/bench_group_sparse.py --B 512 --K 128 --G 32,64,128 --L 670208 \
        --out "$OUT/dwcp_${n}_$v.json" 2>&1 | grep -E " dw " | tail -3
    done
  done
  left=$(( deadline - $(date +%s) ))
  echo "== tests: Hopper dW (${left} s left)"
  [ $left -gt 30 ] && RUN_TESTS_TIMEOUT=$(( left - 5 )) run_tests gpu_tests_dwcp.log tests/test_group_sparse_sm90.py -k "dw"
  exit 0
fi

if [ "$MODE" = padfrozen ]; then  # the step at odd L with a frozen input or weight, dY padded (1) or not (0), in turn
  for fr in x weight; do frozen_steps $(( T0 + 580 )) $fr 32,64,128 670091,2812281 1 0; done
  exit 0
fi

if [ "$MODE" = knob ]; then  # a kernel knob's values timed in turn (bench_knob.py), after the tests named
  if [ -n "${KNOB_TESTS:-}" ]; then
    echo "== tests: $KNOB_TESTS"
    run_tests gpu_tests_knob.log $KNOB_TESTS
  fi
  echo "== $KNOB_ENV = $KNOB_VALUES: ${KNOB_ARGS:-}"
  timeout "${KNOB_TIMEOUT:-300}" python3 bench/bench_knob.py --env "$KNOB_ENV" --values "$KNOB_VALUES" ${KNOB_ARGS:-} \
    --out "$OUT/knob.json" 2>&1 | grep -o "'B'.*'over_matched': {[^}]*}, 'identical': [A-Za-z]*"
  exit 0
fi

if [ "$MODE" = splitb ]; then  # session 24's prepared changes: split_b's chunk parities (odd chunk counts over many
  # groups per CTA), kDbC at K = 64 (it stopped once on an H200): the dW tests (SPLITB_ALL=1: the whole suite), the
  # split-batch test with kDbC SPLITB_REPEATS times (default 5), dW at K = 64 with both dbias placements twice in
  # turn, then synccheck and memcheck on the split-batch test; as SPLITB_BUDGET s after the start allow (default 560)
  deadline=$(( T0 + ${SPLITB_BUDGET:-560} ))
  if [ "${SPLITB_ALL:-0}" = 1 ]; then
    echo "== tests: the whole suite"
    RUN_TESTS_TIMEOUT=260 run_tests gpu_tests_splitb.log $TESTS
  else
    echo "== tests: Hopper dW"
    RUN_TESTS_TIMEOUT=200 run_tests gpu_tests_splitb.log tests/test_group_sparse_sm90.py -k "dw"
  fi
  for n in $(seq 1 "${SPLITB_REPEATS:-5}"); do
    left=$(( deadline - $(date +%s) ))
    [ $left -gt 40 ] || break
    echo "== dW split-batch with kDbC, repeat $n"
    LARGEOUT_SM90_DW_DBIAS=computing timeout 30 python3 -m pytest -q -p no:cacheprovider -o faulthandler_timeout=10 \
      tests/test_group_sparse_sm90.py -k "k64_split_batch and computing" 2>&1 | tail -2
  done
  dbias_rounds "$deadline" splitb --B 128,320,512,1024 --K 64 --G 32,64,128 --L 670208
  frozen_steps "$deadline" x 32,128 670091 1 0 1  # dY padded for dW alone (1, session 25) or not (0)
  left=$(( deadline - $(date +%s) ))
  if [ $left -gt 60 ]; then
    echo "== compute-sanitizer synccheck: the split-batch test"
    timeout $(( left - 10 )) compute-sanitizer --tool synccheck --error-exitcode 3 python3 -m pytest -q \
      -p no:cacheprovider tests/test_group_sparse_sm90.py -k "k64_split_batch or k64_alternate" \
      > "$OUT/synccheck_splitb.log" 2>&1
    echo "synccheck rc=$? ($(tail -1 "$OUT/synccheck_splitb.log"))"
  fi
  left=$(( deadline - $(date +%s) ))
  [ $left -gt 90 ] && memcheck_tests memcheck_splitb.log tests/test_group_sparse_sm90.py "k64_split_batch or k64_alternate"
  exit 0
fi

if [ "$MODE" = dbc ]; then  # dbias by the computing warpgroups at every K: the dW tests, memcheck on K = 64, dW with
  # LARGEOUT_SM90_DW_DBIAS=computing and =loader at B 128 and 512, K 64 and 256 twice in turn, then the grid
  # per batch size (SWEEP_B), each as DBC_BUDGET s after the start allow (default 560)
  deadline=$(( T0 + ${DBC_BUDGET:-560} ))
  echo "== tests: Hopper dW"
  RUN_TESTS_TIMEOUT=150 run_tests gpu_tests_dbc.log tests/test_group_sparse_sm90.py -k "dw"
  memcheck_tests memcheck_dbc.log tests/test_group_sparse_sm90.py \
    "(dw_versions or dw_ring_sizes and B512 or k64_split_batch) and K64 and not dycp and not loaders"
  dbias_rounds "$deadline" dbc --B 128,512 --K 64,256 --G 32,64,128 --L 670208
  run_grid $deadline ${SWEEP_B:-512 1024 256 128}
  exit 0
fi

if [ "$MODE" = dwstages ]; then  # dW's ring size: its tests, then the B=512 benchmark per LARGEOUT_SM90_DW_STAGES
  echo "== tests: Hopper dW (ring sizes included)"
  run_tests gpu_tests_dwstages.log tests/test_group_sparse_sm90.py -k "dw"
  dw_stages_bench
  exit 0
fi

if [ "$MODE" = dwopt ]; then  # dwstages and the optimizer's changes: their tests, the ring sizes, bench_optim (OPTIM_CASES)
  deadline=$(( T0 + ${DWOPT_BUDGET:-580} ))
  echo "== tests: optimizers, rounding rules, Hopper dW (ring sizes included)"
  run_tests gpu_tests_dwopt.log tests/test_optim.py tests/test_stochastic_round.py tests/test_weight_scale.py \
    tests/test_group_sparse_sm90.py -k "not dx and not fwd and not forward"
  dw_stages_bench
  left=$(( deadline - $(date +%s) ))
  echo "== benchmark: fused optimizer step (${left} s left)"
  [ $left -gt 20 ] && timeout $left python3 bench/bench_optim.py --iters 15 --cases "${OPTIM_CASES:-}" \
    --out "$OUT/optim.json" 2>&1 | tail -11
  exit 0
fi

ncu_pass() {  # $1: pass (dw, fwd, dx3), $2: G, $3: timeout (s); Nsight Compute of one launch at B=512 K=128 L=670,208
  # (PROFILE_ARGS: other profile_sm90.py shape arguments, e.g. "--B 1024 --K 64 --L 131072"), its details and
  # its per-instruction page (bench/ncu_sass_summary.py reads the CSV), files named after the pass and G (+ NCU_TAG)
  local pass=$1 G=$2 f="ncu_${1}_G${2}${NCU_TAG:-}" fs="ncu_${1}_sass_G${2}${NCU_TAG:-}"
  echo "== Nsight Compute: $pass at G=$G, ${PROFILE_ARGS:-B=512 K=128 L=670,208}"
  # (profile_sm90.py launches each pass twice: skip the warm-up; session 17's --launch-skip 2 profiled nothing)
  timeout "$3" ncu --clock-control none -k regex:"gsl_${pass}_sm90" --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
    --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
    --section InstructionStats --section SourceCounters -f -o "$OUT/$f" \
    python3 bench/profile_sm90.py --G "$G" ${PROFILE_ARGS:-} > "$OUT/$f.log" 2>&1
  echo "ncu G=$G rc=$?"
  ncu -i "$OUT/$f.ncu-rep" --print-details all > "$OUT/$f.txt" 2>&1
  # per-instruction stall samples (which loads the long-scoreboard stalls wait on)
  ncu -i "$OUT/$f.ncu-rep" --page source --print-source sass --csv > "$OUT/$fs.csv" 2>&1
  echo "sass page rc=$? ($(wc -l < "$OUT/$fs.csv") lines)"
  rm -f "$OUT/$f.ncu-rep"  # (too large to come back)
  grep -E "gsl_|Duration|Throughput|Issued Warp|Eligible Warps|Achieved Occupancy|Registers Per" "$OUT/$f.txt" | head -24
}

if [ "$MODE" = dwprof ]; then  # issue 4: Nsight Compute of dW (the largest pass at the headline), then the headline
  # PROFILE_PASS=fwd / dx3: the forward or dx v3 instead
  for G in ${PROFILE_G:-32}; do ncu_pass "${PROFILE_PASS:-dw}" "$G" 200; done
  [ "${DWPROF_BENCH:-1}" = 0 ] && exit 0
  bench_headline 120 670091,670208
  exit 0
fi

fwd_profiles_then_grid() {  # $1: deadline (epoch s), $2: seconds a profile needs left; Nsight Compute of the forward
  # at each G of PROFILE_G (PROFILE_ARGS, NCU_TAG) while more than $2 s are left, then the grid per batch size (SWEEP_B)
  local G left
  for G in ${PROFILE_G:-}; do
    left=$(( $1 - $(date +%s) ))
    [ $left -gt "$2" ] || break
    NCU_TAG=${NCU_TAG:-} ncu_pass fwd "$G" 120
  done
  run_grid "$1" ${SWEEP_B:-1024 512 256 128}
}

if [ "$MODE" = fwdgrid ]; then  # session 29: the forward's tests (FWD_TESTS_K), Nsight Compute of the forward at each
  # G of PROFILE_G with PROFILE_ARGS (file names end in NCU_TAG), then the issue-4 grid per batch size (SWEEP_B) until
  # FWDGRID_BUDGET s after the start (default 585)
  deadline=$(( T0 + ${FWDGRID_BUDGET:-585} ))
  RUN_TESTS_TIMEOUT=${RUN_TESTS_TIMEOUT:-150} tests_subset gpu_tests_fwd.log tests/test_group_sparse_sm90.py \
    -k "${FWD_TESTS_K:-forward or fwd}"
  fwd_profiles_then_grid "$deadline" 90
  exit 0
fi

if [ "$MODE" = settle ]; then  # session 31: the forward's bias tests; whether a shape timed right after a heavy one
  # runs slower (the binary at B=1024, K=64, G=64, L=131,072 alone and after L=2,812,281, with --warmup-ms 0 and 200);
  # the bias read as pairs (bench_knob.py, LARGEOUT_SM90_FWD_BIAS_PAIRS 1 / 0); Nsight Compute of the forward per
  # PROFILE_G (PROFILE_ARGS, NCU_TAG); then the grid per batch size (SWEEP_B) until SETTLE_BUDGET s (default 585)
  deadline=$(( T0 + ${SETTLE_BUDGET:-585} ))
  RUN_TESTS_TIMEOUT=120 tests_subset gpu_tests_fwd.log tests/test_group_sparse_sm90.py \
    -k "${FWD_TESTS_K:-bias or g128_as_64 or ring_and_store}"
  bin=$(python3 -c "import largeout, os; print(os.path.join(os.path.dirname(largeout.__file__), 'bin'))")
  for wm in 0 200; do
    for Ls in 131072 2812281,131072; do
      echo "== binary, --warmup-ms $wm, --L $Ls: fwd / dx / dw ms of the last shape"
      timeout 60 "$bin/largeout_bench_group_sparse" --B 1024 --K 64 --G 64 --L "$Ls" --index-order balanced \
        --warmup-ms $wm > "$OUT/settle_wm${wm}_L${Ls/,/_}.json" && python3 -c "import json,sys; \
r = json.load(open(sys.argv[1]))['results'][-1]; print(r['L'], r['fwd_ms'], r['dx_ms'], r['dw_ms'])" \
        "$OUT/settle_wm${wm}_L${Ls/,/_}.json"
    done
  done
  echo "== bias pairs: LARGEOUT_SM90_FWD_BIAS_PAIRS 1 / 0"
  timeout 150 python3 bench/bench_knob.py --env LARGEOUT_SM90_FWD_BIAS_PAIRS --values 1,0 --B 256,1024 --K 64,128,256 \
    --G 32,64,128 --L 131072 --warmup-ms 50 --out "$OUT/knob_fwd_bias_pairs_s31.json" 2>&1 \
    | grep -o "'B'.*'over_matched': {[^}]*}, 'identical': [A-Za-z]*"
  fwd_profiles_then_grid "$deadline" 200
  exit 0
fi

if [ "$MODE" = order ]; then  # session 29: the index orders (bench_group_sparse.py --index-order): the L = 131,072
  # grid per order in ORDER_LIST (default "sorted balanced banked"), ORDER_ROUNDS rounds in turn (default 2), then
  # the index-order tests (TESTS_ALL=1: the whole suite) in the time left, then the whole grid with ORDER_GRID
  # (default balanced) per batch size until ORDER_BUDGET s after the start (default 585)
  deadline=$(( T0 + ${ORDER_BUDGET:-585} ))
  for n in $(seq 1 "${ORDER_ROUNDS:-2}"); do
    for o in ${ORDER_LIST:-sorted balanced banked}; do
      left=$(( deadline - $(date +%s) ))
      [ $left -gt 60 ] || break 2
      echo "== index order $o, round $n, L = 131,072 ($left s left)"
      timeout $(( left - 10 )) python3 bench/bench_group_sparse.py --B 128,256,512,1024 --K 64,128,256 --G 32,64,128 \
        --L 131072 --index-order "$o" --out "$OUT/order_${o}_$n.json" 2>&1 | tail -1
    done
  done
  left=$(( deadline - $(date +%s) ))
  RUN_TESTS_TIMEOUT=$(( left - 10 < 420 ? left - 10 : 420 )) tests_subset gpu_tests_order.log tests/test_group_sparse_sm90.py \
    tests/test_module.py -k "index_order or banked or balanced"
  GRID_ARGS="--index-order ${ORDER_GRID:-balanced}" GRID_PREFIX="grid_${ORDER_GRID:-balanced}" \
    run_grid "$deadline" ${SWEEP_B:-1024 512 256 128}
  exit 0
fi

gather_bw() {  # the installed largeout_bench_gather_bw (seconds): the bandwidth bounds of bench/NOTES.md, session 20
  echo "== benchmark: gather / scatter bandwidth"
  timeout 60 "$(python3 -c 'import largeout, os; print(os.path.dirname(largeout.__file__))')/bin/largeout_bench_gather_bw" \
    --out "$OUT/gather_bw.json" 2>&1 | tail -12
}

if [ "$MODE" = gatherbw ]; then
  gather_bw
  exit 0
fi

if [ "$MODE" = suite ]; then  # build, [gather_bw,] the whole suite, the headline, bench_optim (OPTIM_CASES; then once per
  # LARGEOUT_OPTIM_L2_PREFETCH value in PREFETCH_LIST, as optim_pf<v>.json), then the forward's profile, each as the
  # SUITE_BUDGET s after the start allow (default 585): one fresh call validates and measures a commit. GATHER_BW=1:
  # largeout_bench_gather_bw first; SUITE_HEADLINE=0: no headline benchmark.
  deadline=$(( T0 + ${SUITE_BUDGET:-585} ))
  [ "${GATHER_BW:-0}" = 1 ] && gather_bw
  echo "== tests: whole suite"
  left=$(( deadline - $(date +%s) ))
  RUN_TESTS_TIMEOUT=$(( left - 45 < 420 ? left - 45 : 420 )) run_tests gpu_tests.log $TESTS
  [ "${SUITE_HEADLINE:-1}" = 1 ] && bench_headline 40 670091,670208
  if [ -n "${SUITE_MEMCHECK_K:-}" ] && [ $(( deadline - $(date +%s) )) -gt 60 ]; then
    memcheck_tests memcheck_suite.log tests/test_group_sparse_sm90.py "$SUITE_MEMCHECK_K"
  fi
  left=$(( deadline - $(date +%s) ))
  echo "== benchmark: fused optimizer step (${left} s left)"
  [ "${SUITE_OPTIM:-1}" = 1 ] && [ $left -gt 30 ] && timeout $(( left - 10 )) python3 bench/bench_optim.py --iters 15 --cases "${OPTIM_CASES:-}" \
    --out "$OUT/optim.json" 2>&1 | tail -11
  for pf in ${PREFETCH_LIST:-}; do
    left=$(( deadline - $(date +%s) ))
    [ $left -gt 40 ] || break
    echo "== LARGEOUT_OPTIM_L2_PREFETCH=$pf"
    LARGEOUT_OPTIM_L2_PREFETCH=$pf timeout $(( left - 10 )) python3 bench/bench_optim.py --iters 15 \
      --cases "${OPTIM_CASES:-}" --out "$OUT/optim_pf$pf.json" 2>&1 | tail -11
  done
  left=$(( deadline - $(date +%s) ))
  if [ "${FP8_FWD_PROFILE:-0}" = 1 ] && [ $left -gt 60 ]; then
    echo "== the FP8 layer's forward alone: host and device time, ops by host time"
    timeout $(( left - 10 )) python3 bench/profile_fp8.py --forward --out "$OUT/profile_fp8_forward.txt" 2>&1 | head -40
  fi
  left=$(( deadline - $(date +%s) ))
  for pr in ${SUITE_NCU:-fwd:32:1}; do  # pass:G:dW loader warpgroups
    IFS=: read -r pp pg pl <<< "$pr"
    left=$(( deadline - $(date +%s) ))
    [ $left -gt 40 ] || break
    LARGEOUT_SM90_DW_LOADERS=$pl NCU_TAG=$([ "$pl" = 1 ] || echo "_l$pl") ncu_pass "$pp" "$pg" $(( left - 5 < 150 ? left - 5 : 150 ))
  done
  exit 0
fi

if [ "$MODE" = verify ]; then  # whole suite, the B=512 K=128 benchmark, the optimizer benchmark and its profile
  echo "== tests: whole suite"
  run_tests gpu_tests.log $TESTS
  bench_headline 100 670091,670208
  echo "== benchmark: fused optimizer step"
  timeout 120 python3 bench/bench_optim.py --iters 10 --out "$OUT/optim.json" 2>&1 | tail -10
  echo "== profile: fused optimizer step (sgd bf16 SR, adamw bf16 SR)"
  ncu_optim "sgd bf16 SR" "adamw bf16 SR (bf16 state)"
  echo "== compute-sanitizer memcheck: Hopper kernels (headline shapes)"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_group_sparse_sm90.py \
    -q -p no:cacheprovider -k "ring_and_store_paths and 8191 or fresh_thread or many_units" 2>&1 | tail -4 > "$OUT/memcheck.log"
  echo "memcheck rc=${PIPESTATUS[0]}"; cat "$OUT/memcheck.log"
  (cd "$OUT" && tar czf verify.tgz --remove-files *.json *.log *.txt 2>/dev/null; ls)
  exit 0
fi

if [ "$MODE" = probe ]; then  # issue 4: the Hopper forward timed with parts switched off
  echo "== probe: Hopper forward"
  timeout 200 python3 bench/probe_fwd.py --out "$OUT/probe_fwd.json" 2>&1 | tee "$OUT/probe_fwd.log" | tail -20
  exit 0
fi

if [ "$MODE" = lowp ]; then
  echo "== tests: stochastic rounding, optimizers, low-precision and FP8 layers, low-precision heads"
  run_tests gpu_tests_lowp.log ${LOWP_TESTS:-tests/test_stochastic_round.py tests/test_optim.py tests/test_module.py \
    tests/test_weight_scale.py tests/test_train.py}
  if [ "${BENCH:-1}" != 0 ]; then
    if [ "${OPTIM_BENCH:-1}" != 0 ]; then
      echo "== benchmark: fused optimizer step"
      timeout 240 python3 bench/bench_optim.py --out "$OUT/optim.json" 2>&1 | tee "$OUT/bench_optim.log" | tail -20
    fi
    [ "${FP8_BENCH:-1}" = 0 ] && exit 0
    echo "== benchmark: FP8 layer against bf16"
    timeout 180 python3 bench/bench_fp8.py --out "$OUT/fp8_linear.json" 2>&1 | tee "$OUT/bench_fp8.log" | tail -12
    if [ "${PROFILE_FP8:-0}" = 1 ]; then
      echo "== profile: FP8 layer training step"
      timeout 120 python3 bench/profile_fp8.py --out "$OUT/profile_fp8.txt" > /dev/null 2>&1; echo "rc=$?"
    fi
  fi
  exit 0
fi

if [ "$MODE" = fp8 ]; then  # the FP8 layer's tests and benchmark; NCU_OPTIM: optimizer cases to profile
  [ "${GATHER_BW:-0}" = 1 ] && gather_bw
  tests_subset gpu_tests_fp8.log tests/test_module.py tests/test_weight_scale.py tests/test_stochastic_round.py \
    tests/test_group_sparse_fp8.py -k "fp8 or scale or pad_columns"
  [ "${MEMCHECK_FP8:-0}" = 1 ] && memcheck_tests memcheck_fp8.log tests/test_module.py \
    "fp8_gemm_kernel_matches or (fp8_quantize_op_matches and cuda)"
  [ "${MEMCHECK_FP8:-0}" = 1 ] && memcheck_tests memcheck_gs_fp8.log tests/test_group_sparse_fp8.py \
    "hopper_fp8_kernels_equal and e4m3"
  if [ "${FP8_CLOCKS:-0}" = 1 ]; then
    echo "== SM clock and power under sustained bf16 and fp8 GEMMs"
    timeout 120 python3 bench/fp8_clocks.py ${FP8_CLOCKS_CONFIGS:+--configs "$FP8_CLOCKS_CONFIGS"} \
      --out "$OUT/fp8_clocks.json" 2>&1 | tail -30
  fi
  if [ "${FP8_BENCH:-1}" != 0 ]; then
    echo "== benchmark: FP8 layer against bf16"
    timeout 240 python3 bench/bench_fp8.py ${FP8_BENCH_ARGS:-} --out "$OUT/fp8_linear.json" 2>&1 | tee "$OUT/bench_fp8.log" | tail -16
  fi
  if [ "${FP8_FWD_PROFILE:-0}" = 1 ]; then
    echo "== the FP8 layer's forward alone: host and device time, ops by host time"
    timeout 60 python3 bench/profile_fp8.py --forward --out "$OUT/profile_fp8_forward.txt" 2>&1 | head -40
  fi
  if [ "${PROFILE_FP8:-0}" = 1 ]; then  # where the dense fp8 layer's training step spends its time
    echo "== profile: FP8 layer training step"
    timeout 120 python3 bench/profile_fp8.py --out "$OUT/profile_fp8.txt" > /dev/null 2>&1; echo "rc=$?"
    head -${PROFILE_LINES:-40} "$OUT/profile_fp8.txt"
  fi
  if [ "${GS_FP8_BENCH:-1}" != 0 ]; then
    echo "== benchmark: group-sparse layer with fp8 weights against bf16"
    timeout 200 python3 bench/bench_group_sparse_fp8.py --out "$OUT/group_sparse_fp8.json" 2>&1 \
      | tee "$OUT/bench_group_sparse_fp8.log" | tail -12
  fi
  if [ "${OPTIM_BENCH:-0}" = 1 ]; then
    [ "${TESTS_ALL:-0}" = 1 ] || { echo "== tests: optimizers and stochastic rounding"
      run_tests gpu_tests_optim.log tests/test_optim.py tests/test_stochastic_round.py tests/test_weight_scale.py; }
    echo "== benchmark: fused optimizer step"
    timeout 150 python3 bench/bench_optim.py --iters 15 --out "$OUT/optim.json" 2>&1 | tail -11
  fi
  if [ -n "${NCU_OPTIM:-}" ]; then
    echo "== profile: fused optimizer step ($NCU_OPTIM)"
    IFS=";" read -ra cs <<< "$NCU_OPTIM"
    ncu_optim "${cs[@]}"
  fi
  exit 0
fi

if [ "$MODE" = linpad ]; then  # session 47: largeout.nn.Linear's padded path at unaligned L, its tests and benchmark
  deadline=$(( T0 + ${LINPAD_BUDGET:-570} ))
  # shellcheck disable=SC2086
  tests_subset gpu_tests_linpad.log ${LINPAD_TESTS:-tests/test_linear_pad.py tests/test_layer_modes.py tests/test_optim.py tests/test_ddp.py}
  [ "${LINPAD_TRAIN_TESTS:-0}" = 1 ] && { echo "== tests: the trainer"; run_tests gpu_tests_train.log tests/test_train.py; }
  left=$(( deadline - $(date +%s) ))
  if [ $left -gt 40 ]; then
    echo "== benchmark: largeout.nn.Linear at unaligned L against torch.nn.Linear (${left} s left)"
    timeout $(( left - 10 )) python3 bench/bench_linear_pad.py ${LINPAD_ARGS:-} --out "$OUT/linear_pad.json" \
      2>&1 | tee "$OUT/bench_linear_pad.log" | tail -24
  else
    echo "== no time left for bench_linear_pad (${left} s)"
  fi
  left=$(( deadline - $(date +%s) ))
  if [ "${LINPAD_FP8:-0}" = 1 ] && [ $left -gt 90 ]; then
    echo "== benchmark: FP8 layer against bf16 (${left} s left)"
    timeout $(( left - 5 )) python3 bench/bench_fp8.py ${FP8_BENCH_ARGS:-} --out "$OUT/fp8_linear.json" 2>&1 \
      | tee "$OUT/bench_fp8.log" | tail -16
  fi
  exit 0
fi

if [ "$MODE" = fp8dx ]; then  # session 15's changes in one call: their tests, then the three benchmarks
  run_tests gpu_tests_fp8dx.log tests/test_module.py tests/test_weight_scale.py tests/test_group_sparse_fp8.py \
    tests/test_group_sparse_sm90.py -k "fp8 or scale or pad_columns or dx_versions or odd_L or pads_dy"
  echo "== benchmark: dx v3 (and its previous thread mapping, probe 3), three shapes"
  timeout 120 python3 bench/bench_dx3.py --quick --out "$OUT/dx3.json" 2>&1 | tail -5
  echo "== benchmark: FP8 layer against bf16 (one round)"
  timeout 120 python3 bench/bench_fp8.py --rounds 1 --out "$OUT/fp8_linear.json" 2>&1 | tail -16
  echo "== benchmark: group-sparse layer with fp8 weights against bf16"
  timeout 100 python3 bench/bench_group_sparse_fp8.py --rounds 2 --out "$OUT/group_sparse_fp8.json" 2>&1 | tail -12
  exit 0
fi

if [ "$MODE" = evidence ]; then  # issue 5: measured memory per label, convergence of low-precision heads
  echo "== memory per label"
  timeout 120 python3 bench/lowp_memory.py --out "$OUT/lowp_memory.json" 2>&1 | grep -v Warning | tail -8
  echo "== low-precision training evidence"
  timeout ${EVIDENCE_BUDGET:-330} python3 bench/lowp_evidence.py --out "$OUT/lowp_evidence.json" --device cuda \
    --epochs ${EVIDENCE_EPOCHS:-6} --sgd-lrs ${EVIDENCE_LRS:-0.05,0.3} ${EVIDENCE_SMALL_LRS:+--small-lrs $EVIDENCE_SMALL_LRS} 2>&1 | grep -v Warning | tail -30
  exit 0
fi

# The cut MiniLM of bench/minilm_prune.py, carried as a tar in two halves (a call carries 64 MiB with the tree):
# .mdla/ by an earlier call on this machine (which copied it to /tmp/mdl), .mdlb/ by this one; or whole and
# xz-compressed in .oofc/ (the one-call bundle) -> $XMC_MINILM_WN
assemble_minilm() {
  local from
  mkdir -p /tmp/mdl
  if [ -d .oofc ]; then
    from=.oofc
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
      .oofc/mlwn.tar.xz /tmp/mdl/mlwn.tar || return 1
  elif [ -d .mdlb ]; then
    from=.mdlb
    cat /tmp/mdl/mlwn.tar.part00 .mdlb/mlwn.tar.part01 > /tmp/mdl/mlwn.tar || return 1
  else
    return 0
  fi
  (cd /tmp/mdl && echo "$(cut -d' ' -f1 "$OLDPWD/$from/mlwn.tar.sha256")  mlwn.tar" | sha256sum -c -) || return 1
  tar xf /tmp/mdl/mlwn.tar -C /tmp/mdl && export XMC_MINILM_WN=/tmp/mdl/mlwn
}

if [ "$MODE" = oofft ]; then  # issue 3: bench/xmc_rank_oof.py --encoder ft (fold models kept in /tmp/oofft: a
  # later warm call continues where an earlier one stopped); .qdata/wordnet's jsonl, the model as assemble_minilm
  mkdir -p /tmp/q/wordnet
  qd=.qdata; [ -d .oofc ] && qd=.oofc  # (the one-call bundle holds the jsonl too)
  for f in train test; do gunzip -c "$qd/wordnet/$f.jsonl.gz" > "/tmp/q/wordnet/$f.jsonl"; done
  assemble_minilm || exit 1
  echo "== xmc_rank_oof --encoder ft"
  rm -f /tmp/oofft/dump.npz  # (an earlier call's)
  LARGEOUT_CACHE=/tmp/oofft/cache timeout ${OOF_BUDGET:-560} python3 bench/xmc_rank_oof.py --data /tmp/q/wordnet \
    --work /tmp/oofft/work --out "$OUT/wordnet_rank_oof_ft${OOF_TAG:-}.json" --encoder ft --device cuda \
    --parallel-folds ${OOF_PARALLEL:-5} --dump /tmp/oofft/dump.npz 2>&1 | grep -v "Warning\|Loading weights" | tee "$OUT/wordnet_rank_oof_ft${OOF_TAG:-}.log" | tail -30
  pkill -f "xmc_rank_oof.py.*--only-fold" 2>/dev/null  # (workers left by the timeout: their folds start anew later)
  # At most 8 files of 16 MiB come back: device.txt, build.log, the JSON and its log, the fold logs and the
  # dump's SHA-256 as one tar, the dump (~35 MB) in three 15 MiB parts (here: cat them, sha256sum -c); so the
  # caller should add no file of its own to $OUT.
  rm -f /tmp/oofft/work/dump.sha256
  if [ -f "$OUT/wordnet_rank_oof_ft${OOF_TAG:-}.json" ] && [ -f /tmp/oofft/dump.npz ]; then
    d="$OUT/oofft_dump${OOF_TAG:-}" && mkdir -p "$d" && split -b 15m -d /tmp/oofft/dump.npz "$d/part" \
      && (cd /tmp/oofft && sha256sum dump.npz) > /tmp/oofft/work/dump.sha256
  fi
  (cd /tmp/oofft/work && tar czf "$OUT/oofft_logs${OOF_TAG:-}.tgz" fold*.log dump.sha256 2>/dev/null)
  exit 0
fi

if [ "$MODE" = quality ]; then  # our trainer on the GPU, merged with baselines run elsewhere (.qdata/baselines.json)
  if [ "${BENCH:-1}" != 0 ]; then
    echo "== benchmark: fused optimizer step"
    timeout 150 python3 bench/bench_optim.py --out "$OUT/optim.json" 2>&1 | tee "$OUT/bench_optim.log" | tail -12
  fi
  for ds in ${QUALITY_DATASETS:-wordnet}; do
    mkdir -p "/tmp/q/$ds"
    for f in train test; do
      gunzip -c ".qdata/$ds/$f.txt.gz" > "/tmp/q/$ds/$f.txt"
      [ -f ".qdata/$ds/$f.jsonl.gz" ] && gunzip -c ".qdata/$ds/$f.jsonl.gz" > "/tmp/q/$ds/$f.jsonl"
    done
  done
  assemble_minilm || exit 1
  echo "== xmc_quality (ours, GPU)"
  timeout ${QUALITY_BUDGET:-400} python3 bench/xmc_quality.py --datasets ${QUALITY_DATASETS:-wordnet} --data-root /tmp/q \
    --methods ${QUALITY_METHODS:-largeout-dense largeout-group-sparse} --baselines .qdata/baselines.json --device cuda \
    --out "$OUT/xmc_quality_gpu.json" --work /tmp/q/xq 2>&1 | grep -v Warning | tee "$OUT/xmc_quality_gpu.log" | tail -40
  exit 0
fi

if [ "$MODE" = tune ]; then
  for ds in ${TUNE_DATASETS:-wordnet go-mf}; do
    [ -d ".qdata/$ds" ] || continue
    mkdir -p "/tmp/q/$ds"
    for f in train test; do gunzip -c ".qdata/$ds/$f.txt.gz" > "/tmp/q/$ds/$f.txt"; done
    echo "== tune $ds"
    timeout ${TUNE_BUDGET:-240} python3 bench/xmc_tune.py --data "/tmp/q/$ds" --grid "bench/tune/${ds}_gpu.json" \
      --out "$OUT/tune_$ds.json" --work "/tmp/q/work_$ds" --device cuda --rank-powers 0.02,0.05,0.1,0.2 \
      --budget-s $(( ${TUNE_BUDGET:-240} - 60 )) 2>&1 | grep -v Warning | tail -40
  done
  exit 0
fi

if [ "$MODE" = sm90 ]; then
  echo "== tests: Hopper kernels and the op/module tests"
  run_tests gpu_tests_sm90.log tests/test_group_sparse_sm90.py ${SM90_EXTRA_TESTS-tests/test_group_sparse_op.py tests/test_module.py}
  echo "== compute-sanitizer memcheck on the Hopper kernels (small shapes)"
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_group_sparse_sm90.py \
    -q -p no:cacheprovider -k "matches_reference and bfloat16 and (B1_ or B7_ or B33_ or B3_)" 2>&1 | tail -6 \
    > "$OUT/memcheck_sm90.log"
  echo "memcheck rc=${PIPESTATUS[0]}"; tail -4 "$OUT/memcheck_sm90.log"
else
  echo "== tests: argument errors alone (fresh process)"
  python3 -X faulthandler -m pytest $TESTS -q -p no:cacheprovider -k "bad or error or validate" 2>&1 | tail -4
  echo "== tests: whole suite"
  run_tests gpu_tests.log $TESTS
  echo "== compute-sanitizer memcheck on the CUDA numeric tests"
  timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest tests/test_group_sparse_op.py -q \
    -p no:cacheprovider -k "match_reference and cuda and not 1000 and not 4100" 2>&1 | tail -6 > "$OUT/memcheck.log"
  echo "memcheck rc=${PIPESTATUS[0]}"; tail -4 "$OUT/memcheck.log"
fi

if [ "${PROFILE:-0}" = 2 ]; then
  echo "== Nsight Compute: stall sampling of the forward and dx kernels (G=32)"
  timeout 200 ncu --clock-control none -k regex:'gsl_(fwd|dx)_sm90' --launch-skip 2 --launch-count 2 \
    --section WarpStateStats --section SourceCounters --print-details all \
    python3 bench/profile_sm90.py --G 32 > "$OUT/ncu_stalls_G32.txt" 2>&1
  echo "ncu rc=$?"
fi
if [ "${PROFILE:-0}" = 1 ]; then
  echo "== Nsight Compute: one launch of each Hopper kernel"
  for G in ${PROFILE_G:-32 128}; do
    timeout 240 ncu --clock-control none -k regex:'gsl_.*_sm90' --launch-skip 3 --launch-count 3 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
      --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
      --section InstructionStats --section SourceCounters \
      python3 bench/profile_sm90.py --G $G > "$OUT/ncu_G$G.txt" 2>&1
    echo "ncu G=$G rc=$?"; grep -E "gsl_|Duration|Memory Throughput|Compute \(SM\) Throughput" "$OUT/ncu_G$G.txt" | head -20
  done
fi

echo "== benchmarks"
[ "${BENCH:-1}" = 0 ] && MODE=tests
case "$MODE" in
  tests) echo "(skipped: tests only)" ;;
  sm90|quick)
    timeout 200 python3 bench/bench_group_sparse.py --B 512 --K 128 --G 32,64,128 --L 131072,670091,670208 \
      --compare-generic --out "$OUT/group_sparse.json" 2>&1 | tee "$OUT/bench.log" | tail -30 ;;
  full)
    timeout 540 python3 bench/bench_group_sparse.py --B 128,256,512,1024 --K 64,128,256 --G 32,64,128 \
      --L 131072,670091,2812281 --out "$OUT/group_sparse.json" 2>&1 | tee "$OUT/bench.log" | tail -40 ;;
esac
