#!/usr/bin/env bash
# Fuzz the native loader with libFuzzer for a bounded time; exit non-zero on any finding.
#
# Installs Debian's clang and its libFuzzer runtime (apt-get, as root, only when clang++ cannot
# link -fsanitize=fuzzer yet), builds runtime/native/fuzz/fuzz_loader.cpp with
# -fsanitize=fuzzer,address,undefined (`python -m runtime.native.build --fuzz`, into
# runtime/native/build-fuzz/), seeds a corpus with the malformed-file corpus of
# tests/test_castml_format.py, the golden file in tests/golden/ and the zoo models saved as
# .castml (plain and ir.optimize'd), then fuzzes for SECONDS (default 60). A crash, leak,
# sanitizer report, timeout or out-of-memory stops the run, leaves the input as
# runtime/native/build-fuzz/crash-* (replay: build-fuzz/castml-fuzz-loader FILE) and fails.
# Past findings (tests/fuzz_regressions/) are seeds too. The mutation sequence follows SEED
# (default 1), so a CI run is repeatable; pass other seeds for wider exploration.
#
# Usage: scripts/fuzz_native.sh [SECONDS [SEED]]   (needs the project installed: pip install -e .[test])
set -euo pipefail

seconds="${1:-60}"
seed="${2:-1}"
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "fuzz_native.sh: SEED must be a non-negative integer, got '$seed'" >&2; exit 2; }
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || { echo "fuzz_native.sh: SECONDS must be a positive integer, got '$seconds'" >&2; exit 2; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python}"
command -v "$python" >/dev/null || python=python3

can_fuzz() {
  command -v clang++ >/dev/null && printf 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }\n' \
    | clang++ -x c++ -fsanitize=fuzzer,address,undefined - -o /dev/null 2>/dev/null
}
if ! can_fuzz; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "fuzz_native.sh: clang++ with libFuzzer is missing; run as root (or: sudo apt-get install -y clang libclang-rt-dev)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y clang libclang-rt-dev || { apt-get update && apt-get install -y clang libclang-rt-dev; }
  can_fuzz || { echo "fuzz_native.sh: clang++ still cannot link -fsanitize=fuzzer" >&2; exit 1; }
fi

fuzzer="$(CC=clang CXX=clang++ "$python" -m runtime.native.build --fuzz)"
work="$root/runtime/native/build-fuzz"
rm -rf "$work/seeds" && mkdir -p "$work/seeds" "$work/corpus"
"$python" - "$work/seeds" <<'EOF'
import importlib, shutil, sys
from pathlib import Path

import numpy as np

import ir
import tracer
from exporters.castml_format import to_bytes
from tests.test_castml_format import MALFORMED, _hand_model

out = Path(sys.argv[1])
for k, (name, (spec, _)) in enumerate(sorted(MALFORMED.items())):
    (out / f"malformed-{k:03d}.castml").write_bytes(spec if isinstance(spec, bytes) else _hand_model(**spec))
shutil.copy(Path("tests/golden/castml_v1.castml"), out / "golden-v1.castml")
for f in sorted(Path("tests/fuzz_regressions").glob("*.castml")):  # past findings, kept as seeds
    shutil.copy(f, out / f"regression-{f.name}")
zoo = {"mlp": ("batch", 784), "lenet": ("batch", 1, 28, 28), "transformer_encoder": ("batch", 128, 256),
       "resnet_tiny": ("batch", 3, 32, 32), "gru": None}
for name, shape in zoo.items():
    fn, (x, params) = importlib.import_module(f"models.zoo.{name}").build(0)
    spec = tracer.TensorSpec(shape, np.float32) if shape else x
    g = tracer.trace(fn, spec, params)
    (out / f"zoo-{name}.castml").write_bytes(to_bytes(g))
    (out / f"zoo-{name}-optimized.castml").write_bytes(to_bytes(ir.optimize(g)))
print(f"fuzz_native.sh: {len(list(out.iterdir()))} seed files", file=sys.stderr)
EOF

# -max_len: the zoo seeds are up to ~40 KB; mutations may grow them a little
set +e
(cd "$work" && ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1" UBSAN_OPTIONS="print_stacktrace=1" \
  "$fuzzer" -max_total_time="$seconds" -seed="$seed" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
  corpus seeds 2>&1 | tee fuzz.log | grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)')
rc="${PIPESTATUS[0]}"
set -e
execs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$work/fuzz.log" | grep -oE '[0-9]+$' || true)"
if [[ "$rc" -ne 0 ]]; then
  echo "fuzz_native.sh: FINDING (libFuzzer exit $rc after ${execs:-?} runs); see $work/fuzz.log and $work/crash-*" >&2
  exit 1
fi
echo "fuzz_native.sh: no findings in ${seconds} s (${execs:-?} runs)"
