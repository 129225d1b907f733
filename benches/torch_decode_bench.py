#!/usr/bin/env python3
"""torch_decode_bench: PyTorch's end-to-end prefill and decode speed on random-weight Llama models.

The reference that llm-runner's C++/CUDA runtime is compared against in the same run. Prints a
markdown table to stdout (last, after a "## PyTorch reference (...)" line) and, with --json PATH,
writes every figure, time sample, check and error as JSON.

How to run (GPU machine: one NVIDIA GPU, Python 3.12, torch 2.x, transformers 5.x; no network):
    python3 benches/torch_decode_bench.py --json torch_decode_bench.json
    python3 benches/torch_decode_bench.py --shapes tinyllama --batches 1 --paths static_graph
    python3 benches/torch_decode_bench.py --compile --json out.json     # adds hf_static_compile
Torch-free (any machine, stdlib only): the plan with its weight-byte/FLOP arithmetic and floors at an
assumed copy bandwidth, and the script's own checks:
    python3 benches/torch_decode_bench.py --dry-run [--assume-bw-tbs 3.0] [--json plan.json]
    python3 benches/torch_decode_bench.py --self-test   # also tests the decode engine on CPU if torch is there

Shapes (random weights, bf16, seeded; speed does not depend on the values), --shapes:
    stories110M  hidden 768,  intermediate 2048,  12 layers, 12 heads, 12 kv heads, vocab 32000
    tinyllama    hidden 2048, intermediate 5632,  22 layers, 32 heads,  4 kv heads, vocab 32000
    llama2-7b    hidden 4096, intermediate 11008, 32 layers, 32 heads, 32 kv heads, vocab 32000
Untied lm_head everywhere (stories110M has 134.1M parameters so; 109.5M with a tied head).
Workload: a --prompt-len 512 token prompt (random ids, fixed seed; batch rows differ) and
--new-tokens 256 greedy tokens, at each of --batches 1,8.

Paths (--paths):
  hf_generate        transformers' model.generate(ids, max_new_tokens=N, min_new_tokens=N,
                     do_sample=False, use_cache=True) with the default dynamic cache and SDPA
                     attention, eager (no compile). This is "PyTorch as most people run it".
  static_graph       the fastest plain-PyTorch decode: a hand-written Llama step (the same weights,
                     q/k/v and gate/up fused into one matrix each unless --no-fuse, RMSNorm as
                     F.rms_norm unless --no-fused-norm) over a
                     preallocated KV cache [batch, kv_heads, cache_len, head_dim] written with
                     index_copy_ at a position held in a GPU tensor, F.scaled_dot_product_attention
                     with a boolean mask over the whole cache (all shapes static; GQA without
                     copying: the query heads of one kv head are laid out as SDPA's query-length
                     axis), greedy argmax on the GPU, the whole step captured once in a
                     torch.cuda.CUDAGraph and replayed per token. The prompt is prefilled eagerly
                     (flash SDPA, causal) and timed as prefill. Before timing, its prefill logits
                     are compared with transformers' (same weights), the graph's tokens with the
                     same step run eagerly, and SDPA decode attention with a plain matmul one; if
                     SDPA fails to capture or disagrees, the path falls back to --graph-attn matmul
                     and says so in the table.
  hf_static_compile  (only with --compile or when listed) generate(..., cache_implementation=
                     "static"), which transformers compiles with torch.compile on CUDA; the first
                     call (compilation, can take minutes) is reported as compile_s in the JSON.

Figures:
  prefill tok/s         batch*prompt_len / t, t = one forward over the prompt batch (for the HF
                        paths: model(ids, use_cache=True, logits_to_keep=1), as generate's prefill;
                        for static_graph: its own eager prefill incl. the first argmax).
  decode tok/s per seq  new_tokens / (t_total - t_prefill): for hf_generate t_total is the whole
                        generate() call; for static_graph t_total - t_prefill is the time of the
                        new_tokens-1 graph replays that follow the prefill. (Both count the first
                        token, which the prefill yields, over the remaining new_tokens-1 steps, as
                        specified; the JSON also has ms_per_step = decode time / (new_tokens-1).)
  decode tok/s aggreg.  batch * per-seq figure.
  floor tok/s           copy bandwidth / weight bytes: a decode step reads every weight once (the
                        same per step at batch 8), so no decoder can take more steps per second.
                        Copy bandwidth = (bytes read + bytes written) / time of a --copy-gib GiB
                        device-to-device copy, measured in this run (median of trials). The floor
                        counts weights only; the KV cache read per step is printed beside it (it
                        is not small for llama2-7b at batch 8: ~2.7 GB at the mean context).
  % of floor            decode tok/s per seq / floor tok/s.
Medians of --repeats timed runs after a warm-up; every time is synchronize-then-clock
(time.perf_counter around torch.cuda.synchronize()), the copy bandwidth uses CUDA events.

Robustness: every section runs in try/except; an error is recorded in the JSON and shown in the
table as "error: ..." and the run moves on. A soft --time-limit (default 540 s) skips sections
that would start after it ("skipped: time limit"); SIGTERM/Ctrl-C still print the table and write
the JSON with what was measured. The JSON is also rewritten after each shape. Exit code: 0 when
every section ran, 1 when any section failed or was skipped, 2 when nothing could run.

Expected runtime on one H100 at the defaults: about 3-4 minutes (most of it hf_generate's eager
decode of llama2-7b); --compile adds several minutes.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
import traceback

# --------------------------------------------------------------------------------------------
# Shapes and arithmetic (stdlib only)
# --------------------------------------------------------------------------------------------

SHAPES = {
    "stories110M": dict(hidden=768, intermediate=2048, layers=12, heads=12, kv_heads=12,
                        vocab=32000, max_pos=1024),
    "tinyllama": dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4,
                      vocab=32000, max_pos=2048),
    "llama2-7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32,
                      vocab=32000, max_pos=4096),
}
# Published parameter counts, for the self-check (untied head; stories110M is ~110M tied).
KNOWN_PARAMS = {"stories110M": 134.1e6, "tinyllama": 1.10e9, "llama2-7b": 6.74e9}
KNOWN_TIED_PARAMS = {"stories110M": 110e6}
KNOWN_TOLERANCE = 0.01  # relative

ALL_PATHS = ("hf_generate", "static_graph", "hf_static_compile")
DEFAULT_PATHS = ("hf_generate", "static_graph")
BYTES_BF16 = 2
RMS_EPS = 1e-5
COLUMNS = ["shape", "batch", "path", "prefill tok/s", "decode tok/s (per seq)",
           "decode tok/s (aggregate)", "floor tok/s", "% of floor"]


def param_breakdown(s: dict) -> dict:
    """Parameter counts of a Llama with an untied lm_head, as LlamaForCausalLM creates them."""
    h, inter, L = s["hidden"], s["intermediate"], s["layers"]
    heads, kv_heads, vocab = s["heads"], s["kv_heads"], s["vocab"]
    if h % heads or heads % kv_heads:
        raise ValueError(f"hidden {h} / heads {heads} / kv_heads {kv_heads} do not divide")
    head_dim = h // heads
    kv_dim = head_dim * kv_heads
    attn = h * h + h * kv_dim + h * kv_dim + h * h  # wq, wk, wv, wo
    mlp = 3 * h * inter  # gate, up, down
    norms = 2 * h  # input and post-attention RMSNorm
    per_layer = attn + mlp + norms
    embed = vocab * h
    lm_head = vocab * h
    final_norm = h
    total = embed + L * per_layer + final_norm + lm_head
    return dict(head_dim=head_dim, kv_dim=kv_dim, attn_per_layer=attn, mlp_per_layer=mlp,
                norms_per_layer=norms, per_layer=per_layer, embed=embed, lm_head=lm_head,
                final_norm=final_norm, total=total, total_tied=total - lm_head,
                matmul_params=L * (attn + mlp) + lm_head)


def kv_bytes_per_token(s: dict, bytes_per=BYTES_BF16) -> int:
    """K and V of one token over all layers."""
    return s["layers"] * 2 * (s["hidden"] // s["heads"]) * s["kv_heads"] * bytes_per


def cache_len_for(prompt_len: int, new_tokens: int, align: int = 64) -> int:
    """Static cache length: room for prompt + new tokens, rounded up (aligned SDPA masks)."""
    n = prompt_len + new_tokens
    return ((n + align - 1) // align) * align


def shape_arithmetic(name: str, prompt_len: int, new_tokens: int, batches, bw_bytes_s,
                     peak_flops=None) -> dict:
    s = SHAPES[name]
    p = param_breakdown(s)
    wbytes = p["total"] * BYTES_BF16
    kvt = kv_bytes_per_token(s)
    mean_ctx = prompt_len + new_tokens / 2.0  # mean context length over the decode steps
    h, L = s["hidden"], s["layers"]
    # FLOPs per token: 2 per matmul weight (embedding lookup is no matmul) + attention
    # (QK^T and PV: 2*h*ctx each per layer; GQA does not change them).
    decode_flops = 2 * p["matmul_params"] + 4 * L * h * mean_ctx
    prefill_flops = 2 * p["matmul_params"] + 4 * L * h * (prompt_len + 1) / 2.0  # causal mean
    out = dict(config=dict(s), params=p, weight_bytes=wbytes, kv_bytes_per_token=kvt,
               mean_decode_context=mean_ctx, decode_flops_per_token=decode_flops,
               prefill_flops_per_token=prefill_flops,
               cache_len=cache_len_for(prompt_len, new_tokens),
               kv_bytes_per_step_mean={str(b): b * kvt * mean_ctx for b in batches},
               kv_cache_bytes_static={str(b): b * kvt * cache_len_for(prompt_len, new_tokens)
                                      for b in batches},
               floor_tok_s=(bw_bytes_s / wbytes) if bw_bytes_s else None,
               floor_incl_kv_tok_s={str(b): (bw_bytes_s / (wbytes + b * kvt * mean_ctx))
                                    if bw_bytes_s else None for b in batches})
    if peak_flops:
        out["prefill_compute_ceiling_tok_s"] = peak_flops / prefill_flops
    return out


def check_arithmetic() -> list:
    """Compares param_breakdown with the published figures; returns a list of problems."""
    problems = []
    for name, want in KNOWN_PARAMS.items():
        got = param_breakdown(SHAPES[name])["total"]
        if abs(got / want - 1) > KNOWN_TOLERANCE:
            problems.append(f"{name}: {got} params, expected ~{want:.3g}")
    for name, want in KNOWN_TIED_PARAMS.items():
        got = param_breakdown(SHAPES[name])["total_tied"]
        if abs(got / want - 1) > 0.02:
            problems.append(f"{name} (tied): {got} params, expected ~{want:.3g}")
    # Exact figures for the two real checkpoints (LlamaForCausalLM parameter counts).
    exact = {"llama2-7b": 6738415616, "tinyllama": 1100048384}
    for name, want in exact.items():
        got = param_breakdown(SHAPES[name])["total"]
        if got != want:
            problems.append(f"{name}: {got} params, expected exactly {want}")
    return problems


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------

def fmt_num(v, digits=1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_count(n) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3f}{unit}"
    return str(n)


def clean_cell(text: str, limit: int = 140) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def row_cells(r: dict) -> list:
    """The table cells of one result row (dict as stored in the JSON)."""
    if r.get("planned"):
        return [r["shape"], str(r["batch"]), r["path"], "planned (dry run)", "-", "-",
                fmt_num(r.get("floor_tok_s")), "-"]
    status = r.get("error") or r.get("skipped")
    if status:
        label = "error: " if r.get("error") else "skipped: "
        first = clean_cell(label + status)
        return [r["shape"], str(r["batch"]), r["path"], first, "-", "-",
                fmt_num(r.get("floor_tok_s")), "-"]
    path = r["path"]
    if r.get("path_note"):
        path = f"{path} ({clean_cell(r['path_note'], 60)})"
    return [r["shape"], str(r["batch"]), path, fmt_num(r.get("prefill_tok_s")),
            fmt_num(r.get("decode_tok_s_per_seq")), fmt_num(r.get("decode_tok_s_aggregate")),
            fmt_num(r.get("floor_tok_s")), fmt_num(r.get("pct_of_floor"))]


def markdown_table(rows: list) -> str:
    cells = [COLUMNS] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    right = [False, True, False, True, True, True, True, True]

    def line(cs):
        out = []
        for i, c in enumerate(cs):
            out.append(c.rjust(widths[i]) if right[i] and cs is not cells[0] else c.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join((("-" * (w + 1)) + ":") if right[i] else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), sep] + [line(c) for c in cells[1:]])


def sanitize(obj):
    """JSON-safe copy: NaN/inf become null, tuples lists, unknown objects strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------

