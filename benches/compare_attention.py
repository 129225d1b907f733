#!/usr/bin/env python3
"""Joins attention_bench's table (ours) with torch_attention_bench.py's (SDPA, same call) into one table
with the flash_cuda issue's bars: prefill at least SDPA's flash backend, decode at least its cuDNN backend.

    python3 benches/compare_attention.py OURS.md TORCH.md     # the joined table, then "N of M bars met"
    python3 benches/compare_attention.py --self-test

Rows are matched on (call, d, causal, batch, q len, kv len, heads); a shape only one side measured is
listed with its missing side as "-" and counts as not met. Exit status 0 either way: the table is the result.
"""

import sys

KEY_COLUMNS = ("call", "d", "causal", "batch", "q len", "kv len", "heads q/kv")


def parse_table(text):
    """Rows of the first markdown table in `text` as dicts keyed by header (cells stripped)."""
    rows, header = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if header:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        elif all(set(c) <= set("-: ") for c in cells):
            continue
        else:
            rows.append(dict(zip(header, cells)))
    return rows


def figure(cell):
    """The number before ' (' in a cell like '265.234 (0.259 ms)'; None when absent or not a number."""
    try:
        return float(cell.split("(")[0])
    except (AttributeError, ValueError):
        return None


def join(ours_text, torch_text):
    ours = {tuple(r.get(k, "") for k in KEY_COLUMNS): r for r in parse_table(ours_text)}
    torch = {tuple(r.get(k, "") for k in KEY_COLUMNS): r for r in parse_table(torch_text)}
    out = []
    for key in list(ours) + [k for k in torch if k not in ours]:
        o, t = ours.get(key, {}), torch.get(key, {})
        mine, flash, cudnn = figure(o.get("flash_cuda")), figure(t.get("sdpa flash")), figure(t.get("sdpa cudnn"))
        bar_name, bar = ("cuDNN", cudnn) if key[0] == "decode" else ("flash", flash)
        met = mine is not None and bar is not None and mine >= bar
        out.append({"key": key, "ours": mine, "flash": flash, "cudnn": cudnn, "bar": bar_name, "met": met,
                    "unit": o.get("unit") or t.get("unit", "")})
    return out


def render(rows):
    def num(v):
        return "-" if v is None else f"{v:.3f}"

    def ratio(a, b):
        return "-" if a is None or not b else f"{a / b:.2f}x"

    lines = ["| call | d | causal | batch | q len | kv len | heads q/kv | flash_cuda | SDPA flash | SDPA cuDNN "
             "| of flash | of cuDNN | bar | unit |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        verdict = ("met" if r["met"] else "**not met**") + f" (>= {r['bar']})"
        lines.append("| " + " | ".join(r["key"]) + f" | {num(r['ours'])} | {num(r['flash'])} | {num(r['cudnn'])} | "
                     f"{ratio(r['ours'], r['flash'])} | {ratio(r['ours'], r['cudnn'])} | {verdict} | {r['unit']} |")
    met = sum(r["met"] for r in rows)
    lines.append("")
    lines.append(f"{met} of {len(rows)} bars met")
    return "\n".join(lines)


OURS_SAMPLE = """## attention_bench (NVIDIA H200, bf16, KV cache token_major)

| call | d | causal | batch | q len | kv len | heads q/kv | flash_cuda | unit |
|---|---:|---|---:|---:|---:|---|---:|---|
| prefill | 64 | no | 32 | 512 | 512 | 32/32 | 265.234 (0.259 ms) | TFLOP/s |
| decode | 128 | yes | 32 | 1 | 4096 | 32/8 | 3.943 (0.136 ms) | TB/s of K+V |
| decode | 128 | yes | 8 | 1 | 1024 | 32/8 | 2.112 (0.016 ms) | TB/s of K+V |
"""
TORCH_SAMPLE = """| call | d | causal | batch | q len | kv len | heads q/kv | sdpa flash | sdpa cudnn | unit |
|---|---:|---|---:|---:|---:|---|---:|---:|---|
| prefill | 64 | no | 32 | 512 | 512 | 32/32 | 259.348 (0.265 ms) | 374.028 (0.184 ms) | TFLOP/s |
| decode | 128 | yes | 32 | 1 | 4096 | 32/8 | 2.494 (0.215 ms) | 4.313 (0.124 ms) | TB/s of K+V |
| decode | 128 | yes | 1 | 1 | 1024 | 32/8 | 0.177 (0.024 ms) | error | TB/s of K+V |
"""


def self_test():
    rows = {r["key"][0] + r["key"][3]: r for r in join(OURS_SAMPLE, TORCH_SAMPLE)}
    checks = [
        (rows["prefill32"]["met"], "prefill 265 >= flash 259 is met, though cuDNN is faster"),
        (not rows["decode32"]["met"], "decode 3.94 < cuDNN 4.31 is not met, though flash is slower"),
        (not rows["decode8"]["met"] and rows["decode8"]["cudnn"] is None, "a shape SDPA did not measure is not met"),
        (not rows["decode1"]["met"] and rows["decode1"]["ours"] is None, "a shape we did not measure is not met"),
        (len(rows) == 4, "every shape of either side is listed once"),
        (render(list(rows.values())).endswith("\n1 of 4 bars met"), "the summary counts the bars met"),
        (parse_table("text\n| a | b |\n|---|---|\n| 1 | 2 |\n\n| c |\n|---|\n| 3 |")[0] == {"a": "1", "b": "2"},
         "only the first table is read"),
    ]
    return report(checks)


def report(checks):
    """Prints the failed checks and a count; the exit status of a self-test."""
    failed = [why for ok, why in checks if not ok]
    for why in failed:
        print("FAILED:", why)
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cli(argv, doc, self_test, join, render):
    """`argv[0] OURS TORCH` prints render(join(ours, torch)); `argv[0] --self-test` runs self_test()."""
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) != 3:
        print(doc.strip(), file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        ours_text = f.read()
    with open(argv[2]) as f:
        torch_text = f.read()
    print(render(join(ours_text, torch_text)))
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv, __doc__, self_test, join, render))
