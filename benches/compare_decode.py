#!/usr/bin/env python3
"""Joins gpu_decode_bench's table (ours) with torch_decode_bench.py's (PyTorch, same call) into one table
with the GPU issue's bars: ahead of every PyTorch path in decode and prefill, and at batch 1 over 90% of the
floor for the Llama-2-7B shape, over 80% for TinyLlama and over 5,000 tok/s for stories110M.

    python3 benches/compare_decode.py OURS.md TORCH.md     # the joined table, then "N of M bars met"
    python3 benches/compare_decode.py --self-test

The floor is the issue's (every weight of the model: its 1,350 / 220 tok/s at 3.0 TB/s count the embedding
table and the separate classifier both); the share of the stricter floor on the bytes a step reads is shown
beside it where the bench printed one. Our rows are those on one GPU, one per (shape, batch, attention,
products); each is set against every PyTorch path measured for its (shape, batch). Exit status 0 either way:
the table is the result.
"""

import sys

from compare_attention import cli, figure, parse_table, report

# Batch-1 decode targets: (kind, value): a share of the floor or tok/s.
TARGETS = {"llama2-7b": ("of floor", 0.90), "tinyllama": ("of floor", 0.80), "stories110M": ("tok/s", 5000.0)}


def join(ours_text, torch_text):
    torch_rows = {}
    for r in parse_table(torch_text):
        torch_rows.setdefault((r.get("shape", ""), r.get("batch", "")), []).append(r)
    out = []
    for r in parse_table(ours_text):
        if r.get("GPUs", "1") != "1":
            continue
        key = (r.get("shape", ""), r.get("batch", ""))
        decode, prefill = figure(r.get("decode tok/s (per seq)")), figure(r.get("prefill tok/s"))
        floor = figure(r.get("floor tok/s (per GPU)"))
        read_floor = figure(r.get("floor on bytes read"))
        paths = torch_rows.get(key, [])
        best = max(paths, key=lambda p: figure(p.get("decode tok/s (per seq)")) or 0.0, default=None)
        best_decode = figure(best.get("decode tok/s (per seq)")) if best else None
        best_prefill = max((figure(p.get("prefill tok/s")) or 0.0 for p in paths), default=None)
        bars = []
        if paths:
            bars.append(("decode ahead of PyTorch", decode is not None and best_decode is not None
                         and decode > best_decode))
            bars.append(("prefill ahead of PyTorch", prefill is not None and best_prefill is not None
                         and prefill > best_prefill))
        target = TARGETS.get(key[0]) if key[1] == "1" else None
        if target:
            kind, value = target
            got = decode / floor if kind == "of floor" and decode and floor else decode
            label = f">= {value:.0%} of floor" if kind == "of floor" else f">= {value:,.0f} tok/s"
            bars.append((label, got is not None and got >= value))
        out.append({"key": key, "backend": r.get("attention", ""), "products": r.get("products", ""),
                    "decode": decode, "prefill": prefill, "floor": floor, "read_floor": read_floor,
                    "torch_path": best.get("path", "") if best else "", "torch_decode": best_decode,
                    "torch_prefill": best_prefill, "bars": bars})
    return out


