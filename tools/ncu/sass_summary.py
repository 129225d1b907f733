#!/usr/bin/env python3
"""sass_summary: where a kernel's instructions and stalls go, from Nsight Compute's source page.

Input: the CSV of `ncu -i REPORT --page source --csv --print-source sass`, for a report taken with
`--set full --import-source yes` (scripts/gpu-suite.sh sass makes one). For every kernel in the file it
prints the warp instructions executed by opcode (share of all, and share of the warp-stall samples taken
on them), the stall reasons over all samples, and the instructions with the most samples: which part of a
kernel is worth shortening, and what its warps wait on. Plain Python (csv), no packages.
"""
import argparse
import collections
import csv
import sys


def number(text):
    try:
        return int(text.replace(",", ""))
    except ValueError:
        return 0


def opcode(source):
    """The opcode of one SASS line, without its predicate and modifiers: '@!P0 LDGSTS.E.128 ...' -> LDGSTS."""
    words = source.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else "?"


def kernels(rows):
    """Splits the file into (kernel name, header, data rows): each kernel starts with a "Kernel Name" line."""
    name, header, data = None, None, []
    for row in rows:
        if row and row[0] == "Kernel Name":
            if header:
                yield name, header, data
            name, header, data = row[1] if len(row) > 1 else "?", None, []
        elif header is None and row and row[0] == "Address":
            header = row
        elif header is not None:
            data.append(row)
    if header:
        yield name, header, data


def summarise(name, header, data, top, out):
    col = {h: i for i, h in enumerate(header)}
    for needed in ("Source", "Instructions Executed", "Warp Stall Sampling (All Samples)"):
        if needed not in col:
            raise SystemExit(f"sass_summary: no '{needed}' column; take the report with --set full --import-source yes")
    src, execd, samp = col["Source"], col["Instructions Executed"], col["Warp Stall Sampling (All Samples)"]
    address = col.get("Address", 0)
    stall_cols = [(i, h[len("stall_"):]) for i, h in enumerate(header) if h.startswith("stall_") and "Not Issued" not in h]
    by_op, samples_by_op, stalls = collections.Counter(), collections.Counter(), collections.Counter()
    lines = []
    for row in data:
        if len(row) <= max(src, execd, samp):
            continue
        n, s, op = number(row[execd]), number(row[samp]), opcode(row[src])
        by_op[op] += n
        samples_by_op[op] += s
        for i, reason in stall_cols:
            if i < len(row):
                stalls[reason] += number(row[i])
        lines.append((s, n, row[address], row[src]))
    total, total_samples = sum(by_op.values()), sum(samples_by_op.values())
    print(f"## {name}\n", file=out)
    print(f"{total:,} warp instructions executed, {total_samples:,} warp-stall samples\n", file=out)
    print("| opcode | executed | share | share of samples |\n|---|---:|---:|---:|", file=out)
    for op, n in by_op.most_common(top):
        print(f"| {op} | {n:,} | {100 * n / max(total, 1):.1f}% | {100 * samples_by_op[op] / max(total_samples, 1):.1f}% |",
              file=out)
    print("\n| stall reason | samples | share |\n|---|---:|---:|", file=out)
    for reason, n in stalls.most_common(top):
        if n:
            print(f"| {reason} | {n:,} | {100 * n / max(total_samples, 1):.1f}% |", file=out)
    print("\n| address | samples | executed | instruction |\n|---|---:|---:|---|", file=out)
    for s, n, addr, text in sorted(lines, key=lambda x: -x[0])[:top]:
        print(f"| {addr} | {s:,} | {n:,} | `{' '.join(text.split())}` |", file=out)
    print(file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu --page source --csv --print-source sass output")
    ap.add_argument("--top", type=int, default=20, help="rows per table")
    args = ap.parse_args()
    with open(args.csv, newline="") as f:
        found = False
        for name, header, data in kernels(csv.reader(f)):
            summarise(name, header, data, args.top, sys.stdout)
            found = True
    if not found:
        raise SystemExit(f"sass_summary: {args.csv} holds no kernel's source page (expected ncu's --page source --csv)")


if __name__ == "__main__":
    main()
