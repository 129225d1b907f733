#!/usr/bin/env python3
"""torch_attention_bench: PyTorch's scaled_dot_product_attention on the shapes of attention_bench.

The reference flash_cuda is compared against, in the same run on the same GPU: SDPA with its
FLASH_ATTENTION and CUDNN_ATTENTION backends, bf16, CUDA-event timing, median of --reps timings of
many calls, inputs random and rotated so the working set exceeds the L2 cache.
  prefill: d 64 and 128, causal and not, s = 512, 2K, 8K, 16K, b*s = 16K, 2048/d heads;
           TFLOP/s = 4*b*h*s^2*d / t (halved when causal).
  decode:  32 query heads over 8 kv heads, d = 128, b in {1, 8, 32}, kv in {1K, 4K, 16K}; the 4 query
           heads of a kv head are laid out on SDPA's query-length axis (non-causal: a decode query sees
           every key), so K and V are read once, not copied per head; TB/s = bytes of K and V / t.
Prints a markdown table. Needs torch with CUDA (the GPU machine); no network.
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def shapes(what, dims=(64, 128), lens=(512, 2048, 8192, 16384), batches=(1, 8, 32), kv_lens=(1024, 4096, 16384)):
    out = []
    if what in ("prefill", "all"):
        for d in dims:
            for causal in (False, True):
                for s in lens:
                    out.append(dict(decode=False, b=16384 // s, s=s, kv=s, hq=2048 // d, hkv=2048 // d, d=d, causal=causal))
    if what in ("decode", "all"):
        for b in batches:
            for kv in kv_lens:
                out.append(dict(decode=True, b=b, s=1, kv=kv, hq=32, hkv=8, d=128, causal=True))
    return out


def make_inputs(sh, gen):
    b, d = sh["b"], sh["d"]
    if sh["decode"]:
        group = sh["hq"] // sh["hkv"]
        q = torch.randn(b, sh["hkv"], group, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    else:
        q = torch.randn(b, sh["hq"], sh["s"], d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(b, sh["hkv"], sh["kv"], d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn_like(k)
    return q, k, v


def time_backend(sh, backend, reps):
    gen = torch.Generator(device="cuda").manual_seed(1234)
    sets = [make_inputs(sh, gen)]
    per = sum(t.numel() * 2 for t in sets[0]) * 2
    while len(sets) < 8 and len(sets) * per < (256 << 20):
        sets.append(make_inputs(sh, gen))
    causal = sh["causal"] and not sh["decode"]
    with sdpa_kernel([BACKENDS[backend]]):
        def call(i):
            q, k, v = sets[i % len(sets)]
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        try:
            for i in range(3):
                call(i)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - a backend that refuses the shape is reported, not fatal
            return None, str(e).splitlines()[0][:120]
        iters = 200 if sh["decode"] else max(3, int(2e4 / ((sh["kv"] / 512) ** 2 * 16)))
        times = []
        for _ in range(reps):
            a, bev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for i in range(iters):
                call(i)
            bev.record()
            bev.synchronize()
            times.append(a.elapsed_time(bev) / iters)
    return statistics.median(times), None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default="all", choices=["prefill", "decode", "all"])
    ap.add_argument("--reps", type=int, default=7)
    ints = lambda text: tuple(int(x) for x in text.split(","))  # noqa: E731
    ap.add_argument("--dims", type=ints, default=(64, 128), help="prefill head dims, e.g. 64,128")
    ap.add_argument("--lens", type=ints, default=(512, 2048, 8192, 16384), help="prefill lengths")
    ap.add_argument("--batches", type=ints, default=(1, 8, 32), help="decode batch sizes")
    ap.add_argument("--kv-lens", type=ints, default=(1024, 4096, 16384), help="decode kv lengths")
    ap.add_argument("--backends", default="flash,cudnn", help="SDPA backends: flash, cudnn")
    args = ap.parse_args()
    backends = args.backends.split(",")
    if any(b not in BACKENDS for b in backends):
        ap.error(f"--backends {args.backends!r}: expected a comma list of {', '.join(BACKENDS)}")
    print(f"## torch_attention_bench ({torch.cuda.get_device_name()}, torch {torch.__version__}, bf16)\n")
    print("| call | d | causal | batch | q len | kv len | heads q/kv | sdpa flash | sdpa cudnn | unit |")
    print("|---|---:|---|---:|---:|---:|---|---:|---:|---|")
    for sh in shapes(args.what, args.dims, args.lens, args.batches, args.kv_lens):
        cells = []
        for backend in BACKENDS:
            if backend not in backends:
                cells.append("-")
                continue
            ms, err = time_backend(sh, backend, args.reps)
            if ms is None:
                cells.append("n/a")
                print(f"<!-- {backend}: {err} -->")
                continue
            if sh["decode"]:
                fig = sh["b"] * sh["kv"] * sh["hkv"] * sh["d"] * 2 * 2 / (ms * 1e-3) / 1e12
            else:
                fig = 4 * sh["b"] * sh["hq"] * sh["s"] * sh["kv"] * sh["d"] / (ms * 1e-3) / 1e12
                fig /= 2 if sh["causal"] else 1
            cells.append(f"{fig:.3f} ({ms:.3f} ms)")
        print(f"| {'decode' if sh['decode'] else 'prefill'} | {sh['d']} | {'yes' if sh['causal'] else 'no'} | "
              f"{sh['b']} | {sh['s']} | {sh['kv']} | {sh['hq']}/{sh['hkv']} | {cells[0]} | {cells[1]} | "
              f"{'TB/s of K+V' if sh['decode'] else 'TFLOP/s'} |", flush=True)


if __name__ == "__main__":
    main()
