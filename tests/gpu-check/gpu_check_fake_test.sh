#!/usr/bin/env bash
# tools/gpu-check run whole on this machine against the fake NVIDIA driver
# (fake_libcuda.c as libcuda.so.1, bin/nvidia-smi), with the tiny preset: every
# step that can run here passes (exit 0, no FAILED row), the reference server's
# build checkpoints it through the fake's checkpoint API and each restore
# restores and unlocks it, the torch/transformers steps say "not run: no
# torch", a small budget leaves steps "not run: budget", no process of the run
# is left, and the logs are under --out. Needs root and CRIU (exit 77 without).
#
#   gpu_check_fake_test.sh --build-dir DIR --fake-lib-dir DIR
set -uo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$src/build fake=''
while (($#)); do
  case $1 in
    --build-dir) build=$2; shift 2 ;;
    --fake-lib-dir) fake=$2; shift 2 ;;
    *) echo "gpu_check_fake_test: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -z $fake ]] && fake=$build/tests/gpu-check/fake-cuda
if (($(id -u) != 0)); then echo "gpu_check_fake_test: needs root (CRIU); skipped" >&2; exit 77; fi
command -v criu >/dev/null || { echo "gpu_check_fake_test: no criu; skipped" >&2; exit 77; }
for f in "$fake/libcuda.so.1" "$build/bin/hotboot" "$build/bin/hotboot-server" "$build/bin/hotboot-mkmodel"; do
  [[ -e $f ]] || { echo "gpu_check_fake_test: $f is missing: build it first" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/gpu-check-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# The binaries as they are now: a build relinking them mid-run (a shared
# build directory) does not pull them from under the run.
mkdir -p "$tmp/bin"
for b in hotboot hotboot-server hotboot-mkmodel kernels_gpu_compare; do
  [[ -e $build/bin/$b ]] && cp "$build/bin/$b" "$tmp/bin/"
done
export PATH="$src/tests/gpu-check/bin:$PATH"
export LD_LIBRARY_PATH="$fake${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The reference server is the CUDA process; a checkpoint marks its image
# (fake_libcuda.c, WriteMark), so a restore in any PID namespace finds it.
export HOTBOOT_FAKE_CUDA_DIR=$tmp/fake-cuda HOTBOOT_FAKE_CUDA_COMMS=hotboot-server
export HOTBOOT_FAKE_CUDA_MARK=________________
# engine_server's CPU engine needs NumPy: the first python3 on PATH that has it
# (Debian's python3-numpy, where a pyenv python3 comes first) is the one run.
for py in $(type -ap python3); do
  if "$py" -c 'import numpy' 2>/dev/null; then
    mkdir -p "$tmp/python" && ln -sf "$(command -v "$py")" "$tmp/python/python3"
    export PATH="$tmp/python:$PATH"
    break
  fi
done
have_numpy=0
python3 -c 'import numpy' 2>/dev/null && have_numpy=1
# The weights of the servers this run starts stay out of the node's directory.
export HOTBOOT_WEIGHTS_DIR=$tmp/weights
failures=0
check() {  # check DESCRIPTION COMMAND...: a failed check is reported, and the test goes on
  if "${@:2}"; then echo "ok: $1"; else echo "FAIL: $1" >&2; failures=$((failures + 1)); fi
}
has_row() {  # has_row TABLE LABEL-REGEX TEXT-REGEX
  grep -Eq "^$2 .*$3" "$1"
}
# Processes carrying this test's fake driver directory and a gpu-check run mark.
leftovers() {
  local e pid out=()
  for e in /proc/[0-9]*/environ; do
    pid=${e#/proc/}
    pid=${pid%/environ}
    if { tr '\0' '\n' <"$e"; } 2>/dev/null | grep -q '^HOTBOOT_GPU_CHECK_RUN=' &&
       { tr '\0' '\n' <"$e"; } 2>/dev/null | grep -qx "HOTBOOT_FAKE_CUDA_DIR=$HOTBOOT_FAKE_CUDA_DIR"; then
      out+=("$pid($(cat "/proc/$pid/comm" 2>/dev/null))")
    fi
  done
  echo "${out[*]}"
}
run() {  # run NAME ARGS...: gpu-check with the fakes; its exit status in $rc
  local name=$1
  shift
  local t0=$SECONDS
  "$src/tools/gpu-check" --bin "$tmp/bin" --out "$tmp/$name" "$@" >"$tmp/$name.stdout" 2>"$tmp/$name.stderr"
  rc=$?
  echo "gpu-check $* : exit $rc in $((SECONDS - t0)) s"
}

# 1. Everything within 300 s, on the tiny preset.
run full --big-preset tiny --presets tiny --bench-mib 64 --budget 300
t=$tmp/full/gpu-check.txt
check "exit 0" test "$rc" = 0
check "the table is written" test -s "$t"
check "the table is printed" grep -q '^check ' "$tmp/full.stdout"
check "no FAILED row" bash -c "! grep -n FAILED '$t'"
check "GPU row names the fake H200" has_row "$t" GPU 'NVIDIA H200 \(fake\), 143771 MiB'
check "CRIU row" has_row "$t" CRIU 'check OK'
check "mkmodel row" has_row "$t" 'tiny: hotboot-mkmodel' '[0-9.]+ s for'
check "cold boot row with /metrics phases" has_row "$t" 'tiny: cold boot' 'ms wall to /readyz 200.*boot phases'
check "build row with bytes" has_row "$t" 'tiny: build' 'snapshot [0-9.]+ GiB \(CRIU images'
check "the build checkpointed one CUDA process (fake driver)" has_row "$t" ' *GPU state captured' '1 process\(es\) on NVIDIA H200 \(fake\)'
check "restore from the node cache, verified, with a verdict" \
  has_row "$t" 'tiny: restore, .*node cache' 'ms wall \(target <= 1.0 s: (MET|MISSED)\).*verified'
check "restore on a fresh host, verified, with a verdict" \
  has_row "$t" 'tiny: restore, .*fresh host' 'ms wall \(target <= 2.0 s: (MET|MISSED)\).*verified'
check "where the time goes: restore phases" has_row "$t" ' *where the time goes' 'criu_restore [0-9]+.*gpu_restore [0-9]+.*verify [0-9]+'
check "cold vs restore row" has_row "$t" 'tiny: cold vs restore' 'cold [0-9]+ ms -> restore [0-9]+ ms'
check "weight upload row with its verdict" has_row "$t" 'weight upload' 'vs pinned H2D .*target >= 80%: (MET|MISSED)'
if ((have_numpy)); then
  check "engine_server restored with the cold boot's tokens" \
    has_row "$t" 'engine_server \(cpu\): restore to ready' 'verified.*identical greedy tokens'
  check "engine_server on the CPU: no GPU processes" has_row "$t" 'engine_server: GPU processes' 'covers 0 process'
else
  check "engine_server not run without numpy" has_row "$t" 'engine_server' 'not run: .*no numpy'
fi
# Here torch is missing, or Debian's without CUDA: the torch steps do not run.
check "HF 1b not run without torch" has_row "$t" 'HF transformers 1b' 'not run: no torch/transformers with CUDA here'
check "HF 8b not run without torch" has_row "$t" 'HF transformers 8b' 'not run: no torch/transformers with CUDA here'
check "torch_server not run without torch" has_row "$t" 'torch_server.py' 'not run: no torch with CUDA here'
check "demo row" has_row "$t" 'demo \(tiny\)' 'cold [0-9]+ ms, restore [0-9]+ ms'
check "budget row" has_row "$t" budget 's of 300 s used'
# The fake driver's log: the reference server was locked and checkpointed at
# build, and each of its restores (3 of the ref step, 1 of the demo) restored
# and unlocked it, with nothing refused.
calls=$HOTBOOT_FAKE_CUDA_DIR/calls.log
count() { grep -c "^$1 [0-9]* 0\$" "$calls" 2>/dev/null; }
check "the fake driver checkpointed the server (lock, checkpoint)" \
  test "$(count cuCheckpointProcessLock)" -ge 2 -a "$(count cuCheckpointProcessCheckpoint)" -ge 2
check "the fake driver restored and unlocked it on every restore" \
  test "$(count cuCheckpointProcessRestore)" -ge 3 -a "$(count cuCheckpointProcessUnlock)" -ge 3
check "no checkpoint call refused" bash -c "! grep -v ' 0\$' '$calls'"
for f in step-machine.log step-ref.log criu-check.log ref-mkmodel.log ref-cold.log ref-build.json ref-inspect.json \
         ref-restore-auto-node.json ref-restore-auto-fresh.json bench-gpu.json demo-tiny.json \
         $( ((have_numpy)) && echo engine-build.json engine-restore.json); do
  if [[ $f == ref-restore-auto-* ]] && ! grep -q -- '--gpu-weights' <("$tmp/bin/hotboot" restore --help 2>&1); then
    f=${f/auto/default}
  fi
  check "log $f" test -s "$tmp/full/$f"
done
check "no process of the run left" test -z "$(leftovers)"
check "no scratch left in /dev/shm" bash -c "! ls -d /dev/shm/hotboot-gpu-check.* 2>/dev/null | grep -q ."
if ((failures)); then
  echo "--- the table:" >&2; cat "$t" >&2
  echo "--- gpu-check's stderr (last 40 lines):" >&2; tail -40 "$tmp/full.stderr" >&2
fi

# 2. A budget too small for any step: none starts, each row says why.
run budget --big-preset tiny --presets tiny --budget 5
t=$tmp/budget/gpu-check.txt
check "small budget: exit 0" test "$rc" = 0
check "small budget: machine not run" has_row "$t" machine 'not run: budget \(needs ~10 s, [0-5] s left\)'
check "small budget: reference server not run" has_row "$t" 'tiny: reference server' 'not run: budget'
check "small budget: demo not run" has_row "$t" 'demo \(tiny\)' 'not run: budget'
check "small budget: no step started" bash -c "! compgen -G '$tmp/budget/step-*.log'"

# 3. A driver that fails the checkpoint: the build fails, gpu-check says so
#    (FAILED, exit 1), the next restores are not attempted, nothing is left.
HOTBOOT_FAKE_CUDA_FAIL=cuCheckpointProcessCheckpoint run broken --only ref --big-preset tiny --budget 120
t=$tmp/broken/gpu-check.txt
check "failed checkpoint: exit 1" test "$rc" = 1
check "failed checkpoint: the build's row says FAILED and why" \
  has_row "$t" 'tiny: build' 'FAILED: .*cuCheckpointProcessCheckpoint'
check "failed checkpoint: no restore row" bash -c "! grep -q 'restore,' '$t'"
check "failed checkpoint: the cold boot still measured" has_row "$t" 'tiny: cold boot' 'ms wall to /readyz 200'
check "failed checkpoint: no process of the run left" test -z "$(leftovers)"

# 4. --only, bad arguments, no GPU.
run only --only machine --budget 60
check "--only machine: exit 0" test "$rc" = 0
check "--only machine: the GPU row and nothing of the other steps" \
  bash -c "grep -q '^GPU ' '$tmp/only/gpu-check.txt' && ! grep -Eq '^(tiny|8b|weight upload|engine_server|demo)' '$tmp/only/gpu-check.txt'"
run bad --only nosuch
check "an unknown step: exit 2" test "$rc" = 2
HOTBOOT_FAKE_CUDA_DEVICES=0 run nogpu --budget 60
check "no GPU: exit 77" test "$rc" = 77

if ((failures)); then
  echo "gpu_check_fake_test: $failures check(s) failed (logs were in $tmp)" >&2
  exit 1
fi
echo "gpu_check_fake_test: all checks passed"