def parse_name_list(text: str, allowed, what: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"empty {what} list")
    lower = {a.lower(): a for a in allowed}
    out = []
    for t in items:
        if t.lower() not in lower:
            raise argparse.ArgumentTypeError(f"unknown {what} {t!r} (choose from {', '.join(allowed)})")
        if lower[t.lower()] not in out:
            out.append(lower[t.lower()])
    return out


def parse_int_list(text: str) -> list:
    out = []
    for t in text.split(","):
        t = t.strip()
        if not t:
            continue
        try:
            v = int(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {t!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"batch must be >= 1, got {v}")
        if v not in out:
            out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("empty batch list")
    return out


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="PyTorch prefill/decode reference on random-weight Llama shapes (see the file's docstring).")
    ap.add_argument("--shapes", type=lambda t: parse_name_list(t, list(SHAPES), "shape"),
                    default=list(SHAPES), help=f"comma list of {', '.join(SHAPES)} (default: all)")
    ap.add_argument("--batches", type=parse_int_list, default=[1, 8], help="comma list (default 1,8)")
    ap.add_argument("--paths", type=lambda t: parse_name_list(t, ALL_PATHS, "path"), default=None,
                    help="comma list of hf_generate,static_graph,hf_static_compile "
                         "(default hf_generate,static_graph; --compile adds hf_static_compile)")
    ap.add_argument("--prompt-len", type=positive_int, default=512)
    ap.add_argument("--new-tokens", type=positive_int, default=256, help="new tokens per sequence (>= 2)")
    ap.add_argument("--repeats", type=positive_int, default=3, help="timed runs per figure; the median is reported")
    ap.add_argument("--compile", action="store_true",
                    help="also run hf_static_compile (static cache + torch.compile; compiling takes minutes)")
    ap.add_argument("--json", metavar="PATH", default=None, help="write all results as JSON here")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and arithmetic without importing torch")
    ap.add_argument("--self-test", action="store_true",
                    help="run the script's own checks (arithmetic, parsing, table; the decode engine on CPU if torch imports)")
    ap.add_argument("--assume-bw-tbs", type=positive_float, default=3.0,
                    help="copy bandwidth (TB/s, read+write) assumed by --dry-run (default 3.0)")
    ap.add_argument("--assume-tflops", type=positive_float, default=989.0,
                    help="dense bf16 TFLOP/s for the prefill compute ceiling printed by --dry-run (default 989, H100 SXM)")
    ap.add_argument("--copy-gib", type=positive_float, default=2.0, help="size of the copy-bandwidth tensor (GiB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graph-attn", choices=("sdpa", "matmul"), default="sdpa",
                    help="decode attention inside the CUDA graph (default sdpa; falls back to matmul on failure)")
    ap.add_argument("--no-fuse", action="store_true", help="static_graph: keep q/k/v and gate/up as separate matmuls")
    ap.add_argument("--no-fused-norm", action="store_true",
                    help="static_graph: transformers-style RMSNorm (float32 elementwise ops) instead of F.rms_norm")
    ap.add_argument("--no-check", action="store_true", help="static_graph: skip the correctness checks")
    ap.add_argument("--time-limit", type=float, default=540.0,
                    help="soft limit in seconds: sections that would start later are skipped (0 = none; default 540)")
    return ap


