#!/usr/bin/env python3
"""Runs torch_decode_bench.py's GPU driver on the CPU with fakes, to catch plumbing bugs without a GPU.

Needs torch (any version, CPU is enough; Debian's python3-torch 1.13 works) and numpy; no
transformers, no CUDA. torch.cuda's synchronize/events/streams/graphs are replaced by stand-ins
(a "graph" replays the captured step eagerly), transformers by a tiny LlamaForCausalLM look-alike
whose forward and generate use the script's own StaticLlama, so every code path of the driver runs:
model build bookkeeping, hf_generate and hf_static_compile timing, static_graph with its checks and
its SDPA -> matmul fallback, error rows, time-limit skips, SIGTERM-style interruption, JSON and
the table. It checks the real capture() code runs, not that CUDA graphs work.

    python3 benches/torch_decode_bench_plumbing_test.py      # prints 'N passed, 0 failed'
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import time
import types
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except Exception as e:  # pragma: no cover
    print(f"torch not importable ({e}): skipped")
    print("0 passed, 0 failed, 1 skipped")
    sys.exit(0)

import torch_decode_bench as tdb  # noqa: E402

TINY = dict(hidden=32, intermediate=48, layers=2, heads=4, kv_heads=2, vocab=50, max_pos=64)


# ---------------------------------------------------------------------------------------------- fakes

class FakeEvent:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self, *a):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return max((other.t - self.t) * 1e3, 1e-6)


class FakeStream:
    def wait_stream(self, other):
        pass


class FakeGraph:
    def __init__(self):
        self.fn = None

    def replay(self):
        if self.fn is None:
            raise RuntimeError("fake graph has no step")
        self.fn()


def install_fake_cuda():
    c = torch.cuda
    c.synchronize = lambda *a, **k: None
    c.is_available = lambda: True
    c.current_device = lambda: 0
    c.get_device_properties = lambda d: SimpleNamespace(total_memory=80 * 2 ** 30, major=9, minor=0,
                                                        multi_processor_count=132)
    c.get_device_name = lambda d=None: "Fake H100"
    c.Event = FakeEvent
    c.reset_peak_memory_stats = lambda *a: None
    c.max_memory_allocated = lambda *a: 0
    c.empty_cache = lambda: None
    c.Stream = lambda *a, **k: FakeStream()
    c.stream = lambda s: contextlib.nullcontext()
    c.current_stream = lambda *a: FakeStream()
    c.CUDAGraph = FakeGraph
    c.graph = lambda g, *a, **k: contextlib.nullcontext()
    if not hasattr(F, "scaled_dot_product_attention"):
        F.scaled_dot_product_attention = tdb._reference_sdpa(torch)
    fake_tf = types.ModuleType("transformers")
    fake_tf.__version__ = "fake-5"
    fake_tf.logging = SimpleNamespace(set_verbosity_error=lambda: None)
    sys.modules["transformers"] = fake_tf

    orig_capture = tdb.StaticLlama.capture

    def capture(self, warmup_steps=2):
        orig_capture(self, warmup_steps)  # the real code, with the fakes above (its steps run eagerly)
        self.graph.fn = self.step

    tdb.StaticLlama.capture = capture


class Norm(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))
        self.variance_epsilon = 1e-5


class FakeLlama(nn.Module):
    """Module tree and config attributes of transformers' LlamaForCausalLM (what the script reads)."""

    def __init__(self, s, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        h, inter, nh, nkv = s["hidden"], s["intermediate"], s["heads"], s["kv_heads"]
        hd = h // nh
        self.config = SimpleNamespace(hidden_act="silu", num_attention_heads=nh, num_key_value_heads=nkv,
                                      head_dim=hd, hidden_size=h, rms_norm_eps=1e-5, _attn_implementation="sdpa",
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        self.generation_config = SimpleNamespace()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(s["vocab"], h)
        self.model.layers = nn.ModuleList()
        for _ in range(s["layers"]):
            layer = nn.Module()
            layer.self_attn = nn.Module()
            for n, o in (("q_proj", h), ("k_proj", nkv * hd), ("v_proj", nkv * hd), ("o_proj", h)):
                setattr(layer.self_attn, n, nn.Linear(h, o, bias=False))
            layer.mlp = nn.Module()
            layer.mlp.gate_proj = nn.Linear(h, inter, bias=False)
            layer.mlp.up_proj = nn.Linear(h, inter, bias=False)
            layer.mlp.down_proj = nn.Linear(inter, h, bias=False)
            layer.input_layernorm = Norm(h)
            layer.post_attention_layernorm = Norm(h)
            self.model.layers.append(layer)
        self.model.norm = Norm(h)
        self.lm_head = nn.Linear(h, s["vocab"], bias=False)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.3)
        self.requires_grad_(False)
        self.fail_generate = False

    def _engine(self, batch, length):
        return tdb.StaticLlama(torch, tdb.weights_from_hf(self), batch, length + 2, attn="matmul", fuse=False)

    def forward(self, input_ids=None, attention_mask=None, use_cache=False, logits_to_keep=0):
        assert logits_to_keep == 1
        eng = self._engine(input_ids.shape[0], input_ids.shape[1])
        return SimpleNamespace(logits=eng.prefill(input_ids)[:, None, :])

    def generate(self, ids, attention_mask=None, max_new_tokens=None, min_new_tokens=None, do_sample=None,
                 use_cache=None, pad_token_id=None, **extra):
        assert max_new_tokens == min_new_tokens and do_sample is False and use_cache is True
        assert set(extra) <= {"cache_implementation"}
        if self.fail_generate:
            raise RuntimeError("CUDA out of memory | fake")
        time.sleep(0.02)  # keeps generate() slower than a forward, as it is on a GPU
        B, P = ids.shape
        eng = self._engine(B, P + max_new_tokens)
        eng.prefill(ids)
        for _ in range(max_new_tokens - 1):
            eng.step()
        return eng.gen[:, :P + max_new_tokens].clone()


def patch_bench(model_holder):
    def build_model(self, name):
        m = FakeLlama(tdb.SHAPES[name], seed=self.args.seed)
        model_holder.append(m)
        return m

    def prompt(self, vocab, batch):
        g = torch.Generator()
        g.manual_seed(self.args.seed + 1)
        ids = torch.randint(3, vocab, (max(self.args.batches), self.args.prompt_len), generator=g)[:batch]
        return ids.contiguous(), torch.ones_like(ids)

    def copy_bandwidth(self):
        self.rep.copy_bw = dict(gib=0, bytes=0, bytes_per_s=3e12, max_bytes_per_s=3e12, samples=[3e12])

    tdb.Bench.build_model = build_model
    tdb.Bench.prompt = prompt
    tdb.Bench.copy_bandwidth = copy_bandwidth


# ---------------------------------------------------------------------------------------------- tests

def run(argv):
    out = io.StringIO()
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = tdb.main(argv)
    return rc, out.getvalue(), err.getvalue()


BASE = ["--shapes", "tiny", "--batches", "1,3", "--prompt-len", "6", "--new-tokens", "5", "--repeats", "2"]


def main():
    install_fake_cuda()
    tdb.SHAPES["tiny"] = TINY
    models = []
    patch_bench(models)
    tmp = tempfile.mkdtemp()
    jpath = os.path.join(tmp, "r.json")
    results = []

    def check(name, cond, detail=""):
        results.append((name, bool(cond)))
        print(f"{'ok  ' if cond else 'FAIL'} {name}" + ("" if cond else f": {detail}"))

    # 1. everything runs, all figures present, checks pass
    rc, out, err = run(BASE + ["--compile", "--json", jpath])
    d = json.load(open(jpath))
    rows = d["results"]
    check("full run exit 0", rc == 0, f"rc {rc}\n{out}\n{err}")
    check("6 rows (2 batches x 3 paths)", len(rows) == 6, [r["path"] for r in rows])
    check("all rows have figures", all(r["decode_tok_s_per_seq"] and r["prefill_tok_s"] and r["pct_of_floor"]
                                       for r in rows), rows)
    check("aggregate = batch x per seq", all(r["decode_tok_s_per_seq"] and abs(r["decode_tok_s_aggregate"] - r["batch"]
                                             * r["decode_tok_s_per_seq"]) < 1e-6 * r["decode_tok_s_aggregate"]
                                             for r in rows))
    st = [r for r in rows if r["path"] == "static_graph"]
    for r in st:
        c = r["checks"]
        check(f"b{r['batch']} prefill matches 'HF'", c["prefill_vs_hf"]["min_cosine"] > 0.9999, c)
        check(f"b{r['batch']} sdpa == matmul decode", c["decode_sdpa_vs_matmul"]["min_cosine"] > 0.9999, c)
        check(f"b{r['batch']} graph tokens == eager", c["graph_vs_eager_tokens_equal"] is True, c)
        check(f"b{r['batch']} tokens == 'HF' generate", c["leading_tokens_equal_to_hf"] == [c["leading_tokens_compared"]]
              * r["batch"] and c["leading_tokens_compared"] == 5, c)
        check(f"b{r['batch']} timing fields", r["timing"]["decode_steps"] == 4 and r["timing"]["cache_len"] == 64
              and r["attn"] == "sdpa", r["timing"])
    comp = [r for r in rows if r["path"] == "hf_static_compile"]
    check("compile_s recorded", all("compile_s" in r["timing"] for r in comp))
    check("params_torch matches formula", d["shapes"]["tiny"]["params_torch"] == d["shapes"]["tiny"]["params"]["total"])
    lines = out.rstrip().splitlines()
    check("table is last", lines[-1].startswith("| tiny") and lines[-8].startswith("| shape"), "\n".join(lines[-9:]))
    check("header line", any(ln.startswith("## PyTorch reference (Fake H100, torch ") for ln in lines))
    check("JSON strict", json.dumps(d, allow_nan=False) is not None)

    # 2. SDPA failing inside decode -> matmul fallback, noted in the table
    real = F.scaled_dot_product_attention

    def bad_sdpa(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            raise RuntimeError("fake: no kernel for this mask")
        return real(q, k, v, attn_mask=attn_mask, **kw)

    F.scaled_dot_product_attention = bad_sdpa
    try:
        rc, out, err = run(BASE + ["--paths", "static_graph", "--json", jpath])
    finally:
        F.scaled_dot_product_attention = real
    rows = json.load(open(jpath))["results"]
    check("fallback rows measured", rc == 0 and all(r["attn"] == "matmul" and r["decode_tok_s_per_seq"] for r in rows),
          f"rc {rc} {rows}")
    check("fallback shown in table", "static_graph (matmul attn; sdpa failed)" in out, out[-800:])

    # 3. an error in one section is recorded and the run goes on
    orig_build = tdb.Bench.build_model

    def failing_build(self, name):
        m = orig_build(self, name)
        m.fail_generate = True
        return m

    tdb.Bench.build_model = failing_build
    try:
        rc, out, err = run(BASE + ["--json", jpath])
    finally:
        tdb.Bench.build_model = orig_build
    rows = json.load(open(jpath))["results"]
    hf = [r for r in rows if r["path"] == "hf_generate"]
    st = [r for r in rows if r["path"] == "static_graph"]
    check("error rows", rc == 1 and all(r["error"] and "out of memory" in r["error"] for r in hf), rows)
    check("other path still measured", all(r["decode_tok_s_per_seq"] for r in st), st)
    check("error cell escaped", "error: RuntimeError: CUDA out of memory / fake" in out, out[-600:])

    # 4. soft time limit
    rc, out, err = run(BASE + ["--time-limit", "0.000001", "--json", jpath])
    rows = json.load(open(jpath))["results"]
    check("time limit skips", rc == 1 and len(rows) == 4 and all(r["skipped"] for r in rows), rows)

    # 5. interruption (as SIGTERM would raise it) keeps measured rows and fills the rest
    orig_run_static = tdb.Bench.run_static
    calls = []

    def interrupting(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise tdb.Interrupted("signal 15")
        return orig_run_static(self, *a, **k)

    tdb.Bench.run_static = interrupting
    try:
        rc, out, err = run(BASE + ["--json", jpath])
    finally:
        tdb.Bench.run_static = orig_run_static
    d = json.load(open(jpath))
    rows = d["results"]
    got = {(r["batch"], r["path"]): r for r in rows}
    check("interrupt: 4 rows", len(rows) == 4, rows)
    check("interrupt: measured kept", got[(1, "hf_generate")]["decode_tok_s_per_seq"]
          and got[(1, "static_graph")]["decode_tok_s_per_seq"], rows)
    check("interrupt: rest skipped", got[(3, "static_graph")]["skipped"] and "interrupted" in
          got[(3, "static_graph")]["skipped"], rows)
    check("interrupt: table printed", out.rstrip().splitlines()[-1].startswith("| tiny"))

    # 6. prompt + new tokens beyond max positions -> error rows, no crash
    rc, out, err = run(["--shapes", "tiny", "--batches", "1", "--prompt-len", "60", "--new-tokens", "8",
                        "--json", jpath])
    rows = json.load(open(jpath))["results"]
    check("too long -> error rows", rc == 1 and all("max positions" in r["error"] for r in rows), rows)

    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
