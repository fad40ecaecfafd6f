#!/usr/bin/env python3
"""Merges Google Benchmark JSON files of the same binary, run in interleaved
rounds, into one: each benchmark keeps its run with the least CPU time. The
machine is shared (a VM whose neighbours come and go): a round slowed by them
says nothing about the code, and every binary (tracked, plain, floors) gets the
same treatment, so ratios between them stay fair. Usage:
min_of_rounds.py OUT.json ROUND1.json [ROUND2.json ...]"""
import json
import sys


def main():
    out, rounds = sys.argv[1], sys.argv[2:]
    merged, order, context = {}, [], {}
    for path in rounds:
        with open(path) as f:
            data = json.load(f)
        context = context or data.get("context", {})
        for b in data["benchmarks"]:
            if b.get("run_type", "iteration") != "iteration":
                continue
            name = b["name"]
            if name not in merged:
                order.append(name)
                merged[name] = b
            elif b["cpu_time"] < merged[name]["cpu_time"]:
                merged[name] = b
    context["relib_rounds"] = len(rounds)
    with open(out, "w") as f:
        json.dump({"context": context, "benchmarks": [merged[n] for n in order]}, f, indent=1)


if __name__ == "__main__":
    main()
