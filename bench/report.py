#!/usr/bin/env python3
"""Merges the Google Benchmark results and the process harness's figures into
one markdown table (figure | value | baseline (same run) | ratio | target |
met?) on stdout, and one JSON document. Usage:
report.py HEAP_TRACKED.json HEAP_PLAIN.json MICRO.json HARNESS.json OUT.json [HEAP_FORWARD.json HEAP_MINIMAL.json]"""
import json
import re
import sys


# How near the tracker must be to the least-books floor for a row's miss of
# the target to be the floor's: the floor is a simpler interposer, so a
# tracker within this of it has no cheaper way left that the floor shows.
FLOOR_TOLERANCE = 1.05


def heap_row_verdict(t, m, p, plain_times):
    """The ≤ 1.2× target on one malloc row: tracked t, floor m (least CPU time
    over the rounds), plain p (least) and plain's times over the rounds.
    "below this floor" only when the tracker is within FLOOR_TOLERANCE of the
    floor and the floor misses 1.2× by more than the round-to-round spread
    (the floor's least over plain's most still above 1.2)."""
    if t / p <= 1.2:
        return "≤ 1.2× met"
    if t < m:
        return f"≤ 1.2× not met; floor not a lower bound here (tracker {t / m:.2f}× the floor)"
    if t / m <= FLOOR_TOLERANCE and m / max(plain_times) > 1.2:
        return f"≤ 1.2× is below this floor (tracker {t / m:.2f}× the floor; floor over plain's slowest round {m / max(plain_times):.2f}×)"
    return f"≤ 1.2× not met (tracker {t / m:.2f}× the floor)"


