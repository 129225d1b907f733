#!/usr/bin/env python3
"""Nsight Compute details pages (`ncu -i REPORT --page details`, as `gpu-suite.sh sass` writes them) side by
side: one column per kernel launch, one row per metric of the chosen sections. Made to set our kernel
beside another (cuDNN's decode, say) metric by metric.

    python3 tools/ncu/details_compare.py PAGE [PAGE ...] [--sections all|NAME,NAME,...]

Every kernel launch in every page becomes a column, in order. Metrics a launch lacks show as "-".
"""

import argparse
import re
import sys

DEFAULT_SECTIONS = ("GPU Speed Of Light Throughput", "Memory Workload Analysis", "Scheduler Statistics",
                    "Warp State Statistics", "Instruction Statistics", "Launch Statistics", "Occupancy")
# A launch's header: "  void ns::kernel<...>(args) (132, 1, 1)x(384, 1, 1), Context 1, Stream 13, ..."
LAUNCH = re.compile(r"^  (\S.*?) \((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\)")
SECTION = re.compile(r"^    Section: (.+?)\s*$")
DASHES = re.compile(r"^    (-+ )+-+\s*$")


def short_name(signature):
    """The kernel's name with its template arguments, without return type, namespaces or parameters."""
    text = signature.replace("(anonymous namespace)", "anon")
    text = re.sub(r"\([^()]*\)$", "", text)  # the parameter list
    text = re.sub(r"^void ", "", text)
    name, _, args = text.partition("<")
    return name.split("::")[-1] + ("<" + args if args else "")


def parse(text):
    """[(label, {(section, metric): (unit, value)})] for each launch in a details page. A metric table is a
    rule, the header (Metric Name, Metric Unit, Metric Value), a rule, the rows, a rule; the rules' dashes
    give the columns."""
    launches, metrics, section, spans, state = [], None, None, None, "out"
    for line in text.splitlines():
        m = LAUNCH.match(line)
        if m:
            grid, block = "x".join(m.group(2, 3, 4)), "x".join(m.group(5, 6, 7))
            metrics = {}
            launches.append((f"{short_name(m.group(1))} [{grid} / {block}]", metrics))
            section, state = None, "out"
            continue
        if metrics is None:
            continue
        m = SECTION.match(line)
        if m:
            section, state = m.group(1), "out"
            continue
        rule = [(d.start(), d.end()) for d in re.finditer(r"-+", line)] if DASHES.match(line) else None
        if rule and len(rule) == 3:
            spans = rule
            state = {"out": "header", "header": "rows", "rows": "out"}[state]
            continue
        if state == "rows" and section and line.strip():
            starts = [a for a, _ in spans] + [len(line)]
            cells = [line[starts[i] : starts[i + 1]].strip() for i in range(3)]
            metrics[(section, cells[0])] = (cells[1], cells[2])
    return launches


def render(launches, sections):
    rows = []
    for _, metrics in launches:
        for key in metrics:
            if key not in rows and (sections is None or key[0] in sections):
                rows.append(key)
    if sections is not None:
        order = {s: i for i, s in enumerate(sections)}
        rows.sort(key=lambda k: order[k[0]])  # (stable: each section's metrics keep the page's order)
    lines = ["| section | metric | unit | " + " | ".join(label for label, _ in launches) + " |",
             "|---|---|---|" + "---:|" * len(launches)]
    for section, name in rows:
        unit = next((m[(section, name)][0] for _, m in launches if (section, name) in m), "")
        values = [m.get((section, name), ("", "-"))[1] for _, m in launches]
        lines.append(f"| {section} | {name} | {unit} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("pages", nargs="+", help="ncu details pages (text)")
    ap.add_argument("--sections", default=",".join(DEFAULT_SECTIONS), help="'all' or a comma list of sections")
    args = ap.parse_args(argv[1:])
    launches = []
    for path in args.pages:
        with open(path, errors="replace") as f:
            found = parse(f.read())
        if not found:
            print(f"details_compare: {path} holds no kernel launch's details page", file=sys.stderr)
            return 1
        launches += found
    sections = None if args.sections == "all" else [s.strip() for s in args.sections.split(",") if s.strip()]
    print(render(launches, sections))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
