#!/usr/bin/env python3
"""Where a replayed CUDA graph's time goes, from kernel_trace's CSV.

Takes the graph launch that recurs most often with the same number of kernels (a decode step), keeps the
last --steps of them, and for each kernel of the step prints its time on the critical path: from the end
of the kernel before it to its own end ("adds"), beside its own start-to-end ("runs", which with
programmatic dependent launch includes the time it waited). Rows are grouped by kernel name, so a layer's
kernels add up over the layers.

    python3 tools/kernel_trace/summarize.py trace.csv [--steps 50] [--by position] [--dram dram.csv]

With --dram (the DRAM samples dram_sampler.cpp took in the same process), it keeps the steps inside the
sampled window and adds what the DRAM moved: the GB/s while each kernel was on the critical path, and a
layer's profile, averaged over every layer of those steps (--anchor names the kernel a layer starts
after), bin by bin, with the kernels' mean ends marked. The two clocks are checked against each other: the
offset that leaves the fewest bytes outside the steps is printed and applied.
"""
import argparse
import bisect
import collections
import csv
import re
import statistics


EPILOGUES = ["QkvRope", "Swiglu", "AddF32", "StoreF32", "ArgmaxF32"]  # gemv.h's GemvEpilogue, in order


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
    name = re.sub(r"\(llm::cuda::GemvEpilogue\)(\d+)",
                  lambda m: EPILOGUES[int(m.group(1))] if int(m.group(1)) < len(EPILOGUES) else m.group(0), name)
    return name if len(name) <= 110 else name[:107] + "..."


def label(name):
    """A kernel's name in a few words: a product's epilogue, else the name before its template arguments."""
    epilogue = re.search("|".join(EPILOGUES), name)
    return epilogue.group(0) if epilogue else name.split("<")[0][:40]