def load_gbench(path):
    with open(path) as f:
        data = json.load(f)
    return {b["name"]: b for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration"}, data.get("context", {})


def met(target, value, ratio):
    if not target:
        return ""
    m = re.fullmatch(r"(ratio|value)(<=|>=|<)(-?[0-9.]+)", target)
    if not m:
        return "?"
    x = ratio if m.group(1) == "ratio" else value
    if x is None:
        return "?"
    limit = float(m.group(3))
    ok = {"<=": x <= limit, ">=": x >= limit, "<": x < limit}[m.group(2)]
    return "yes" if ok else "**no**"


def fmt(x, unit=""):
    if x is None:
        return "—"
    if unit == "µs" and x >= 10000:
        return f"{x / 1000:.1f} ms"
    if abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return f"{s} {unit}".strip()


def main():
    tracked, context = load_gbench(sys.argv[1])
    plain, _ = load_gbench(sys.argv[2])
    micro, _ = load_gbench(sys.argv[3])
    forward, _ = load_gbench(sys.argv[6]) if len(sys.argv) > 6 else ({}, {})
    minimal, _ = load_gbench(sys.argv[7]) if len(sys.argv) > 7 else ({}, {})
    with open(sys.argv[4]) as f:
        harness = json.load(f)
    rows = []
    # Worst and best ratio of `ours` over `base` across the malloc/new loops
    # (sizes and thread counts, CPU time): one row for the worst.
    def worst_row(ours, base, key, figure, baseline_label, target):
        ratios = [(ours[n]["cpu_time"] / base[n]["cpu_time"], n) for n in ours
                  if n.startswith(("BM_MallocFree/", "BM_NewDelete/")) and n in base]
        if not ratios:
            return False
        n = max(ratios)[1]
        best = min(ratios)
        rows.append({"key": key, "figure": figure, "unit": "ns", "value": ours[n]["cpu_time"],
                     "baseline": base[n]["cpu_time"], "baseline_label": baseline_label, "target": target,
                     "note": f"{n}; best {best[0]:.2f}× ({best[1]})"})
        return True

    worst_row(tracked, plain, "tracked_malloc_worst",
              "tracked malloc/free, new/delete in module scope, 1–2 threads, 16 B–4 KiB: worst",
              "same loop, plain process", "ratio<=1.2")
    # The same loops through a bare interposer that forwards to glibc: what
    # interposing at all costs (no trailer, no books).
    worst_row(forward, plain, "interposer_forward_worst",
              "  floor: a bare interposer that forwards to glibc (no trailer, no books): worst",
              "same loop, plain process", "")
    # ... and through one that keeps the least books the features need: the
    # floor of tracking at all, and the tracker against it.
    if worst_row(minimal, plain, "interposer_least_books_worst",
                 "  floor: a bare interposer with the least books (the running module, trailer, the thread's table entry, counters, owner check; no sites, walk handshake, validation, double-free detection or fork handling): worst",
                 "same loop, plain process", ""):
        worst_row(tracked, minimal, "tracked_over_least_books_worst", "  tracked malloc against that floor: worst",
                  "same loop, bare interposer with the least books", "")
        # Every row: tracked against the floor, with both against the plain
        # loop and the spread of the tracked rounds (least–most CPU time).
        for n in tracked:
            if not n.startswith(("BM_MallocFree/", "BM_NewDelete/")) or n not in minimal or n not in plain:
                continue
            t, m, p = tracked[n]["cpu_time"], minimal[n]["cpu_time"], plain[n]["cpu_time"]
            spread = tracked[n].get("relib_cpu_times", [t])
            fwd = f", bare forwarder {forward[n]['cpu_time'] / p:.2f}×" if n in forward else ""
            verdict = heap_row_verdict(t, m, p, plain[n].get("relib_cpu_times", [p]))
            rows.append({"key": f"tracked_over_least_books/{n}", "figure": f"    {n}: tracked against the floor",
                         "unit": "ns", "value": t, "baseline": m,
                         "baseline_label": "least-books floor", "target": "",
                         "note": f"plain {p:.2f} ns: tracked {t / p:.2f}×, floor {m / p:.2f}×{fwd}; {verdict}; "
                                 f"tracked over {len(spread)} rounds {min(spread):.2f}–{max(spread):.2f} ns"})
    # The clock the loops got (bench/heap_bench.cc BM_ClockProbe: one dependent
    # add per cycle), over every binary and round: a spread here is the
    # machine's, not the code's.
    for threads in (1, 2):
        n = f"BM_ClockProbe/threads:{threads}"
        periods = [t / 1000 for d in (tracked, plain, forward, minimal) if n in d
                   for t in d[n].get("relib_cpu_times", [d[n]["cpu_time"]])]
        if periods:
            rows.append({"key": f"clock_probe/threads:{threads}",
                         "figure": f"  the machine: CPU time of one cycle (a dependent add), {threads} thread{'s' if threads > 1 else ''}, least of every binary's rounds",
                         "unit": "ns", "value": min(periods), "baseline": None, "baseline_label": "", "target": "",
                         "note": f"{1 / min(periods):.2f} GHz; most {max(periods):.3f} ns ({1 / max(periods):.2f} GHz) over {len(periods)} runs"})
    host = [(tracked[n]["cpu_time"] / plain[n.replace("BM_MallocFreeHostScope", "BM_MallocFree") + "/threads:1"]["cpu_time"], n)
            for n in tracked if n.startswith("BM_MallocFreeHostScope/")
            and n.replace("BM_MallocFreeHostScope", "BM_MallocFree") + "/threads:1" in plain]
    if host:
        n = max(host)[1]
        rows.append({"key": "interposed_malloc_host_worst", "figure": "  floor: interposed malloc/free in host scope (8-byte trailer, no books): worst",
                     "unit": "ns", "value": tracked[n]["cpu_time"],
                     "baseline": plain[n.replace("BM_MallocFreeHostScope", "BM_MallocFree") + "/threads:1"]["cpu_time"],
                     "baseline_label": "same loop, plain process", "target": "", "note": n})
    books = [(plain[n]["cpu_time"] / plain[n.replace("BM_MinimalBooks", "BM_MallocFree") + "/threads:1"]["cpu_time"], n)
             for n in plain if n.startswith("BM_MinimalBooks/")
             and n.replace("BM_MinimalBooks", "BM_MallocFree") + "/threads:1" in plain]
    if books:
        n = max(books)[1]
        rows.append({"key": "minimal_books_worst", "figure": "  floor: the least bookkeeping the features need, inlined in the plain loop (trailer, table entry, counters, owner check; no call layer): worst",
                     "unit": "ns", "value": plain[n]["cpu_time"],
                     "baseline": plain[n.replace("BM_MinimalBooks", "BM_MallocFree") + "/threads:1"]["cpu_time"],
                     "baseline_label": "same loop, plain process", "target": "", "note": n})
    if "BM_ReadMappingsParsed" in micro and "BM_ReadMappingsRaw" in micro:
        p, r = micro["BM_ReadMappingsParsed"], micro["BM_ReadMappingsRaw"]
        rows.append({"key": "proc_maps_parse", "figure": f"/proc/self/maps read + parse ({int(p.get('lines', 0))} lines)",
                     "unit": "µs", "value": p["cpu_time"] / 1000, "baseline": r["cpu_time"] / 1000,
                     "baseline_label": "read alone, nothing parsed (the kernel's floor)", "target": "", "note": ""})
    if "BM_CopyDlopenDlclose" in micro:
        rows.append({"key": "copy_dlopen_micro", "figure": "copy + dlopen + dlsym + dlclose, small module (Google Benchmark)",
                     "unit": "µs", "value": micro["BM_CopyDlopenDlclose"]["real_time"], "baseline": None,
                     "baseline_label": "", "target": "", "note": ""})
    rows.extend(harness["figures"])

    print("| figure | value | baseline (same run) | ratio | target | met? |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        value, baseline = row["value"], row.get("baseline")
        ratio = value / baseline if baseline else None
        row["ratio"] = ratio
        row["met"] = met(row.get("target", ""), value, ratio)
        base = "—" if baseline is None else f"{fmt(baseline, row['unit'])} ({row['baseline_label']})"
        target = row.get("target", "")
        target_text = re.sub(r"^ratio", "", target).replace("<=", "≤ ").replace(">=", "≥ ").replace("value", "")
        if target.startswith("ratio"):
            target_text += "×"
        elif target:
            target_text += " " + row["unit"]
        note = f" ({row['note']})" if row.get("note") else ""
        print(f"| {row['figure']}{note} | {fmt(value, row['unit'])} | {base} | "
              f"{'—' if ratio is None else f'{ratio:.2f}×'} | {target_text or '—'} | {row['met'] or '—'} |")
    with open(sys.argv[5], "w") as f:
        json.dump({"scale": harness.get("scale"), "context": context, "figures": rows}, f, indent=1)


if __name__ == "__main__":
    main()
