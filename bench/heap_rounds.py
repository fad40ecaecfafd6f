#!/usr/bin/env python3
"""Runs the heap loops (tracked, plain and the floor interposers) interleaved
benchmark by benchmark, in rounds, and writes one Google Benchmark JSON per
binary in which each benchmark keeps its least CPU time over the rounds.

The machine is shared (a VM whose neighbours come and go): a slice of time
slowed by them says nothing about the code. Each benchmark of every binary is
run in every round, the binaries one right after the other (seconds apart,
their order rotated each round), so the figures a ratio divides come from the
same moments; the least of several short runs is the figure least disturbed,
and every binary gets the same treatment. Each benchmark also records all its
rounds' CPU times (relib_cpu_times) to show the spread.

Usage: heap_rounds.py --bin DIR --out DIR [--rounds N] [--min-time SECONDS]
                      BINARY [BINARY ...]   (names like heap_tracked: DIR/relib_bench_<name>)
Writes OUT/<name>.json for each."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

# One benchmark run takes about --min-time seconds (list: instant); one
# still running after this hangs, and scripts/bench says so instead of waiting.
RUN_TIMEOUT_SECONDS = 120


def list_tests(path):
    done = subprocess.run([path, "--benchmark_list_tests=true"], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise SystemExit(f"heap_rounds.py: {path} --benchmark_list_tests: exit status {done.returncode}\n"
                         f"{done.stderr[-2000:]}")
    out = done.stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def run_one(path, name, min_time, scratch):
    out = os.path.join(scratch, "one.json")
    command = [path, f"--benchmark_filter=^{re.escape(name)}$", f"--benchmark_min_time={min_time}",
               f"--benchmark_out={out}", "--benchmark_out_format=json"]
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"heap_rounds.py: {os.path.basename(path)} {name}: no result after {RUN_TIMEOUT_SECONDS} s")
    if done.returncode != 0:
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        raise SystemExit(f"heap_rounds.py: {os.path.basename(path)} {name}: {how}\n{done.stderr[-2000:]}")
    with open(out) as f:
        data = json.load(f)
    runs = [b for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration"]
    return data.get("context", {}), runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", default="0.1")
    parser.add_argument("binaries", nargs="+")
    args = parser.parse_args()

    paths = {b: os.path.join(args.bin, f"relib_bench_{b}") for b in args.binaries}
    tests = {b: list_tests(p) for b, p in paths.items()}
    order = []  # every benchmark name, in the order the binaries list them
    for b in args.binaries:
        order += [n for n in tests[b] if n not in order]
    best = {b: {} for b in args.binaries}
    times = {b: {} for b in args.binaries}
    contexts = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for i, name in enumerate(order):
                have = [b for b in args.binaries if name in tests[b]]
                shift = (round_index + i) % len(have)
                for b in have[shift:] + have[:shift]:
                    context, runs = run_one(paths[b], name, args.min_time, scratch)
                    contexts.setdefault(b, context)
                    for run in runs:
                        times[b].setdefault(run["name"], []).append(run["cpu_time"])
                        kept = best[b].get(run["name"])
                        if kept is None or run["cpu_time"] < kept["cpu_time"]:
                            best[b][run["name"]] = run
    for b in args.binaries:
        context = contexts.get(b, {})
        context["relib_rounds"] = args.rounds
        benchmarks = []
        for name in order:
            if name in best[b]:
                run = best[b][name]
                run["relib_cpu_times"] = times[b][name]
                benchmarks.append(run)
        with open(os.path.join(args.out, f"{b}.json"), "w") as f:
            json.dump({"context": context, "benchmarks": benchmarks}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
