#!/bin/sh
# Smoke test of scripts/bench's heap part: bench/heap_rounds.py over the four heap binaries (one round, tiny
# counts) and bench/report.py's malloc rows from what it wrote. Usage: heap_report_smoke.sh SOURCE_DIR BIN_DIR OUT_DIR
set -eu
src=$1 bin=$2 out=$3
mkdir -p "$out"
python3 "$src/bench/heap_rounds.py" --bin "$bin" --out "$out" --rounds 1 --min-time 0.001 \
  heap_tracked heap_plain heap_forward heap_minimal
echo '{"benchmarks": []}' > "$out/micro.json"
echo '{"scale": "smoke", "figures": []}' > "$out/harness.json"
python3 "$src/bench/report.py" "$out/heap_tracked.json" "$out/heap_plain.json" "$out/micro.json" "$out/harness.json" \
  "$out/report.json" "$out/heap_forward.json" "$out/heap_minimal.json" > "$out/report.md"
# Every malloc row against the floor is there, each with a verdict.
rows=$(grep -c 'tracked against the floor' "$out/report.md" || true)
verdicts=$(grep 'tracked against the floor' "$out/report.md" | grep -c '≤ 1.2× \(met\|not met\|is below this floor\)' || true)
echo "heap_report_smoke: $rows rows against the floor, $verdicts with a verdict"
[ "$rows" -gt 0 ] && [ "$rows" -eq "$verdicts" ]
