#!/usr/bin/env python3
"""Where a replayed CUDA graph's time goes, from kernel_trace's CSV.

Takes the graph launch that recurs most often with the same number of kernels (a decode step), keeps the
last --steps of them, and for each kernel of the step prints its time on the critical path: from the end
of the kernel before it to its own end ("adds"), beside its own start-to-end ("runs", which with
programmatic dependent launch includes the time it waited). Rows are grouped by kernel name, so a layer's
kernels add up over the layers.

    python3 tools/kernel_trace/summarize.py trace.csv [--steps 50] [--by position]
"""
import argparse
import collections
import csv
import re
import statistics


def short(name):
    """The kernel's name without its argument list, template arguments kept short."""
    if name.endswith(")"):  # drop the parameter list: the parentheses balanced from the end
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    name = re.sub(r"^void ", "", name.replace("(anonymous namespace)::", ""))
    epilogues = ["QkvRope", "Swiglu", "AddF32", "StoreF32", "ArgmaxF32"]  # gemv.h's GemvEpilogue, in order
    name = re.sub(r"\(llm::cuda::GemvEpilogue\)(\d+)",
                  lambda m: epilogues[int(m.group(1))] if int(m.group(1)) < len(epilogues) else m.group(0), name)
    return name if len(name) <= 110 else name[:107] + "..."


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=50, help="the last this many graph launches")
    ap.add_argument("--by", choices=["name", "position"], default="name")
    args = ap.parse_args()

    launches = collections.defaultdict(list)
    for row in csv.DictReader(open(args.csv)):
        if row["graph"] == "0":
            continue
        launches[int(row["correlation"])].append(
            (int(row["start_ns"]), int(row["end_ns"]), short(row["name"]), int(row["grid"]), int(row["block"])))
    if not launches:
        raise SystemExit("no graph-launched kernels in " + args.csv)
    sizes = collections.Counter(len(k) for k in launches.values())
    size = max(sizes, key=lambda s: (sizes[s], s))
    steps = [sorted(k) for c, k in sorted(launches.items()) if len(k) == size][-args.steps:]

    spans = [s[-1][1] - s[0][0] for s in steps]
    gaps = [b[0][0] - a[-1][1] for a, b in zip(steps, steps[1:])]
    print(f"{len(steps)} steps of {size} kernels (of {len(launches)} graph launches); "
          f"step from first start to last end: median {statistics.median(spans) / 1e3:.1f} us; "
          f"gap to the next step's first kernel: median {statistics.median(gaps) / 1e3 if gaps else 0:.1f} us")

    rows = collections.OrderedDict()
    for s in steps:
        prev_end = s[0][0]
        for i, (start, end, name, grid, block) in enumerate(s):
            key = (i, name) if args.by == "position" else name
            r = rows.setdefault(key, {"adds": [], "runs": [], "gap": [], "n": 0, "grid": grid, "block": block})
            r["adds"].append(end - prev_end)
            r["runs"].append(end - start)
            r["gap"].append(start - prev_end)
            prev_end = max(prev_end, end)
    n = len(steps)
    total = statistics.median(spans)
    print()
    print("| kernel | grid x block | per step | adds, us a step | share | adds, us each | runs, us each | "
          "starts after the one before ended, us |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key, r in rows.items():
        name = f"{key[0]}: {key[1]}" if args.by == "position" else key
        count = len(r["adds"]) / n
        adds = sum(r["adds"]) / n
        print(f"| {name} | {r['grid']} x {r['block']} | {count:.0f} | {adds / 1e3:.1f} | {adds / total:.0%} | "
              f"{statistics.mean(r['adds']) / 1e3:.2f} | {statistics.mean(r['runs']) / 1e3:.2f} | "
              f"{statistics.mean(r['gap']) / 1e3:.2f} |")


if __name__ == "__main__":
    main()