def parse_args(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.paths is None:
        args.paths = list(DEFAULT_PATHS) + (["hf_static_compile"] if args.compile else [])
    if args.new_tokens < 2:
        ap.error("--new-tokens must be >= 2 (the prefill yields the first token; decode needs at least one step)")
    if args.time_limit < 0:
        ap.error("--time-limit must be >= 0")
    return args


# --------------------------------------------------------------------------------------------
# Report (shared by --dry-run and the GPU run)
# --------------------------------------------------------------------------------------------

class Interrupted(BaseException):
    """SIGTERM or Ctrl-C: stop measuring, still print and write what we have."""


class Report:
    def __init__(self, args, dry_run: bool):
        self.args = args
        self.t0 = time.perf_counter()
        self.meta = dict(script="benches/torch_decode_bench.py", argv=sys.argv[1:], dry_run=dry_run,
                         date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                         python=platform.python_version(), host=platform.node(),
                         workload=dict(prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                                       batches=args.batches, repeats=args.repeats, paths=args.paths,
                                       shapes=args.shapes, seed=args.seed, dtype="bfloat16",
                                       graph_attn=args.graph_attn, fuse=not args.no_fuse,
                                       fused_norm=not args.no_fused_norm))
        self.copy_bw = {}
        self.shapes = {}
        self.rows = []
        self.notes = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str):
        print(f"[{self.elapsed():7.1f}s] {msg}", flush=True)

    def over_time(self) -> bool:
        lim = self.args.time_limit
        return bool(lim) and self.elapsed() > lim

    def floor(self, shape):
        return (self.shapes.get(shape) or {}).get("floor_tok_s")

    def add_row(self, shape, batch, path, **kw) -> dict:
        r = dict(shape=shape, batch=batch, path=path, prefill_tok_s=None, decode_tok_s_per_seq=None,
                 decode_tok_s_aggregate=None, floor_tok_s=self.floor(shape), pct_of_floor=None,
                 error=None, skipped=None)
        r.update(kw)
        if r["decode_tok_s_per_seq"] is not None and r["decode_tok_s_aggregate"] is None:
            r["decode_tok_s_aggregate"] = r["decode_tok_s_per_seq"] * batch
        if r["floor_tok_s"] and r["decode_tok_s_per_seq"] is not None:
            r["pct_of_floor"] = 100.0 * r["decode_tok_s_per_seq"] / r["floor_tok_s"]
        self.rows.append(r)
        return r

    def to_json(self) -> dict:
        return sanitize(dict(meta=self.meta, copy_bandwidth=self.copy_bw, shapes=self.shapes,
                             results=self.rows, notes=self.notes, elapsed_s=self.elapsed()))

    def write_json(self, quiet=False):
        path = self.args.json
        if not path:
            return
        try:
            d = os.path.dirname(os.path.abspath(path))
            os.makedirs(d, exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.to_json(), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
            if not quiet:
                self.log(f"wrote {path}")
        except Exception as e:  # never lose the table because of the JSON
            print(f"could not write JSON to {path}: {short_error(e)}", file=sys.stderr, flush=True)

    def arithmetic_lines(self) -> list:
        out = []
        for name in self.args.shapes:
            a = self.shapes.get(name)
            if not a or "params" not in a:
                continue
            p, s = a["params"], a["config"]
            kv = ", ".join(f"b{b} {fmt_bytes(a['kv_bytes_per_step_mean'][str(b)])}"
                           for b in self.args.batches)
            fl = ", ".join(f"b{b} {fmt_num(a['floor_incl_kv_tok_s'][str(b)])}" for b in self.args.batches)
            torch_count = a.get("params_torch")
            tc = "" if torch_count is None else (
                f"; torch counts {torch_count} ({'matches' if torch_count == p['total'] else 'MISMATCH'})")
            out.append(
                f"- {name}: {fmt_count(p['total'])} params = embed {fmt_count(p['embed'])} + {s['layers']} x "
                f"(attn {fmt_count(p['attn_per_layer'])} + mlp {fmt_count(p['mlp_per_layer'])} + norms "
                f"{p['norms_per_layer']}) + norm {p['final_norm']} + lm_head {fmt_count(p['lm_head'])}{tc}; "
                f"weights {fmt_bytes(a['weight_bytes'])} bf16 -> floor {fmt_num(a['floor_tok_s'])} tok/s; "
                f"KV {fmt_bytes(a['kv_bytes_per_token'])}/token, read per step at mean context "
                f"{a['mean_decode_context']:.0f}: {kv} (floor incl. KV: {fl}); decode "
                f"{a['decode_flops_per_token'] / 1e9:.2f} GFLOP/token")
        return out

    def print_final(self, header: str):
        print("", flush=True)
        print(header)
        print("")
        if self.copy_bw.get("bytes_per_s"):
            src = "assumed" if self.meta.get("dry_run") else "measured"
            extra = "" if self.meta.get("dry_run") else (
                f" ({self.copy_bw.get('gib')} GiB copy, median of {len(self.copy_bw.get('samples', []))}"
                f" trials, max {self.copy_bw.get('max_bytes_per_s', 0) / 1e12:.3f} TB/s)")
            print(f"- copy bandwidth ({src}, read + write): {self.copy_bw['bytes_per_s'] / 1e12:.3f} TB/s{extra}")
        elif self.copy_bw.get("error"):
            print(f"- copy bandwidth: error: {clean_cell(self.copy_bw['error'])} (no floors)")
        w = self.meta["workload"]
        print(f"- workload: prompt {w['prompt_len']}, {w['new_tokens']} new tokens, greedy, bf16, "
              f"random weights (seed {w['seed']}), median of {w['repeats']} runs; floor = copy bandwidth / "
              f"weight bytes (weights only); % of floor uses decode tok/s per seq")
        for line in self.arithmetic_lines():
            print(line)
        for n in self.notes:
            print(f"- {clean_cell(n, 400)}")
        print("")
        print(markdown_table(self.rows), flush=True)


# --------------------------------------------------------------------------------------------
# --dry-run
# --------------------------------------------------------------------------------------------

def dry_run(args) -> int:
    problems = check_arithmetic()
    rep = Report(args, dry_run=True)
    bw = args.assume_bw_tbs * 1e12
    rep.copy_bw = dict(bytes_per_s=bw, assumed=True)
    print("torch_decode_bench --dry-run: torch is not imported; nothing is measured.", flush=True)
    for name in args.shapes:
        rep.shapes[name] = shape_arithmetic(name, args.prompt_len, args.new_tokens, args.batches, bw,
                                            peak_flops=args.assume_tflops * 1e12)
        a = rep.shapes[name]
        if args.prompt_len + args.new_tokens > SHAPES[name]["max_pos"]:
            rep.notes.append(f"{name}: prompt + new tokens {args.prompt_len + args.new_tokens} exceeds its "
                             f"max positions {SHAPES[name]['max_pos']}: the run will report an error")
        print(f"{name}: cache_len {a['cache_len']}, static KV cache "
              + ", ".join(f"b{b} {fmt_bytes(a['kv_cache_bytes_static'][str(b)])}" for b in args.batches)
              + f"; prefill {a['prefill_flops_per_token'] / 1e9:.2f} GFLOP/token -> compute ceiling "
              f"{fmt_num(a['prefill_compute_ceiling_tok_s'], 0)} tok/s at {args.assume_tflops:g} TFLOP/s",
              flush=True)
        for b in args.batches:
            for path in args.paths:
                rep.add_row(name, b, path, planned=True)
    if problems:
        for p in problems:
            rep.notes.append(f"ARITHMETIC CHECK FAILED: {p}")
    else:
        rep.notes.append("arithmetic check: parameter counts match llama2-7b 6738415616, tinyllama 1100048384, "
                         "stories110M ~134.1M untied / ~109.5M tied")
    rep.write_json()
    date = datetime.date.today().isoformat()
    rep.print_final(f"## PyTorch reference (dry run: no device, assumed copy bandwidth "
                    f"{args.assume_bw_tbs:g} TB/s, torch not imported, {date})")
    return 1 if problems else 0


# --------------------------------------------------------------------------------------------
# The hand-written Llama decoder (the torch module is passed in; no import at load time)
# --------------------------------------------------------------------------------------------

class LlamaWeights:
    """Plain tensors of one Llama, HF layout (Linear weights [out, in])."""

    def __init__(self, embed, layers, norm, lm_head, eps, rope_theta, heads, kv_heads, head_dim):
        self.embed, self.layers, self.norm, self.lm_head = embed, layers, norm, lm_head
        self.eps, self.rope_theta = float(eps), float(rope_theta)
        self.heads, self.kv_heads, self.head_dim = int(heads), int(kv_heads), int(head_dim)
        self.hidden = int(embed.shape[1])
        self.vocab = int(lm_head.shape[0])
        self.intermediate = int(layers[0]["w_gate"].shape[0])
        if self.heads * self.head_dim != self.hidden:
            raise ValueError(f"heads {heads} x head_dim {head_dim} != hidden {self.hidden}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {heads} not a multiple of kv_heads {kv_heads}")


def rope_theta_of(config) -> float:
    """rope_theta from a transformers config (5.x keeps it in rope_parameters)."""
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        rope_type = rp.get("rope_type", rp.get("type", "default"))
        if rope_type not in (None, "default"):
            raise ValueError(f"rope_type {rope_type!r} is not supported by the hand-written step")
        return float(rp["rope_theta"])
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise ValueError(f"rope scaling {scaling} is not supported by the hand-written step")
    return float(getattr(config, "rope_theta", 10000.0))


def weights_from_hf(model) -> LlamaWeights:
    """The tensors of a transformers LlamaForCausalLM (no copies)."""
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {cfg.hidden_act!r} is not silu")
    base = model.model
    layers = []
    for layer in base.layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            if getattr(lin, "bias", None) is not None:
                raise ValueError("linear layers with bias are not supported")
        layers.append(dict(attn_norm=layer.input_layernorm.weight, wq=a.q_proj.weight, wk=a.k_proj.weight,
                           wv=a.v_proj.weight, wo=a.o_proj.weight, mlp_norm=layer.post_attention_layernorm.weight,
                           w_gate=m.gate_proj.weight, w_up=m.up_proj.weight, w_down=m.down_proj.weight))
    eps = getattr(base.norm, "variance_epsilon", None)
    if eps is None:
        eps = getattr(base.norm, "eps", None)
    if eps is None:
        eps = cfg.rms_norm_eps
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return LlamaWeights(base.embed_tokens.weight, layers, base.norm.weight, model.lm_head.weight, eps,
                        rope_theta_of(cfg), heads, kv_heads, head_dim)


class StaticLlama:
    """A minimal Llama with a preallocated KV cache whose decode step has static shapes.

    State lives in device tensors: tok (B,) the token to feed, pos (1,) its position, gen (B, S+1)
    all tokens so far. step() embeds tok, writes K/V at pos (index_copy_), attends over the whole
    cache with a mask arange(S) <= pos, takes the argmax and stores it in tok and gen[:, pos+1],
    then pos += 1: no host synchronisation, so it can be captured in a CUDA graph and replayed.
    """

    def __init__(self, torch, w: LlamaWeights, batch: int, cache_len: int, attn: str = "sdpa",
                 fuse: bool = True, prefill_attn: str = "auto", fused_norm: bool = True):
        self.torch = torch
        import torch.nn.functional as F
        self.F = F
        self.w = w
        self.B, self.S = int(batch), int(cache_len)
        self.h, self.nh, self.nkv, self.hd = w.hidden, w.heads, w.kv_heads, w.head_dim
        self.G = self.nh // self.nkv
        self.kvd = self.nkv * self.hd
        self.inter = w.intermediate
        self.scale = 1.0 / math.sqrt(self.hd)
        self.device, self.dtype = w.embed.device, w.embed.dtype
        self.sdpa = getattr(F, "scaled_dot_product_attention", None)
        if attn not in ("sdpa", "matmul"):
            raise ValueError(f"attn {attn!r}")
        if attn == "sdpa" and self.sdpa is None:
            raise RuntimeError("this torch has no F.scaled_dot_product_attention")
        self.attn_mode = attn
        self.prefill_attn = ("sdpa" if self.sdpa is not None else "matmul") if prefill_attn == "auto" else prefill_attn
        self.fused = bool(fuse)
        # F.rms_norm (torch >= 2.4; one fused kernel on CUDA in recent versions) instead of the
        # ~8 elementwise kernels of transformers' LlamaRMSNorm; same maths, rounding differs slightly.
        self.rms_fused = bool(fused_norm) and hasattr(F, "rms_norm")
        dev, dt = self.device, self.dtype
        self.layers = []
        for lw in w.layers:
            if self.fused:
                wqkv = torch.cat([lw["wq"], lw["wk"], lw["wv"]], dim=0).contiguous()
                wgu = torch.cat([lw["w_gate"], lw["w_up"]], dim=0).contiguous()
                self.layers.append(dict(attn_norm=lw["attn_norm"], wqkv=wqkv, wo=lw["wo"],
                                        mlp_norm=lw["mlp_norm"], wgu=wgu, w_down=lw["w_down"]))
            else:
                self.layers.append(dict(lw))
        L = len(self.layers)
        self.k_cache = [torch.zeros(self.B, self.nkv, self.S, self.hd, dtype=dt, device=dev) for _ in range(L)]
        self.v_cache = [torch.zeros(self.B, self.nkv, self.S, self.hd, dtype=dt, device=dev) for _ in range(L)]
        # RoPE tables as transformers computes them (fp32, cat(freqs, freqs)), stored in the model dtype.
        inv_freq = 1.0 / (w.rope_theta ** (torch.arange(0, self.hd, 2, dtype=torch.int64, device=dev).float()
                                           / self.hd))
        t = torch.arange(self.S, dtype=torch.int64, device=dev).float()
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(dt), emb.sin().to(dt)
        self.tok = torch.zeros(self.B, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.gen = torch.zeros(self.B, self.S + 1, dtype=torch.long, device=dev)
        self.arange = torch.arange(self.S, dtype=torch.long, device=dev)
        self.graph = None
        self.prompt_len = None

    # -- pieces --------------------------------------------------------------------------------

    def _rms(self, x, weight):
        if self.rms_fused:
            return self.F.rms_norm(x, (x.shape[-1],), weight, self.w.eps)
        xf = x.float()
        xf = xf * self.torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.w.eps)
        return weight * xf.to(x.dtype)

    def _rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        rot = self.torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rot * sin

    def _qkv_rope(self, hn, lw, cos, sin):
        """hn (..., h) -> q (..., nh, hd) and k (..., nkv, hd) with RoPE applied, v (..., nkv, hd).
        Fused: one matmul, and q and k rotated together (they are adjacent in its output)."""
        F = self.F
        lead = tuple(hn.shape[:-1])
        nh, nkv, hd, h, kvd = self.nh, self.nkv, self.hd, self.h, self.kvd
        if self.fused:
            qkv = F.linear(hn, lw["wqkv"])
            qk = self._rope(qkv[..., :h + kvd].reshape(lead + (nh + nkv, hd)), cos, sin)
            return qk[..., :nh, :], qk[..., nh:, :], qkv[..., h + kvd:].reshape(lead + (nkv, hd))
        q = self._rope(F.linear(hn, lw["wq"]).reshape(lead + (nh, hd)), cos, sin)
        k = self._rope(F.linear(hn, lw["wk"]).reshape(lead + (nkv, hd)), cos, sin)
        return q, k, F.linear(hn, lw["wv"]).reshape(lead + (nkv, hd))

    def _mlp(self, hn, lw):
        F = self.F
        if self.fused:
            gu = F.linear(hn, lw["wgu"])
            g, u = gu[..., :self.inter], gu[..., self.inter:]
        else:
            g, u = F.linear(hn, lw["w_gate"]), F.linear(hn, lw["w_up"])
        return F.linear(F.silu(g) * u, lw["w_down"])

    def _attn_decode(self, q4, kc, vc, mask4, mode):
        """q4 (B, nkv, G, hd): the G query heads of each kv head on SDPA's query-length axis."""
        if mode == "sdpa":
            return self.sdpa(q4, kc, vc, attn_mask=mask4)
        torch = self.torch
        scores = torch.matmul(q4, kc.transpose(-1, -2)).float() * self.scale  # (B, nkv, G, S)
        scores = scores.masked_fill(~mask4, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1).to(q4.dtype), vc)

    def _attn_prefill(self, q, k, v):
        """q (B, nh, P, hd), k/v (B, nkv, P, hd); causal."""
        torch = self.torch
        B, _, P, hd = q.shape
        if self.G > 1:
            k = k[:, :, None].expand(B, self.nkv, self.G, P, hd).reshape(B, self.nh, P, hd)
            v = v[:, :, None].expand(B, self.nkv, self.G, P, hd).reshape(B, self.nh, P, hd)
        if self.prefill_attn == "sdpa":
            return self.sdpa(q, k, v, is_causal=True)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * self.scale
        causal = torch.ones(P, P, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), v)

    # -- prefill ---------------------------------------------------------------------------------

    def prefill(self, ids):
        """Eager forward over ids (B, P): fills cache[:, :, :P], sets tok/pos/gen. Returns the last
        position's logits (B, vocab)."""
        torch, F = self.torch, self.F
        B, P = ids.shape
        if B != self.B:
            raise ValueError(f"prompt batch {B} != engine batch {self.B}")
        if P >= self.S:
            raise ValueError(f"prompt length {P} leaves no room in cache_len {self.S}")
        hd = self.hd
        x = F.embedding(ids, self.w.embed)  # (B, P, h)
        cos = self.cos[:P].view(1, P, 1, hd)  # broadcasts over (B, P, heads, hd)
        sin = self.sin[:P].view(1, P, 1, hd)
        for li, lw in enumerate(self.layers):
            hn = self._rms(x, lw["attn_norm"])
            q, k, v = self._qkv_rope(hn, lw, cos, sin)  # (B, P, heads, hd)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, P, hd)
            self.k_cache[li][:, :, :P].copy_(k)
            self.v_cache[li][:, :, :P].copy_(v)
            o = self._attn_prefill(q, k, v)  # (B, nh, P, hd)
            x = x + F.linear(o.transpose(1, 2).reshape(B, P, self.h), lw["wo"])
            x = x + self._mlp(self._rms(x, lw["mlp_norm"]), lw)
        logits = F.linear(self._rms(x[:, -1], self.w.norm), self.w.lm_head)  # (B, vocab)
        first = torch.argmax(logits, dim=-1)
        self.gen[:, :P].copy_(ids)
        self.gen[:, P].copy_(first)
        self.tok.copy_(first)
        self.pos.fill_(P)
        self.prompt_len = P
        return logits

    # -- decode ----------------------------------------------------------------------------------

    def decode_logits(self, mode=None):
        """Logits (B, vocab) for tok at pos; writes K/V at pos but does not advance the state."""
        F = self.F
        mode = mode or self.attn_mode
        B, nkv, hd, G = self.B, self.nkv, self.hd, self.G
        x = F.embedding(self.tok, self.w.embed)  # (B, h)
        cos = self.cos.index_select(0, self.pos).view(1, 1, hd)
        sin = self.sin.index_select(0, self.pos).view(1, 1, hd)
        mask4 = (self.arange <= self.pos).view(1, 1, 1, self.S)
        for li, lw in enumerate(self.layers):
            hn = self._rms(x, lw["attn_norm"])
            q, k, v = self._qkv_rope(hn, lw, cos, sin)  # (B, nh|nkv, hd), possibly strided views
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc.index_copy_(2, self.pos, k.unsqueeze(2))
            vc.index_copy_(2, self.pos, v.unsqueeze(2))
            o = self._attn_decode(q.view(B, nkv, G, hd), kc, vc, mask4, mode)  # (B, nkv, G, hd)
            x = x + F.linear(o.reshape(B, self.h), lw["wo"])
            x = x + self._mlp(self._rms(x, lw["mlp_norm"]), lw)
        return F.linear(self._rms(x, self.w.norm), self.w.lm_head)

    def step(self):
        """One greedy decode step, all on the device (capturable)."""
        torch = self.torch
        nxt = torch.argmax(self.decode_logits(), dim=-1)  # (B,) int64
        self.tok.copy_(nxt)
        self.gen.index_copy_(1, self.pos + 1, nxt.unsqueeze(1))
        self.pos.add_(1)

    def capture(self, warmup_steps: int = 2):
        """Captures step() in a CUDA graph. Call after a prefill (the warm-up steps run for real)."""
        torch = self.torch
        if self.prompt_len is None:
            raise RuntimeError("capture() needs a prefill first")
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(warmup_steps):
                self.step()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            self.step()
        torch.cuda.synchronize()
        self.graph = g

    def replay(self, n: int):
        for _ in range(n):
            self.graph.replay()

    def release(self):
        self.graph = None
        self.k_cache = self.v_cache = self.layers = None