def render(rows):
    def num(v):
        return "-" if v is None else f"{v:,.0f}"

    lines = ["| shape | batch | attention | products | decode tok/s | of floor | of bytes read | PyTorch best path | "
             "its decode | ours / it | prefill tok/s | PyTorch prefill | bars |",
             "|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    met = total = 0
    for r in rows:
        share = f"{r['decode'] / r['floor']:.1%}" if r["decode"] and r["floor"] else "-"
        read_share = f"{r['decode'] / r['read_floor']:.1%}" if r["decode"] and r["read_floor"] else "-"
        ratio = f"{r['decode'] / r['torch_decode']:.2f}x" if r["decode"] and r["torch_decode"] else "-"
        verdicts = "; ".join(("" if ok else "**not** ") + name for name, ok in r["bars"]) or "-"
        met += sum(ok for _, ok in r["bars"])
        total += len(r["bars"])
        lines.append(f"| {r['key'][0]} | {r['key'][1]} | {r['backend']} | {r['products']} | {num(r['decode'])} | "
                     f"{share} | {read_share} | {r['torch_path'] or '-'} | {num(r['torch_decode'])} | {ratio} | "
                     f"{num(r['prefill'])} | {num(r['torch_prefill'])} | {verdicts} |")
    lines.append("")
    lines.append(f"{met} of {total} bars met")
    return "\n".join(lines)


OURS_SAMPLE = """device NVIDIA H200; copy bandwidth 4225 GB/s (read + write)
| shape | GPUs | batch | attention | products | weights (bf16) | prefill tok/s | decode tok/s (per seq) | decode tok/s (aggregate) | floor tok/s (per GPU) | of floor | read a step | floor on bytes read | of it |
|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| stories110M | 1 | 1 | flash_cuda | auto | 0.22 GB | 375329 | 3599 | 3599 | 19291 | 18.7% | 0.22 GB | 19291 | 18.7% |
| tinyllama | 1 | 1 | flash_cuda | auto | 2.20 GB | 145499 | 1560 | 1560 | 1920 | 81.3% | 2.07 GB | 2042 | 76.4% |
| llama2-7b | 1 | 8 | flash_cuda | auto | 13.48 GB | 40000 | 189 | 1516 | 313 | 60.4% | 13.21 GB | 320 | 59.1% |
| llama2-7b | 2 | 1 | flash_cuda | auto | 13.48 GB | 43652 | 311 | 311 | 627 | 49.6% | 13.21 GB | 638 | 48.7% |
"""
TORCH_SAMPLE = """| shape       | batch | path         | prefill tok/s | decode tok/s (per seq) | decode tok/s (aggregate) | floor tok/s | % of floor |
|-------------|------:|--------------|--------------:|-----------------------:|-------------------------:|------------:|-----------:|
| stories110M |     1 | static_graph |      117078.9 |                 1306.9 |                   1306.9 |     15905.6 |        8.2 |
| stories110M |     1 | hf_generate  |      127078.9 |                  500.0 |                    500.0 |     15905.6 |        3.1 |
| tinyllama   |     1 | static_graph |       35133.1 |                  497.0 |                    497.0 |      1939.0 |       25.6 |
| llama2-7b   |     8 | static_graph |       41141.8 |                  161.6 |                   1293.2 |       316.5 |       51.1 |
"""


def self_test():
    rows = {r["key"]: r for r in join(OURS_SAMPLE, TORCH_SAMPLE)}
    bars = {k: dict(r["bars"]) for k, r in rows.items()}
    checks = [
        (("llama2-7b", "1") not in rows, "rows on two GPUs are left out"),
        (rows[("stories110M", "1")]["torch_path"] == "static_graph", "the fastest PyTorch decode path is the one shown"),
        (rows[("stories110M", "1")]["torch_prefill"] == 127078.9, "prefill is held to the fastest PyTorch prefill"),
        (bars[("stories110M", "1")] == {"decode ahead of PyTorch": True, "prefill ahead of PyTorch": True,
                                        ">= 5,000 tok/s": False}, "stories110M: ahead of PyTorch, short of 5,000"),
        (bars[("tinyllama", "1")][">= 80% of floor"], "TinyLlama at 81% of the issue's floor meets 80%"),
        ("| 81.2% | 76.4% |" in render(list(rows.values())), "the share of the bytes read is shown beside it"),
        (bars[("llama2-7b", "8")] == {"decode ahead of PyTorch": True, "prefill ahead of PyTorch": False},
         "batch 8 has no floor target; prefill behind PyTorch is not met"),
        (render(list(rows.values())).endswith("\n6 of 8 bars met"), "the summary counts the bars met"),
    ]
    return report(checks)


if __name__ == "__main__":
    sys.exit(cli(sys.argv, __doc__, self_test, join, render))