def read(path, what):
    """The open file, or an exit naming it and what it should have been."""
    try:
        return open(path)
    except OSError as e:
        raise SystemExit(f"{path}: cannot read {what}: {e.strerror}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=50, help="the last this many graph launches")
    ap.add_argument("--by", choices=["name", "position"], default="name")
    ap.add_argument("--dram", help="dram_sampler's CSV from the same run")
    ap.add_argument("--anchor", default="QkvRope", help="regex: the kernel whose end starts a layer (--dram)")
    ap.add_argument("--bin", type=float, default=0.5, help="us a bin of the layer profile (--dram)")
    ap.add_argument("--dram-offset", type=float, help="us to add to the sample clock, instead of the fitted one")
    ap.add_argument("--bandwidth", type=float, help="GB/s that count as 100%% (--dram), e.g. the copy bandwidth")
    args = ap.parse_args()

    launches = collections.defaultdict(list)
    for row in csv.DictReader(read(args.csv, "kernel_trace's CSV")):
        if row["graph"] == "0":
            continue
        launches[int(row["correlation"])].append(
            (int(row["start_ns"]), int(row["end_ns"]), short(row["name"]), int(row["grid"]), int(row["block"])))
    if not launches:
        raise SystemExit("no graph-launched kernels in " + args.csv)
    dram = None
    if args.dram:  # only the launches inside the sampled window
        dram = Dram(args.dram)
        launches = {c: k for c, k in launches.items()
                    if min(k)[0] >= dram.first and max(e for _, e, *_ in k) <= dram.last}
        if not launches:
            raise SystemExit(f"no graph launch lies inside the DRAM samples of {args.dram}")
    sizes = collections.Counter(len(k) for k in launches.values())
    size = max(sizes, key=lambda s: (sizes[s], s))
    steps = [sorted(k) for c, k in sorted(launches.items()) if len(k) == size][-args.steps:]

    spans = [s[-1][1] - s[0][0] for s in steps]
    gaps = [b[0][0] - a[-1][1] for a, b in zip(steps, steps[1:])]
    print(f"{len(steps)} steps of {size} kernels (of {len(launches)} graph launches); "
          f"step from first start to last end: median {statistics.median(spans) / 1e3:.1f} us; "
          f"gap to the next step's first kernel: median {statistics.median(gaps) / 1e3 if gaps else 0:.1f} us")

    if dram:
        fit_offset(dram, steps, args)
    rows = collections.OrderedDict()
    for s in steps:
        prev_end = s[0][0]
        for i, (start, end, name, grid, block) in enumerate(s):
            key = (i, name) if args.by == "position" else name
            r = rows.setdefault(key, {"adds": [], "runs": [], "gap": [], "n": 0, "grid": grid, "block": block})
            r["adds"].append(end - prev_end)
            r["runs"].append(end - start)
            r["gap"].append(start - prev_end)
            if dram:  # what the DRAM moved while this kernel was on the critical path
                r.setdefault("moved", []).append(dram.integral(prev_end, end) if end > prev_end else 0.0)
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
    if dram:
        dram_report(dram, steps, rows, args)


class Dram:
    """DRAM samples: bytes (every column named *bytes*) over [start, end) intervals; integral() over any span."""

    def __init__(self, path):
        rows = list(csv.DictReader(read(path, "dram_sampler's CSV (its stderr says why none was written)")))
        if not rows:
            raise SystemExit(f"{path}: no samples")
        cols = [c for c in rows[0] if "bytes" in c]
        if not cols:
            raise SystemExit(f"{path}: no column of bytes (got {list(rows[0])})")
        self.cols = cols
        samples = [x for x in sorted((int(r["start_ns"]), int(r["end_ns"]), sum(float(r[c]) for c in cols))
                                     for r in rows) if x[1] > x[0]]
        # The first sample can span the time from set-up to the start: any far longer than most says little.
        usual = statistics.median(e - s for s, e, _ in samples)
        self.samples = [x for x in samples if x[1] - x[0] <= 10 * usual]
        if not self.samples:
            raise SystemExit(f"{path}: no samples")
        self.starts = [x[0] for x in self.samples]
        self.cum = [0.0]
        for _, _, b in self.samples:
            self.cum.append(self.cum[-1] + b)
        self.first, self.last = self.samples[0][0], self.samples[-1][1]
        self.offset = 0
        self.interval = statistics.median(e - s for s, e, _ in self.samples)

    def _upto(self, t):
        t -= self.offset
        i = bisect.bisect_right(self.starts, t) - 1
        if i < 0:
            return 0.0
        s, e, b = self.samples[i]
        return self.cum[i] + b * min(1.0, (t - s) / (e - s))

    def integral(self, a, b):
        """Bytes moved in [a, b] (ns on the kernel clock), each sample's bytes spread evenly over it."""
        return self._upto(b) - self._upto(a)

    def align(self, steps, step_ns=250):
        """The offset of the sample clock that leaves the fewest bytes outside the steps' spans, within half
        a step's period (a whole period off fits as well but for the window's edges) and nearest 0 on ties."""
        spans = [(st[0][0], st[-1][1]) for st in steps]
        lo, hi = spans[0][0], spans[-1][1]
        period = statistics.median(b[0] - a[0] for a, b in zip(spans, spans[1:])) if len(spans) > 1 else hi - lo
        search = min(200_000, int(period / 2)) // step_ns * step_ns
        total = self.integral(lo, hi) or 1.0

        def outside(off):
            self.offset = off
            return (self.integral(lo, hi) - sum(self.integral(a, b) for a, b in spans)) / total

        at_zero = outside(0)
        best = min(range(-search, search + 1, step_ns), key=lambda off: (round(outside(off), 4), abs(off)))
        return best, at_zero, outside(best)


def fit_offset(dram, steps, args):
    """Sets dram.offset. Both clocks are CUPTI's, so 0 is the expected offset; the fit only checks it (its
    optimum is flat over the span the steps' edges leave), and replaces it where 0 leaves clearly more
    bytes outside the steps."""
    fitted, out0, out_best = dram.align(steps)
    dram.offset = int(args.dram_offset * 1e3) if args.dram_offset is not None else 0 if out0 - out_best < 0.005 else fitted
    dram.fit = (fitted, out0, out_best)


def dram_report(dram, steps, rows, args):
    fitted, out0, out_best = dram.fit
    n = len(steps)
    span = sum(st[-1][1] - st[0][0] for st in steps) / n
    moved = sum(dram.integral(st[0][0], st[-1][1]) for st in steps) / n
    pct = (lambda gbs: f" ({gbs / args.bandwidth:.0%})") if args.bandwidth else (lambda gbs: "")
    print()
    print(f"DRAM ({' + '.join(dram.cols)}), samples of {dram.interval / 1e3:.2f} us, the sample clock offset by "
          f"{dram.offset / 1e3:+.2f} us (the offset that leaves the fewest bytes outside the steps: "
          f"{fitted / 1e3:+.2f} us, {out_best:.1%} of them outside, against {out0:.1%} at 0). A step moves "
          f"{moved / 1e9:.3f} GB in {span / 1e3:.1f} us: {moved / span:.0f} GB/s{pct(moved / span)}.")
    print()
    print("| kernel | adds, us each | DRAM GB/s while it adds | MB moved then, each |")
    print("|---|---:|---:|---:|")
    for key, r in rows.items():
        name = f"{key[0]}: {key[1]}" if args.by == "position" else key
        ns = sum(max(0, a) for a in r["adds"])
        gbs = sum(r["moved"]) / ns if ns else 0
        print(f"| {name} | {ns / len(r['adds']) / 1e3:.2f} | {gbs:.0f}{pct(gbs)} | "
              f"{sum(r['moved']) / len(r['moved']) / 1e6:.2f} |")

    # A layer's profile: every layer from one anchor's end to the next, bins from 2 us before.
    anchor = re.compile(args.anchor)
    width = int(args.bin * 1e3)
    before = 2000
    bins = collections.defaultdict(lambda: [0.0, 0])
    ends = collections.defaultdict(list)
    layers = 0
    pairs = [(st, a, b) for st in steps for at in [[i for i, k in enumerate(st) if anchor.search(k[2])]]
             for a, b in zip(at, at[1:])]
    lengths = collections.Counter(b - a for _, a, b in pairs)
    usual = max(lengths, key=lengths.get) if lengths else 0
    for st, a, b in pairs:
        if b - a == usual:  # not the step's boundary (the classifier, the next embedding) between two layers
            t0, t1 = st[a][1], st[b][1]
            layers += 1
            for j in range(a + 1, b + 1):
                ends[(j - a, st[j][2])].append(st[j][1] - t0)
            for k, t in enumerate(range(t0 - before, t1, width)):
                bins[k][0] += dram.integral(t, t + width)
                bins[k][1] += 1
    if not layers:
        print(f"\nno two kernels matching --anchor {args.anchor!r} in a step: no layer profile")
        return
    marks = collections.defaultdict(list)
    for (j, name), v in ends.items():
        marks[int((statistics.mean(v) + before) // width)].append(f"{label(name)} ends")
    peak = args.bandwidth or max(b / (c * width) for b, c in bins.values())
    print()
    print(f"A layer, {layers} of them: DRAM GB/s a {args.bin:g} us bin, from {before / 1e3:g} us before the end of "
          f"{args.anchor!r} (bins that fewer than half the layers reach are left out)")
    print()
    print("| us | GB/s | | kernels' mean ends |")
    print("|---:|---:|---|---|")
    for k in sorted(bins):
        b, c = bins[k]
        if c < layers / 2:
            continue
        gbs = b / (c * width)
        bar = "#" * max(0, round(20 * gbs / peak))
        print(f"| {(k * width - before) / 1e3:.1f} | {gbs:.0f} | {bar} | {'; '.join(marks.get(k, []))} |")


if __name__ == "__main__":
    main()