# --------------------------------------------------------------------------------------------
# GPU run
# --------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, rep: Report):
        self.args, self.rep = args, rep
        import torch
        self.torch = torch
        self.tf = None
        self.hf_prefill_cache = {}
        self.hf_tokens = {}

    # -- helpers -------------------------------------------------------------------------------

    def sync(self):
        self.torch.cuda.synchronize()

    def timed(self, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t, out

    def free(self):
        gc.collect()
        try:
            self.torch.cuda.empty_cache()
        except Exception:
            pass

    # -- environment ---------------------------------------------------------------------------

    def environment(self) -> str:
        torch, rep = self.torch, self.rep
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        dev = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(dev)
        name = torch.cuda.get_device_name(dev)
        import transformers
        self.tf = transformers
        try:
            transformers.logging.set_verbosity_error()
        except Exception:
            pass
        rep.meta.update(device=name, device_memory_bytes=int(props.total_memory),
                        device_capability=f"{props.major}.{props.minor}",
                        sm_count=int(getattr(props, "multi_processor_count", 0)),
                        torch=torch.__version__, cuda=torch.version.cuda,
                        cudnn=str(torch.backends.cudnn.version()), transformers=transformers.__version__)
        return name

    def copy_bandwidth(self):
        torch, rep = self.torch, self.rep
        n = int(self.args.copy_gib * 2 ** 30)
        t0 = time.perf_counter()
        src = torch.empty(n, dtype=torch.uint8, device="cuda")
        src.fill_(7)
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        self.sync()
        iters, samples = 10, []
        for _ in range(5):
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(iters):
                dst.copy_(src)
            e1.record()
            e1.synchronize()
            t = e0.elapsed_time(e1) / 1e3 / iters
            samples.append(2.0 * n / t)
        del src, dst
        self.free()
        rep.copy_bw = dict(gib=self.args.copy_gib, bytes=n, bytes_per_s=statistics.median(samples),
                           max_bytes_per_s=max(samples), samples=samples, iters_per_sample=iters)
        rep.log(f"copy bandwidth: {rep.copy_bw['bytes_per_s'] / 1e12:.3f} TB/s median "
                f"(max {max(samples) / 1e12:.3f}) [section {time.perf_counter() - t0:.1f}s]")

    # -- model -----------------------------------------------------------------------------------

    def build_model(self, name):
        torch = self.torch
        from transformers import LlamaConfig, LlamaForCausalLM
        import inspect
        s = SHAPES[name]
        kwargs = dict(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      num_key_value_heads=s["kv_heads"], max_position_embeddings=s["max_pos"],
                      rms_norm_eps=RMS_EPS, hidden_act="silu", tie_word_embeddings=False,
                      attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2,
                      use_cache=True)
        try:
            params = inspect.signature(LlamaConfig.__init__).parameters
        except (TypeError, ValueError):
            params = {}
        if "rope_parameters" in params:  # transformers 5
            kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
        else:
            kwargs["rope_theta"] = 10000.0
        minimal = {k: kwargs[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                          "rms_norm_eps", "tie_word_embeddings")}
        config, errors = None, []
        for kw in (dict(kwargs, attn_implementation="sdpa"), kwargs, minimal):
            try:
                config = LlamaConfig(**kw)
                break
            except Exception as e:  # a version that rejects one of the optional fields
                errors.append(short_error(e))
        if config is None:
            raise RuntimeError("LlamaConfig rejected every attempt: " + " / ".join(errors))
        if errors:
            self.rep.notes.append(f"{name}: LlamaConfig needed a fallback ({errors[0]})")
        for field, want in (("hidden_size", s["hidden"]), ("num_key_value_heads", s["kv_heads"]),
                            ("tie_word_embeddings", False), ("num_hidden_layers", s["layers"])):
            if getattr(config, field, want) != want:
                raise RuntimeError(f"LlamaConfig.{field} is {getattr(config, field)!r}, expected {want!r}")
        if getattr(config, "_attn_implementation", None) != "sdpa":
            try:
                config._attn_implementation = "sdpa"
            except Exception:
                pass
        torch.manual_seed(self.args.seed)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("cuda"):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(prev)
        if any(p.dtype != torch.bfloat16 for p in model.parameters()):
            model = model.to(torch.bfloat16)
        model.eval()
        model.requires_grad_(False)
        if getattr(model.config, "_attn_implementation", None) != "sdpa" and hasattr(model, "set_attn_implementation"):
            try:
                model.set_attn_implementation("sdpa")
            except Exception:
                pass
        # Explicit seeded init: independent of the library's init scheme (and never uninitialised memory).
        torch.manual_seed(self.args.seed)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02)
                else:
                    p.fill_(1.0)
        try:
            model.generation_config.pad_token_id = 2
        except Exception:
            pass
        return model

    def prompt(self, vocab, batch):
        torch = self.torch
        g = torch.Generator(device="cpu")
        g.manual_seed(self.args.seed + 1)
        ids = torch.randint(3, vocab, (max(self.args.batches), self.args.prompt_len), generator=g)
        ids = ids[:batch].contiguous().to("cuda")
        return ids, torch.ones_like(ids)

    # -- transformers paths ----------------------------------------------------------------------

    def logits_kwargs(self, model):
        import inspect
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return {}
        if "logits_to_keep" in params:
            return {"logits_to_keep": 1}
        if "num_logits_to_keep" in params:
            return {"num_logits_to_keep": 1}
        return {}

    def hf_prefill(self, key, model, ids, mask):
        """Median seconds of one forward over the prompt batch (as generate's prefill)."""
        if key in self.hf_prefill_cache:
            return self.hf_prefill_cache[key]
        kw = dict(input_ids=ids, attention_mask=mask, use_cache=True, **self.logits_kwargs(model))
        model(**kw)  # warm-up
        times = [self.timed(lambda: model(**kw))[0] for _ in range(self.args.repeats)]
        self.hf_prefill_cache[key] = (median(times), times)
        return self.hf_prefill_cache[key]

    def hf_last_logits(self, model, ids, mask):
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, **self.logits_kwargs(model))
        return out.logits[:, -1, :]

    def generate(self, model, ids, mask, n, **extra):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             use_cache=True, pad_token_id=2, **extra)
        return out if self.torch.is_tensor(out) else out.sequences

    def run_hf(self, name, batch, model, ids, mask, static_compile=False):
        args = self.args
        P, N = args.prompt_len, args.new_tokens
        t_pre, pre_times = self.hf_prefill((name, batch), model, ids, mask)
        info = {}
        extra = {}
        if static_compile:
            extra["cache_implementation"] = "static"
            # Full length: the static cache size (prompt + max_new_tokens) is part of the compiled shapes.
            info["compile_s"], _ = self.timed(lambda: self.generate(model, ids, mask, N, **extra))
            self.generate(model, ids, mask, N, **extra)  # second warm-up: CUDA-graph recording
        else:
            w = min(16, N)
            self.generate(model, ids, mask, w)  # warm-up
        times, out = [], None
        for _ in range(args.repeats):
            t, out = self.timed(lambda: self.generate(model, ids, mask, N, **extra))
            times.append(t)
        got = int(out.shape[1]) - P
        if got != N:
            raise RuntimeError(f"generate produced {got} new tokens, expected {N}")
        if not static_compile:
            self.hf_tokens[(name, batch)] = out[:, P:].detach().cpu()
        t_gen = median(times)
        t_dec = t_gen - t_pre
        if t_dec <= 0:
            raise RuntimeError(f"generate time {t_gen:.4f}s <= prefill time {t_pre:.4f}s")
        per_seq = N / t_dec
        info.update(prefill_s=t_pre, prefill_samples_s=pre_times, generate_s=t_gen, generate_samples_s=times,
                    decode_s=t_dec, ms_per_step=1e3 * t_dec / (N - 1))
        return dict(prefill_tok_s=batch * P / t_pre, decode_tok_s_per_seq=per_seq, timing=info)

    # -- static_graph path -----------------------------------------------------------------------

    def cosine_rows(self, a, b):
        a, b = a.float(), b.float()
        cs = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
        rel = (a - b).abs().max() / b.abs().max().clamp_min(1e-30)
        return dict(min_cosine=float(cs.min()), argmax_agree=float(agree), max_rel_diff=float(rel))

    def static_checks(self, eng, model, ids, mask, name, batch) -> dict:
        torch = self.torch
        P = self.args.prompt_len
        checks = {}
        # 1. Prefill logits vs transformers (same weights).
        mine = eng.prefill(ids)
        ref = self.hf_last_logits(model, ids, mask)
        checks["prefill_vs_hf"] = self.cosine_rows(mine, ref)
        # 2. Decode attention: SDPA vs matmul on the same state (pos not advanced by decode_logits).
        if eng.attn_mode == "sdpa":
            la = eng.decode_logits("sdpa")
            lb = eng.decode_logits("matmul")
            checks["decode_sdpa_vs_matmul"] = self.cosine_rows(la, lb)
        # 3. Graph replay vs the same step run eagerly.
        k = min(8, self.args.new_tokens - 1)
        eng.prefill(ids)
        for _ in range(k):
            eng.step()
        eager = eng.gen[:, P:P + k + 1].clone()
        eng.prefill(ids)
        eng.replay(k)
        graph = eng.gen[:, P:P + k + 1].clone()
        self.sync()
        checks["graph_vs_eager_tokens_equal"] = bool(torch.equal(eager, graph))
        checks["graph_vs_eager_steps"] = k
        # 4. Greedy tokens vs transformers' generate (informational: bf16 near-ties diverge).
        hf = self.hf_tokens.get((name, batch))
        if hf is not None:
            mine_tok = eager.cpu()
            n = min(mine_tok.shape[1], hf.shape[1])
            lead = []
            for r in range(mine_tok.shape[0]):
                same = (mine_tok[r, :n] == hf[r, :n]).tolist()
                lead.append(same.index(False) if False in same else n)
            checks["leading_tokens_equal_to_hf"] = lead
            checks["leading_tokens_compared"] = n
        return checks

    def run_static(self, name, batch, model, weights, ids, mask):
        args = self.args
        P, N = args.prompt_len, args.new_tokens
        cache_len = cache_len_for(P, N)
        modes = [args.graph_attn] + (["matmul"] if args.graph_attn == "sdpa" else [])
        fallback_note, last_err = None, "no attention mode tried"
        for mode in modes:
            eng = None
            try:
                eng = StaticLlama(self.torch, weights, batch, cache_len, attn=mode, fuse=not args.no_fuse,
                                  fused_norm=not args.no_fused_norm)
                eng.prefill(ids)
                eng.capture()
                checks = {}
                if not args.no_check:
                    checks = self.static_checks(eng, model, ids, mask, name, batch)
                    sv = checks.get("decode_sdpa_vs_matmul")
                    if sv is not None and sv["min_cosine"] < 0.99:
                        raise RuntimeError(f"SDPA decode attention disagrees with matmul (cos {sv['min_cosine']:.4f})")
                    if not checks["graph_vs_eager_tokens_equal"]:
                        self.rep.notes.append(f"{name} b{batch} static_graph ({mode}): graph replay tokens differ "
                                              f"from the eager step's")
                    pv = checks["prefill_vs_hf"]
                    if pv["min_cosine"] < 0.99:
                        self.rep.notes.append(f"{name} b{batch} static_graph: prefill logits differ from "
                                              f"transformers' (min cosine {pv['min_cosine']:.4f}): check the step")
                # warm-up run, then timed runs
                eng.prefill(ids)
                eng.replay(N - 1)
                pre, dec = [], []
                for _ in range(args.repeats):
                    t1, _ = self.timed(lambda: eng.prefill(ids))
                    t2, _ = self.timed(lambda: eng.replay(N - 1))
                    pre.append(t1)
                    dec.append(t2)
                t_pre, t_dec = median(pre), median(dec)
                res = dict(prefill_tok_s=batch * P / t_pre, decode_tok_s_per_seq=N / t_dec,
                           timing=dict(prefill_s=t_pre, prefill_samples_s=pre, decode_s=t_dec,
                                       decode_samples_s=dec, ms_per_step=1e3 * t_dec / (N - 1),
                                       decode_steps=N - 1, cache_len=cache_len),
                           checks=checks, attn=mode, fused=not args.no_fuse, rms_norm_fused=eng.rms_fused)
                if fallback_note:
                    res["path_note"] = "matmul attn; sdpa failed"
                    res["fallback_reason"] = fallback_note
                return res
            except Exception as e:
                # Keep only the message: the traceback's frames would keep the engine's memory alive.
                fallback_note = short_error(e)
                last_err = fallback_note
                traceback.print_exc(file=sys.stderr)
                self.rep.log(f"{name} b{batch} static_graph with {mode} attention failed: {fallback_note}")
                if mode != modes[-1]:
                    self.rep.notes.append(f"{name} b{batch} static_graph: {mode} attention failed "
                                          f"({fallback_note}); retried with matmul")
            finally:
                if eng is not None:
                    eng.release()
                eng = None
                self.free()
        raise RuntimeError(last_err)

    # -- driver ------------------------------------------------------------------------------------

    def bench_shape(self, name):
        torch, args, rep = self.torch, self.args, self.rep
        s = SHAPES[name]
        skip_all = None
        if args.prompt_len + args.new_tokens > s["max_pos"]:
            skip_all = f"prompt {args.prompt_len} + new {args.new_tokens} > max positions {s['max_pos']}"
        t0 = time.perf_counter()
        model = weights = None
        if skip_all is None:
            try:
                torch.cuda.reset_peak_memory_stats()
                model = self.build_model(name)
                n_torch = sum(p.numel() for p in model.parameters())
                rep.shapes[name]["params_torch"] = int(n_torch)
                rep.shapes[name]["weight_bytes_torch"] = int(sum(p.numel() * p.element_size()
                                                                  for p in model.parameters()))
                rep.shapes[name]["attn_implementation"] = str(getattr(model.config, "_attn_implementation", None))
                if n_torch != rep.shapes[name]["params"]["total"]:
                    rep.notes.append(f"{name}: torch has {n_torch} parameters, the formula says "
                                     f"{rep.shapes[name]['params']['total']}")
                weights = weights_from_hf(model)
                rep.log(f"{name}: built {n_torch / 1e6:.1f}M params "
                        f"({'matches' if n_torch == rep.shapes[name]['params']['total'] else 'MISMATCH with'} "
                        f"the formula) [section {time.perf_counter() - t0:.1f}s]")
            except Exception as e:
                skip_all = f"model build: {short_error(e)}"
                rep.log(f"{name}: {skip_all}")
                traceback.print_exc(file=sys.stderr)
                model = weights = None
            if skip_all:
                self.free()  # outside the except block: its traceback no longer pins a half-built model
        if skip_all:
            for b in args.batches:
                for path in args.paths:
                    rep.add_row(name, b, path, error=skip_all)
            return
        try:
            # no_grad rather than inference_mode: the parameters need no autograd either way, and
            # plain tensors keep CUDA-graph capture and torch.compile clear of inference-tensor rules.
            with torch.no_grad():
                for b in args.batches:
                    ids, mask = self.prompt(s["vocab"], b)
                    for path in args.paths:
                        if rep.over_time():
                            rep.add_row(name, b, path, skipped=f"time limit {args.time_limit:g}s")
                            continue
                        t1 = time.perf_counter()
                        try:
                            if path == "hf_generate":
                                res = self.run_hf(name, b, model, ids, mask)
                            elif path == "hf_static_compile":
                                res = self.run_hf(name, b, model, ids, mask, static_compile=True)
                            else:
                                res = self.run_static(name, b, model, weights, ids, mask)
                            res["section_s"] = time.perf_counter() - t1
                            r = rep.add_row(name, b, path, **res)
                            rep.log(f"{name} b{b} {path}: prefill {fmt_num(r['prefill_tok_s'])} tok/s, decode "
                                    f"{fmt_num(r['decode_tok_s_per_seq'])} tok/s/seq "
                                    f"({fmt_num(r['decode_tok_s_aggregate'])} aggregate), "
                                    f"{fmt_num(r['pct_of_floor'])}% of floor [section {res['section_s']:.1f}s]")
                            if r.get("checks"):
                                rep.log(f"    checks: {json.dumps(sanitize(r['checks']))}")
                        except Exception as e:
                            err = short_error(e)
                            rep.log(f"{name} b{b} {path}: error: {err} [section {time.perf_counter() - t1:.1f}s]")
                            traceback.print_exc(file=sys.stderr)
                            rep.add_row(name, b, path, error=err, section_s=time.perf_counter() - t1)
                        finally:
                            self.free()
                    del ids, mask
        finally:
            rep.shapes[name]["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
            weights = None
            del model
            self.hf_prefill_cache.clear()
            if "hf_static_compile" in args.paths:
                try:
                    torch._dynamo.reset()
                except Exception:
                    pass
            self.free()
            rep.log(f"{name}: done [shape {time.perf_counter() - t0:.1f}s]")


def run_gpu(args) -> int:
    rep = Report(args, dry_run=False)
    for name in args.shapes:  # floors filled in once the copy bandwidth is measured
        rep.shapes[name] = shape_arithmetic(name, args.prompt_len, args.new_tokens, args.batches, None)

    def on_signal(signum, frame):
        raise Interrupted(f"signal {signum}")

    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except (ValueError, OSError):
            pass

    def fill_missing(**status):
        have = {(r["shape"], r["batch"], r["path"]) for r in rep.rows}
        for name in args.shapes:
            for b in args.batches:
                for path in args.paths:
                    if (name, b, path) not in have:
                        rep.add_row(name, b, path, **status)

    header_dev, versions, fatal = "no device", "", None
    try:
        try:
            bench = Bench(args, rep)
            versions = f"torch {bench.torch.__version__}"
            header_dev = bench.environment()
            t = rep.meta
            versions = f"torch {t['torch']}, CUDA {t['cuda']}, transformers {t['transformers']}"
            rep.log(f"device {header_dev}, {versions}, capability {t['device_capability']}, "
                    f"{t['device_memory_bytes'] / 2 ** 30:.1f} GiB")
        except Exception as e:
            fatal = short_error(e)
            rep.log(f"cannot run: {fatal} (try --dry-run)")
            fill_missing(error=fatal)
        if fatal is None:
            if args.time_limit and args.time_limit < 60:
                rep.notes.append(f"--time-limit {args.time_limit:g}s is short; later sections may be skipped")
            try:
                bench.copy_bandwidth()
            except Exception as e:
                rep.copy_bw = dict(error=short_error(e))
                rep.log(f"copy bandwidth: error: {short_error(e)}")
                traceback.print_exc(file=sys.stderr)
            bw = rep.copy_bw.get("bytes_per_s")
            for name in args.shapes:
                rep.shapes[name] = shape_arithmetic(name, args.prompt_len, args.new_tokens, args.batches, bw)
            for name in args.shapes:
                if rep.over_time():
                    fill_missing(skipped=f"time limit {args.time_limit:g}s")
                    break
                bench.bench_shape(name)
                rep.write_json(quiet=True)
    except Interrupted as e:
        rep.log(f"interrupted ({e}); printing what was measured")
        rep.notes.append(f"interrupted by {e}")
        fill_missing(skipped=f"interrupted ({e})")
    finally:
        for sig, h in old.items():
            try:
                signal.signal(sig, h)
            except (ValueError, OSError):
                pass
    rep.meta["elapsed_s"] = rep.elapsed()
    rep.write_json()
    date = datetime.date.today().isoformat()
    rep.print_final(f"## PyTorch reference ({header_dev}, {versions or 'torch not available'}, {date})")
    if fatal is not None:
        return 2
    bad = any(r.get("error") or r.get("skipped") for r in rep.rows) or bool(rep.copy_bw.get("error"))
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------
# --self-test
# --------------------------------------------------------------------------------------------

def _numpy_reference_logits(np, w: dict, tokens):
    """float64 numpy forward of a transformers-style Llama over `tokens`; logits of every position."""
    T = len(tokens)
    h, nh, nkv, hd = w["hidden"], w["heads"], w["kv_heads"], w["head_dim"]
    G = nh // nkv
    x = w["embed"][tokens].astype(np.float64)
    inv = 1.0 / (w["theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    freqs = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)

    def rms(v, g):
        return g * (v / np.sqrt((v * v).mean(-1, keepdims=True) + w["eps"]))

    def rope(v):  # v (T, heads, hd)
        half = hd // 2
        rot = np.concatenate([-v[..., half:], v[..., :half]], axis=-1)
        return v * cos[:, None, :] + rot * sin[:, None, :]

    causal = np.tril(np.ones((T, T), dtype=bool))
    for lw in w["layers"]:
        hn = rms(x, lw["attn_norm"])
        q = rope((hn @ lw["wq"].T).reshape(T, nh, hd))
        k = rope((hn @ lw["wk"].T).reshape(T, nkv, hd))
        v = (hn @ lw["wv"].T).reshape(T, nkv, hd)
        o = np.zeros((T, nh, hd))
        for head in range(nh):
            kvh = head // G  # transformers' repeat_kv: query head j reads kv head j // G
            sc = (q[:, head, :] @ k[:, kvh, :].T) / math.sqrt(hd)
            sc = np.where(causal, sc, -np.inf)
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            o[:, head, :] = sc @ v[:, kvh, :]
        x = x + o.reshape(T, h) @ lw["wo"].T
        hn = rms(x, lw["mlp_norm"])
        g = hn @ lw["w_gate"].T
        x = x + ((g / (1 + np.exp(-g))) * (hn @ lw["w_up"].T)) @ lw["w_down"].T
    return rms(x, w["norm"]) @ w["lm_head"].T


def _reference_sdpa(torch):
    """F.scaled_dot_product_attention's documented semantics, for torches that lack it."""
    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        assert dropout_p == 0.0
        L, S = q.shape[-2], k.shape[-2]
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        bias = torch.zeros(L, S, dtype=torch.float32, device=q.device)
        if is_causal:
            assert attn_mask is None
            bias = bias.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale + bias
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)
    return sdpa


def _reference_rms_norm(torch):
    """F.rms_norm's documented semantics (float32 statistics), for torches that lack it."""
    def rms_norm(x, normalized_shape, weight=None, eps=None):
        assert tuple(normalized_shape) == (x.shape[-1],)
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        if weight is not None:
            y = y * weight.float()
        return y.to(x.dtype)
    return rms_norm


def engine_self_test(torch) -> list:
    """Runs StaticLlama eagerly on the CPU (float32, tiny random Llamas) against the numpy reference:
    prefill logits, every decode step's logits, greedy tokens; MHA and GQA; fused and not; matmul and
    SDPA decode attention (SDPA replaced by a reference implementation where torch lacks it)."""
    import numpy as np
    problems = []
    import torch.nn.functional as F
    have_sdpa = hasattr(F, "scaled_dot_product_attention")
    have_rms = hasattr(F, "rms_norm")
    if not have_sdpa:
        F.scaled_dot_product_attention = _reference_sdpa(torch)
    if not have_rms:
        F.rms_norm = _reference_rms_norm(torch)
    try:
        rng = np.random.default_rng(1)
        for (h, nh, nkv, inter, L, vocab) in ((32, 4, 4, 48, 2, 37), (48, 6, 2, 80, 3, 41), (64, 8, 1, 96, 2, 29)):
            hd = h // nh
            sd = 0.6 / math.sqrt(h)
            lw_np = []
            for _ in range(L):
                lw_np.append(dict(attn_norm=rng.uniform(0.5, 1.5, h), wq=rng.normal(0, sd, (h, h)),
                                  wk=rng.normal(0, sd, (nkv * hd, h)), wv=rng.normal(0, sd, (nkv * hd, h)),
                                  wo=rng.normal(0, sd, (h, h)), mlp_norm=rng.uniform(0.5, 1.5, h),
                                  w_gate=rng.normal(0, sd, (inter, h)), w_up=rng.normal(0, sd, (inter, h)),
                                  w_down=rng.normal(0, 0.6 / math.sqrt(inter), (h, inter))))
            wn = dict(hidden=h, heads=nh, kv_heads=nkv, head_dim=hd, eps=1e-5, theta=10000.0, layers=lw_np,
                      embed=rng.normal(0, 1.0, (vocab, h)), norm=rng.uniform(0.5, 1.5, h),
                      lm_head=rng.normal(0, 3.0 / math.sqrt(h), (vocab, h)))

            def t(a):
                return torch.tensor(np.asarray(a), dtype=torch.float32)
            weights = LlamaWeights(t(wn["embed"]), [{k: t(v) for k, v in lw.items()} for lw in lw_np], t(wn["norm"]),
                                   t(wn["lm_head"]), 1e-5, 10000.0, nh, nkv, hd)
            B, P, N = 2, 5, 6
            prompts = rng.integers(0, vocab, (B, P))
            for fuse, mode, fnorm in ((True, "sdpa", True), (True, "matmul", False), (False, "sdpa", False),
                                      (False, "matmul", True)):
                tag = f"h{h} nh{nh} nkv{nkv} fuse={fuse} attn={mode} fused_norm={fnorm}"
                eng = StaticLlama(torch, weights, B, cache_len_for(P, N, align=8), attn=mode, fuse=fuse,
                                  fused_norm=fnorm)
                if eng.rms_fused != fnorm:
                    problems.append(f"{tag}: rms_fused is {eng.rms_fused}")
                with torch.no_grad():
                    logits = eng.prefill(torch.tensor(prompts, dtype=torch.long)).double().numpy()
                    seqs = [list(prompts[r]) for r in range(B)]
                    for r in range(B):
                        ref = _numpy_reference_logits(np, wn, seqs[r])[-1]
                        err = np.abs(logits[r] - ref).max() / np.abs(ref).max()
                        if err > 1e-4:
                            problems.append(f"{tag}: prefill logits row {r} rel err {err:.2e}")
                        seqs[r].append(int(np.argmax(ref)))
                    for step in range(N - 1):
                        pos_before = int(eng.pos.item())
                        lg = eng.decode_logits().double().numpy()
                        if int(eng.pos.item()) != pos_before:
                            problems.append(f"{tag}: decode_logits advanced pos")
                        for r in range(B):
                            if int(eng.tok[r]) != seqs[r][-1]:
                                problems.append(f"{tag}: step {step} row {r} feeds token {int(eng.tok[r])}, "
                                                f"expected {seqs[r][-1]}")
                            ref = _numpy_reference_logits(np, wn, seqs[r])[-1]
                            err = np.abs(lg[r] - ref).max() / np.abs(ref).max()
                            if err > 1e-4:
                                problems.append(f"{tag}: step {step} row {r} logits rel err {err:.2e}")
                            seqs[r].append(int(np.argmax(ref)))
                        eng.step()
                    if int(eng.pos.item()) != P + N - 1:
                        problems.append(f"{tag}: pos {int(eng.pos.item())} after {N - 1} steps, expected {P + N - 1}")
                    gen = eng.gen[:, :P + N].numpy()
                    for r in range(B):
                        if list(gen[r]) != [int(v) for v in seqs[r]]:
                            problems.append(f"{tag}: row {r} tokens {list(gen[r])} != reference {seqs[r]}")
                    # cache beyond the written positions must still be zero (masked, never read)
                    if float(eng.k_cache[0][:, :, P + N - 1:].abs().sum()) != 0.0:
                        problems.append(f"{tag}: cache written past position {P + N - 2}")
    finally:
        if not have_sdpa:
            del F.scaled_dot_product_attention
        if not have_rms:
            del F.rms_norm
    return problems


def self_test() -> int:
    problems = list(check_arithmetic())
    # parsing
    try:
        a = parse_args(["--shapes", "TinyLlama,llama2-7b,tinyllama", "--batches", "8,1,8", "--paths",
                        "static_graph", "--repeats", "2"])
        if a.shapes != ["tinyllama", "llama2-7b"] or a.batches != [8, 1] or a.paths != ["static_graph"]:
            problems.append(f"parse: got {a.shapes} {a.batches} {a.paths}")
        a = parse_args(["--compile"])
        if a.paths != ["hf_generate", "static_graph", "hf_static_compile"]:
            problems.append(f"parse --compile: paths {a.paths}")
        a = parse_args([])
        if a.shapes != list(SHAPES) or a.batches != [1, 8] or a.repeats != 3 or a.prompt_len != 512 \
                or a.new_tokens != 256 or a.paths != list(DEFAULT_PATHS):
            problems.append("parse: defaults differ from the spec")
    except SystemExit:
        problems.append("parse: valid arguments rejected")
    for bad in (["--shapes", "gpt2"], ["--batches", "0"], ["--batches", "x"], ["--paths", "foo"],
                ["--new-tokens", "1"], ["--repeats", "0"], ["--assume-bw-tbs", "-1"]):
        try:
            import contextlib
            import io
            with contextlib.redirect_stderr(io.StringIO()):
                parse_args(bad)
            problems.append(f"parse: {bad} accepted")
        except SystemExit:
            pass
    # table
    rep = Report(parse_args(["--shapes", "stories110M", "--batches", "1"]), dry_run=True)
    rep.shapes["stories110M"] = shape_arithmetic("stories110M", 512, 256, [1], 3e12)
    r = rep.add_row("stories110M", 1, "static_graph", prefill_tok_s=1000.0, decode_tok_s_per_seq=5593.0)
    if abs(r["pct_of_floor"] - 100.0 * 5593.0 / (3e12 / (134105856 * 2))) > 1e-9:
        problems.append(f"pct_of_floor {r['pct_of_floor']}")
    rep.add_row("stories110M", 8, "hf_generate", error="OutOfMemoryError: CUDA out | of memory\nmore")
    table = markdown_table(rep.rows).splitlines()
    if len(table) != 4 or any(line.count("|") != len(COLUMNS) + 1 for line in table):
        problems.append("table: wrong shape:\n" + "\n".join(table))
    if "error: OutOfMemoryError" not in table[3]:
        problems.append("table: error row not shown")
    json.dumps(rep.to_json(), allow_nan=False)
    if cache_len_for(512, 256) != 768 or cache_len_for(500, 1) != 512:
        problems.append("cache_len_for")
    # floors at 3 TB/s
    want = {"stories110M": 11185.3, "tinyllama": 1363.6, "llama2-7b": 222.6}
    for name, f in want.items():
        got = shape_arithmetic(name, 512, 256, [1], 3e12)["floor_tok_s"]
        if abs(got / f - 1) > 1e-3:
            problems.append(f"floor {name}: {got} vs {f}")
    # the decode engine, if torch imports here
    try:
        import torch
    except Exception:
        print("self-test: torch not importable here; decode-engine test skipped", flush=True)
    else:
        print(f"self-test: decode engine on CPU with torch {torch.__version__}", flush=True)
        problems += engine_self_test(torch)
    for p in problems:
        print(f"FAIL: {p}", flush=True)
    print("self-test: " + ("ok" if not problems else f"{len(problems)} problem(s)"), flush=True)
    return 1 if problems else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.self_test:
        return self_test()
    if args.dry_run:
        return dry_run(args)
    return run_gpu(args)


if __name__ == "__main__":
    sys.exit(main())
