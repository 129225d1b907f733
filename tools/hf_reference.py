#!/usr/bin/env python3
"""Independent reference for greedy generation on a llama2.c checkpoint, via Hugging Face transformers.

Loads a llama2.c legacy (version 0, fp32) checkpoint such as stories260K.bin into transformers'
LlamaForCausalLM in float64 on the CPU, greedy-decodes a few prompts and writes the generated ids,
per-step top-1 logits and top1-top2 margins (to flag near-ties) and two full logit vectors per
prompt to a JSON file that the C++ runtime's tests can compare against.

Before it trusts transformers, it checks it: a float64 numpy port of llama2.c's run.c forward pass
(interleaved RoPE on unpermuted weights) must agree with HF's logits to < 1e-9 over the first
prompt and 20 generated tokens, and its greedy continuation must match; then every step of every
prompt is compared with it too. A disagreement would mean the wq/wk permutation or the config is
wrong, and the script stops without writing anything.

Precision: stock transformers computes RMSNorm, the RoPE cos/sin and the attention softmax in
float32 even for a float64 model. By default those three are kept in float64 (see Fp64Patches;
the rest is HF's own code); --no-fp64-patches runs stock HF with a looser self-check tolerance.
Either way the self-check also reports how far stock HF is from the numpy forward.
Seen with transformers 5.17.0 / torch 2.11.0: HF vs numpy 3e-14 (patched), 3e-6 (stock); the
greedy ids are the same either way, on cpu and cuda.

Usage (GPU machine, Python 3 with torch, transformers, numpy, sentencepiece; no network needed):
    python3 tools/hf_reference.py --model ../shared/models/stories260K.bin \\
        --tokenizer ../shared/models/tok512.model --out hf_reference.json

Torch-free modes (numpy only):
    python3 tools/hf_reference.py --self-test [--model PATH]
    python3 tools/hf_reference.py --numpy-only --model PATH --prompt-ids 1,403,407,...
    python3 tools/hf_reference.py --numpy-only --model PATH --prompt "Once upon a time"
(--numpy-only encodes --prompt with a port of llama2.c's BPE on tok512.bin, next to the model.)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import math
import os
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_PROMPTS = [
    "Once upon a time",
    "Lily and Ben were playing in the garden when",
    "The little dog",
    "One day, a big red ball",
    "Tom had a toy car. He",
]
DEFAULT_STEPS = 200
SELF_CHECK_TOKENS = 20  # generated tokens of the first prompt that the numpy forward re-checks
FP64_TOLERANCE = 1e-9  # numpy vs HF max |logit diff| with float64 kept throughout
STOCK_TOLERANCE = 1e-3  # the same for stock HF (float32 RMSNorm/RoPE/softmax inside)
RMS_EPS = 1e-5
ROPE_THETA = 10000.0
BOS_ID = 1
EOS_ID = 2
# What greedy decoding of "Once upon a time" must start with (checked by --self-test).
EXPECTED_ONCE_UPON = ("Once upon a time, there was a little girl named Lily. "
                      "She loved to play outside in the park.")


class CheckFailed(Exception):
    """A failed check or bad input; main() prints it and exits 1."""


def fail(message: str):
    raise CheckFailed(message)


# ================================================================================================
# 1. Checkpoint (llama2.c legacy v0, fp32 little-endian)
# ================================================================================================

@dataclasses.dataclass
class Checkpoint:
    """The header and float64 copies of every tensor, in llama2.c's (out, in) layout."""
    path: str
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    token_embedding: np.ndarray  # (vocab, dim)
    rms_att: np.ndarray          # (L, dim)
    wq: np.ndarray               # (L, dim, dim)
    wk: np.ndarray               # (L, kv_dim, dim)
    wv: np.ndarray               # (L, kv_dim, dim)
    wo: np.ndarray               # (L, dim, dim)
    rms_ffn: np.ndarray          # (L, dim)
    w1: np.ndarray               # (L, hidden, dim)
    w2: np.ndarray               # (L, dim, hidden)
    w3: np.ndarray               # (L, hidden, dim)
    rms_final: np.ndarray        # (dim,)
    freq_cis_real: np.ndarray    # (seq_len, head_size/2), unused by run.c; checked against our RoPE
    freq_cis_imag: np.ndarray
    wcls: np.ndarray             # (vocab, dim); the embedding itself when shared

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size


def load_checkpoint(path: str) -> Checkpoint:
    """Parses and validates a legacy llama2.c checkpoint; every tensor becomes float64."""
    data = Path(path).read_bytes()
    header_size = 7 * 4
    if len(data) < header_size:
        fail(f"{path}: {len(data)} bytes, too short for a llama2.c header")
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("<7i", data[:header_size])
    if struct.unpack_from("<I", data, 0)[0] == 0x616B3432:  # "ak42", llama2.c export v1/v2
        fail(f"{path}: a version 1/2 llama2.c checkpoint (magic ak42); only legacy v0 fp32 is supported")
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len) <= 0:
        fail(f"{path}: bad header {dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len}")
    if dim % n_heads or n_heads % n_kv_heads or (dim // n_heads) % 2:
        fail(f"{path}: dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv_heads} do not fit together")
    head_size = dim // n_heads
    kv_dim = n_kv_heads * head_size
    shapes = [
        ("token_embedding", (vocab, dim)),
        ("rms_att", (n_layers, dim)),
        ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, kv_dim, dim)),
        ("wv", (n_layers, kv_dim, dim)),
        ("wo", (n_layers, dim, dim)),
        ("rms_ffn", (n_layers, dim)),
        ("w1", (n_layers, hidden, dim)),
        ("w2", (n_layers, dim, hidden)),
        ("w3", (n_layers, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_cis_real", (seq_len, head_size // 2)),
        ("freq_cis_imag", (seq_len, head_size // 2)),
    ]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    n_floats = sum(int(np.prod(s)) for _, s in shapes)
    expected = header_size + 4 * n_floats
    if len(data) != expected:
        fail(f"{path}: {len(data)} bytes, but the header (dim {dim}, hidden {hidden}, layers {n_layers}, "
             f"heads {n_heads}/{n_kv_heads}, vocab {vocab}, seq {seq_len}, "
             f"{'shared' if shared else 'separate'} classifier) implies {expected}")
    floats = np.frombuffer(data, dtype="<f4", offset=header_size, count=n_floats)
    tensors = {}
    offset = 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        tensors[name] = floats[offset:offset + n].astype(np.float64).reshape(shape)
        offset += n
    if not all(np.isfinite(t).all() for t in tensors.values()):
        fail(f"{path}: non-finite weights")
    if shared:
        tensors["wcls"] = tensors["token_embedding"]
    return Checkpoint(path=path, dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_kv_heads, vocab_size=vocab, seq_len=seq_len,
                      shared_classifier=shared, **tensors)


# ================================================================================================
# 2. llama2.c tokenizer (tok512.bin): only for the torch-free modes and a cross-check
# ================================================================================================

class Llama2cTokenizer:
    """A port of run.c's encode()/decode() on a llama2.c tokenizer.bin."""

    def __init__(self, path: str, vocab_size: int):
        data = Path(path).read_bytes()
        (self.max_token_length,) = struct.unpack_from("<i", data, 0)
        offset = 4
        self.pieces: list[bytes] = []
        self.scores: list[float] = []
        for i in range(vocab_size):
            if offset + 8 > len(data):
                fail(f"{path}: truncated at token {i}")
            score, length = struct.unpack_from("<fi", data, offset)
            offset += 8
            if length < 0 or offset + length > len(data):
                fail(f"{path}: bad length {length} at token {i}")
            self.pieces.append(data[offset:offset + length])
            self.scores.append(score)
            offset += length
        if offset != len(data):
            fail(f"{path}: {len(data) - offset} trailing bytes after {vocab_size} tokens")
        # run.c looks pieces up by bsearch over a sorted copy; with unique pieces a dict is the same.
        self.lookup: dict[bytes, int] = {}
        for i, piece in enumerate(self.pieces):
            self.lookup.setdefault(piece, i)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """run.c encode(): dummy-prefix space, UTF-8 code points (byte fallback +3), then merge the
        best-scoring adjacent pair until none merges."""
        tokens = [BOS_ID] if bos else []
        raw = text.encode("utf-8")
        if raw:
            tokens.append(self.lookup[b" "])
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.lookup:
                tokens.append(self.lookup[b])
            else:
                tokens.extend(byte + 3 for byte in b)
        while True:
            best_score, best_idx, best_id = -1e10, -1, -1
            for i in range(len(tokens) - 1):
                merged = self.pieces[tokens[i]] + self.pieces[tokens[i + 1]]
                tid = self.lookup.get(merged)
                if tid is not None and self.scores[tid] > best_score:
                    best_score, best_idx, best_id = self.scores[tid], i, tid
            if best_idx < 0:
                break
            tokens[best_idx:best_idx + 2] = [best_id]
        return tokens

    def decode_piece(self, prev_token: int, token: int) -> bytes:
        """run.c decode(): drop the leading space after BOS; <0xAB> pieces are raw bytes."""
        piece = self.pieces[token]
        if prev_token == BOS_ID and piece.startswith(b" "):
            piece = piece[1:]
        m = re.fullmatch(rb"<0x([0-9A-Fa-f]{2})>", piece)
        if m:
            piece = bytes([int(m.group(1), 16)])
        return piece

    def decode(self, ids: list[int]) -> str:
        out = b""
        for prev, tok in zip([-1] + ids[:-1], ids):
            if tok == BOS_ID and prev == -1:
                continue  # the leading BOS prints nothing (run.c never decodes it)
            out += self.decode_piece(prev, tok)
        return out.decode("utf-8", errors="replace")


# ================================================================================================
# 3. numpy float64 port of llama2.c's forward pass (interleaved RoPE, unpermuted weights)
# ================================================================================================

def rmsnorm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """run.c rmsnorm over the last axis: w * x / sqrt(mean(x^2) + eps)."""
    ss = np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS
    return w * (x / np.sqrt(ss))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope_freqs(head_size: int) -> np.ndarray:
    """freq of pair j (dims 2j, 2j+1 of a head): 1 / theta^(2j / head_size)."""
    return 1.0 / (ROPE_THETA ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size))


def rope_interleaved(vec: np.ndarray, positions: np.ndarray, head_size: int) -> np.ndarray:
    """run.c RoPE: rotates adjacent pairs (2j, 2j+1) within each head by angle pos * freq_j.
    vec: (T, n_heads * head_size); positions: (T,)."""
    T, width = vec.shape
    v = vec.reshape(T, width // head_size, head_size // 2, 2)
    angle = positions.astype(np.float64)[:, None] * rope_freqs(head_size)[None, :]  # (T, hs/2)
    c = np.cos(angle)[:, None, :]
    s = np.sin(angle)[:, None, :]
    v0, v1 = v[..., 0], v[..., 1]
    out = np.stack([v0 * c - v1 * s, v0 * s + v1 * c], axis=-1)
    return out.reshape(T, width)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


class Llama2cNumpy:
    """llama2.c's transformer in float64. forward_token() follows run.c step by step (KV cache,
    per-head loops); forward_sequence() is the same math over a whole sequence at once."""

    def __init__(self, ck: Checkpoint):
        self.ck = ck
        self.reset()

    def reset(self):
        ck = self.ck
        self.key_cache = np.zeros((ck.n_layers, ck.seq_len, ck.kv_dim))
        self.value_cache = np.zeros((ck.n_layers, ck.seq_len, ck.kv_dim))

    def forward_token(self, token: int, pos: int) -> np.ndarray:
        """Logits (vocab,) for `token` at `pos`; positions 0..pos-1 must already be cached."""
        ck = self.ck
        hs = ck.head_size
        kv_mul = ck.n_heads // ck.n_kv_heads
        x = ck.token_embedding[token].copy()
        p = np.array([pos])
        for l in range(ck.n_layers):
            xb = rmsnorm(x, ck.rms_att[l])
            q = ck.wq[l] @ xb
            k = ck.wk[l] @ xb
            v = ck.wv[l] @ xb
            q = rope_interleaved(q[None, :], p, hs)[0]
            k = rope_interleaved(k[None, :], p, hs)[0]
            self.key_cache[l, pos] = k
            self.value_cache[l, pos] = v
            att_out = np.zeros(ck.dim)
            for h in range(ck.n_heads):
                qh = q[h * hs:(h + 1) * hs]
                kvh = h // kv_mul  # GQA: query head h reads kv head h // (n_heads / n_kv_heads)
                keys = self.key_cache[l, :pos + 1, kvh * hs:(kvh + 1) * hs]
                vals = self.value_cache[l, :pos + 1, kvh * hs:(kvh + 1) * hs]
                att = softmax(keys @ qh / math.sqrt(hs))
                att_out[h * hs:(h + 1) * hs] = att @ vals
            x = x + ck.wo[l] @ att_out
            xb = rmsnorm(x, ck.rms_ffn[l])
            x = x + ck.w2[l] @ (silu(ck.w1[l] @ xb) * (ck.w3[l] @ xb))
        x = rmsnorm(x, ck.rms_final)
        return ck.wcls @ x

    def forward_sequence(self, tokens: list[int]) -> np.ndarray:
        """Logits (T, vocab) at every position of `tokens` (causal), without touching the cache."""
        ck = self.ck
        hs = ck.head_size
        kv_mul = ck.n_heads // ck.n_kv_heads
        T = len(tokens)
        pos = np.arange(T)
        x = ck.token_embedding[np.asarray(tokens)]  # (T, dim)
        causal = np.tril(np.ones((T, T), dtype=bool))
        for l in range(ck.n_layers):
            xb = rmsnorm(x, ck.rms_att[l])
            q = rope_interleaved(xb @ ck.wq[l].T, pos, hs).reshape(T, ck.n_heads, hs)
            k = rope_interleaved(xb @ ck.wk[l].T, pos, hs).reshape(T, ck.n_kv_heads, hs)
            v = (xb @ ck.wv[l].T).reshape(T, ck.n_kv_heads, hs)
            att_out = np.zeros((T, ck.n_heads, hs))
            for h in range(ck.n_heads):
                kvh = h // kv_mul
                scores = q[:, h, :] @ k[:, kvh, :].T / math.sqrt(hs)  # (T, T)
                scores = np.where(causal, scores, -np.inf)
                att_out[:, h, :] = softmax(scores) @ v[:, kvh, :]
            x = x + att_out.reshape(T, ck.dim) @ ck.wo[l].T
            xb = rmsnorm(x, ck.rms_ffn[l])
            x = x + (silu(xb @ ck.w1[l].T) * (xb @ ck.w3[l].T)) @ ck.w2[l].T
        x = rmsnorm(x, ck.rms_final)
        return x @ ck.wcls.T

    def greedy(self, prompt_ids: list[int], steps: int):
        """Greedy decoding like run.c with temperature 0, but never stopping at BOS/EOS.
        Returns (generated ids, list of per-step logits)."""
        if len(prompt_ids) + steps > self.ck.seq_len:
            fail(f"prompt ({len(prompt_ids)} tokens) + {steps} steps exceeds seq_len {self.ck.seq_len}")
        self.reset()
        logits = None
        for pos, tok in enumerate(prompt_ids):
            logits = self.forward_token(tok, pos)
        generated, all_logits = [], []
        for step in range(steps):
            all_logits.append(logits)
            nxt = int(np.argmax(logits))  # first index of the max, like run.c's argmax
            generated.append(nxt)
            if step + 1 < steps:
                logits = self.forward_token(nxt, len(prompt_ids) + step)
        return generated, all_logits


# ================================================================================================
# 4. HF layout: the wq/wk permutation, the state dict, and a numpy model of HF's Llama forward
# ================================================================================================

def permute_for_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorders the rows of a llama2.c wq/wk (interleaved RoPE pairs) for HF's rotate_half RoPE.

    Within each head, HF rotates dim j with dim j + head_size/2, while llama2.c rotates 2j with
    2j+1 -- both with frequency index j. So HF row (half, j) must be llama2.c row 2j + half:
    view the head's rows as (head_size/2, 2) and swap the two axes. This is the permutation of
    transformers' convert_llama_weights_to_hf.py:
        w.view(n_heads, head_size // 2, 2, in_dim).transpose(1, 2).reshape(rows, in_dim)
    """
    rows, in_dim = w.shape
    head_size = rows // n_heads
    assert head_size * n_heads == rows and head_size % 2 == 0
    return (w.reshape(n_heads, head_size // 2, 2, in_dim)
            .transpose(0, 2, 1, 3)
            .reshape(rows, in_dim))


def unpermute_from_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of permute_for_hf (llama2.c export.py's permute_reverse)."""
    rows, in_dim = w.shape
    head_size = rows // n_heads
    return (w.reshape(n_heads, 2, head_size // 2, in_dim)
            .transpose(0, 2, 1, 3)
            .reshape(rows, in_dim))


def hf_state_dict_numpy(ck: Checkpoint, permute: bool = True) -> dict[str, np.ndarray]:
    """The LlamaForCausalLM state dict (float64 numpy) for `ck`. lm_head.weight is included only
    for a separate classifier; the torch loader adds it for tied models when HF expects it."""
    sd = {"model.embed_tokens.weight": ck.token_embedding}
    for l in range(ck.n_layers):
        p = f"model.layers.{l}."
        wq = permute_for_hf(ck.wq[l], ck.n_heads) if permute else ck.wq[l]
        wk = permute_for_hf(ck.wk[l], ck.n_kv_heads) if permute else ck.wk[l]
        sd[p + "self_attn.q_proj.weight"] = wq
        sd[p + "self_attn.k_proj.weight"] = wk
        sd[p + "self_attn.v_proj.weight"] = ck.wv[l]
        sd[p + "self_attn.o_proj.weight"] = ck.wo[l]
        sd[p + "mlp.gate_proj.weight"] = ck.w1[l]  # silu(gate) * up, then down
        sd[p + "mlp.up_proj.weight"] = ck.w3[l]
        sd[p + "mlp.down_proj.weight"] = ck.w2[l]
        sd[p + "input_layernorm.weight"] = ck.rms_att[l]
        sd[p + "post_attention_layernorm.weight"] = ck.rms_ffn[l]
    sd["model.norm.weight"] = ck.rms_final
    if not ck.shared_classifier:
        sd["lm_head.weight"] = ck.wcls
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in sd.items()}


def rotate_half(x: np.ndarray) -> np.ndarray:
    """HF's rotate_half: (x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_half(vec: np.ndarray, positions: np.ndarray, head_size: int) -> np.ndarray:
    """HF-style RoPE: cos/sin = cat(freqs, freqs), x*cos + rotate_half(x)*sin, per head.
    vec: (T, n_heads * head_size)."""
    T, width = vec.shape
    v = vec.reshape(T, width // head_size, head_size)
    freqs = positions.astype(np.float64)[:, None] * rope_freqs(head_size)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]  # (T, 1, hs)
    return (v * np.cos(emb) + rotate_half(v) * np.sin(emb)).reshape(T, width)


def hf_style_forward_numpy(sd: dict[str, np.ndarray], ck: Checkpoint, tokens: list[int]) -> np.ndarray:
    """A numpy model of transformers' LlamaForCausalLM forward (eager attention), reading the HF
    state dict by name: rotate_half RoPE, repeat_kv GQA, additive causal mask. Logits (T, vocab).
    It lets --self-test check the permutation, the name mapping and the GQA layout without torch."""
    hs = ck.head_size
    n_rep = ck.n_heads // ck.n_kv_heads
    T = len(tokens)
    pos = np.arange(T)
    x = sd["model.embed_tokens.weight"][np.asarray(tokens)]
    mask = np.triu(np.full((T, T), np.finfo(np.float64).min), k=1)  # HF's additive causal mask
    for l in range(ck.n_layers):
        p = f"model.layers.{l}."
        h = rmsnorm(x, sd[p + "input_layernorm.weight"])
        q = rope_half(h @ sd[p + "self_attn.q_proj.weight"].T, pos, hs).reshape(T, ck.n_heads, hs)
        k = rope_half(h @ sd[p + "self_attn.k_proj.weight"].T, pos, hs).reshape(T, ck.n_kv_heads, hs)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).reshape(T, ck.n_kv_heads, hs)
        q, k, v = (a.transpose(1, 0, 2) for a in (q, k, v))  # (heads, T, hs)
        k = np.repeat(k, n_rep, axis=0)  # repeat_kv: kv head g serves query heads g*n_rep..
        v = np.repeat(v, n_rep, axis=0)
        scores = q @ k.transpose(0, 2, 1) * (hs ** -0.5) + mask
        att = softmax(scores) @ v  # (heads, T, hs)
        x = x + att.transpose(1, 0, 2).reshape(T, ck.dim) @ sd[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, sd[p + "post_attention_layernorm.weight"])
        gate = h @ sd[p + "mlp.gate_proj.weight"].T
        up = h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, sd["model.norm.weight"])
    lm_head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return x @ lm_head.T


# ================================================================================================
# 5. Per-step statistics and the JSON writer
# ================================================================================================

def top1_and_margin(logits: np.ndarray) -> tuple[int, float, float]:
    """(argmax, top-1 logit, top1 - top2). argmax takes the first maximal index, as run.c does."""
    idx = int(np.argmax(logits))
    top2 = np.partition(logits, -2)[-2:]  # the two largest, in some order
    return idx, float(logits[idx]), float(top2.max() - top2.min())


def _plain(obj):
    """numpy scalars/arrays to Python types so json writes them (floats via repr, round-trip exact)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_plain(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            fail(f"non-finite value {f} in the output")
        return f
    return obj


def to_json(obj, indent: int = 0) -> str:
    """JSON with nested objects indented and every list of scalars on one line."""
    pad, pad1 = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad1}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return "[" + ", ".join(json.dumps(v, allow_nan=False) for v in obj) + "]"
        return "[\n" + ",\n".join(pad1 + to_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def write_json(path: str, doc: dict):
    doc = _plain(doc)
    text = to_json(doc) + "\n"
    if json.loads(text) != doc:  # cheap guard against a writer bug
        fail("internal error: JSON writer did not round-trip")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def prompt_record(prompt: str, prompt_ids: list[int], generated: list[int], step_logits: list,
                  text: str) -> dict:
    """One entry of "prompts" from a greedy run (step_logits[k] produced generated[k])."""
    top1, margin = [], []
    for k, logits in enumerate(step_logits):
        idx, t1, m = top1_and_margin(np.asarray(logits, dtype=np.float64))
        if idx != generated[k]:
            fail(f"internal error: step {k} argmax {idx} != generated {generated[k]}")
        top1.append(t1)
        margin.append(m)
    return {
        "prompt": prompt,
        "prompt_ids": [int(t) for t in prompt_ids],
        "generated_ids": [int(t) for t in generated],
        "top1_logit": top1,
        "margin": margin,
        "logits_step0": np.asarray(step_logits[0], dtype=np.float64),
        "logits_step100": (np.asarray(step_logits[100], dtype=np.float64)
                           if len(step_logits) > 100 else None),
        "text": text,
    }


def print_summary(records: list[dict]):
    for r in records:
        m = np.asarray(r["margin"])
        k = int(np.argmin(m))
        close = int(np.sum(m < 1e-3))
        text = r["text"].replace("\n", "\\n")
        print(f"  {r['prompt']!r}: {len(r['prompt_ids'])} prompt ids, {len(r['generated_ids'])} generated")
        print(f"    text: {text[:80]!r}")
        print(f"    min margin {m[k]:.3e} at step {k} (token {r['generated_ids'][k]}); "
              f"{close} steps with margin < 1e-3")


# ================================================================================================
# 6. The transformers reference
# ================================================================================================

class Fp64Patches:
    """Context manager that keeps transformers' Llama in float64 where stock code drops to float32.

    Stock LlamaRMSNorm casts to float32, LlamaRotaryEmbedding computes cos/sin in float32, and eager
    attention calls softmax(..., dtype=torch.float32). For float64 inputs only, this swaps in the
    same formulas in float64 (other dtypes go to the original code) and counts how often each was
    used, so the caller can prove the patches were active. Everything is restored on exit."""

    def __init__(self, torch, modeling_llama, inv_freq64, enabled: bool = True):
        self.torch = torch
        self.ml = modeling_llama
        self.inv_freq64 = inv_freq64  # float64 tensor (head_size/2,)
        self.enabled = enabled
        self.hits = {"rmsnorm": 0, "rope": 0, "softmax": 0}

    def __enter__(self):
        if not self.enabled:
            return self
        torch, ml, hits = self.torch, self.ml, self.hits
        f64 = torch.float64
        self._orig_rms = ml.LlamaRMSNorm.forward
        self._orig_rope = ml.LlamaRotaryEmbedding.forward
        self._orig_softmax = torch.nn.functional.softmax
        orig_rms, orig_rope, orig_softmax = self._orig_rms, self._orig_rope, self._orig_softmax
        inv_freq64 = self.inv_freq64

        def rms_forward(module, hidden_states, *args, **kwargs):
            if hidden_states.dtype != f64 or args or kwargs:
                return orig_rms(module, hidden_states, *args, **kwargs)
            hits["rmsnorm"] += 1
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
            variance = hidden_states.pow(2).mean(-1, keepdim=True)
            return module.weight * (hidden_states * torch.rsqrt(variance + eps))

        def rope_forward(module, x, position_ids, *args, **kwargs):
            kwargs.pop("seq_len", None)  # unused extra argument of some transformers 4.x versions
            if x.dtype != f64 or not torch.is_tensor(position_ids) or args or kwargs:
                return orig_rope(module, x, position_ids, *args, **kwargs)
            hits["rope"] += 1
            with torch.no_grad():
                inv = inv_freq64.to(device=x.device)
                freqs = position_ids.to(device=x.device, dtype=f64)[..., None] * inv  # (b, s, hs/2)
                emb = torch.cat((freqs, freqs), dim=-1)
                scale = float(getattr(module, "attention_scaling", 1.0))
                return emb.cos() * scale, emb.sin() * scale

        def softmax(input, *args, **kwargs):
            if (torch.is_tensor(input) and input.dtype == f64
                    and kwargs.get("dtype") is not None and kwargs["dtype"] != f64):
                hits["softmax"] += 1
                kwargs["dtype"] = f64
            return orig_softmax(input, *args, **kwargs)

        ml.LlamaRMSNorm.forward = rms_forward
        ml.LlamaRotaryEmbedding.forward = rope_forward
        torch.nn.functional.softmax = softmax
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.ml.LlamaRMSNorm.forward = self._orig_rms
            self.ml.LlamaRotaryEmbedding.forward = self._orig_rope
            self.torch.nn.functional.softmax = self._orig_softmax
        return False


class HFReference:
    """LlamaForCausalLM built from a llama2.c checkpoint, float64, eager attention."""

    def __init__(self, ck: Checkpoint, device: str, fp64_patches: bool):
        try:
            import torch
            import transformers
            from transformers import LlamaConfig, LlamaForCausalLM
            from transformers.models.llama import modeling_llama
        except ImportError as e:
            fail(f"transformers mode needs torch and transformers ({e}); try --numpy-only or --self-test")
        self.torch, self.transformers, self.ml = torch, transformers, modeling_llama
        self.ck = ck
        self.fp64_patches = fp64_patches
        self.device = self._setup_device(device)

        # --- config -------------------------------------------------------------------------
        params = inspect.signature(LlamaConfig.__init__).parameters
        kwargs = dict(
            vocab_size=ck.vocab_size, hidden_size=ck.dim, intermediate_size=ck.hidden_dim,
            num_hidden_layers=ck.n_layers, num_attention_heads=ck.n_heads,
            num_key_value_heads=ck.n_kv_heads, max_position_embeddings=ck.seq_len,
            rms_norm_eps=RMS_EPS, rope_theta=ROPE_THETA, tie_word_embeddings=ck.shared_classifier,
            hidden_act="silu", attention_bias=False, mlp_bias=False, attention_dropout=0.0,
            bos_token_id=BOS_ID, eos_token_id=EOS_ID, use_cache=True, attn_implementation="eager",
        )
        if "head_dim" in params:
            kwargs["head_dim"] = ck.head_size
        if "rope_parameters" in params:  # transformers 5 keeps rope_theta here
            kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": ROPE_THETA}
        if "pretraining_tp" in params:
            kwargs["pretraining_tp"] = 1
        self.config = LlamaConfig(**kwargs)

        # --- model --------------------------------------------------------------------------
        torch.manual_seed(0)  # HF initializes random weights first; all are overwritten below
        model = LlamaForCausalLM(self.config)
        self._force_eager(model)
        model = model.to(device=self.device, dtype=torch.float64)
        model.eval()
        self.model = model
        self._load_weights()
        self._check_model()
        self.accepts_cache_position = "cache_position" in inspect.signature(model.model.forward).parameters
        self.inv_freq64 = torch.tensor(rope_freqs(ck.head_size), dtype=torch.float64, device=self.device)

    # -- setup helpers -----------------------------------------------------------------------

    def _setup_device(self, device: str):
        torch = self.torch
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                fail("--device cuda but torch.cuda.is_available() is False")
            # The model runs in float64, which TF32 never touches; switch it off anyway so that no
            # stray float32 op can use it. Newer torch prefers fp32_precision; older, allow_tf32.
            for setter in (lambda: setattr(torch.backends.cuda.matmul, "fp32_precision", "ieee"),
                           lambda: setattr(torch.backends.cudnn, "fp32_precision", "ieee"),
                           lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", False),
                           lambda: setattr(torch.backends.cudnn, "allow_tf32", False)):
                try:
                    setter()
                except Exception:  # one API or the other may be missing or refuse mixing
                    pass
        try:
            torch.set_float32_matmul_precision("highest")
        except Exception:
            pass
        return dev

    def _force_eager(self, model):
        """Makes sure eager attention is used (its softmax is the one Fp64Patches widens)."""
        cfg = model.config
        if getattr(cfg, "_attn_implementation", None) != "eager":
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation("eager")
            else:
                cfg._attn_implementation = "eager"
        if getattr(model.config, "_attn_implementation", None) != "eager":
            fail(f"could not select eager attention (got {getattr(model.config, '_attn_implementation', None)})")
        attn_cls = type(model.model.layers[0].self_attn).__name__
        if "Sdpa" in attn_cls or "Flash" in attn_cls:  # transformers < 4.48 picks a class at init
            fail(f"attention module is {attn_cls}, not eager LlamaAttention")

    def _load_weights(self):
        """load_state_dict(strict=True) with the permuted wq/wk; lm_head.weight is added or dropped
        to match what this transformers version lists for a tied model."""
        torch, ck, model = self.torch, self.ck, self.model
        sd_np = hf_state_dict_numpy(ck, permute=True)
        expected = set(model.state_dict().keys())
        if ck.shared_classifier:
            if "lm_head.weight" in expected:
                sd_np["lm_head.weight"] = sd_np["model.embed_tokens.weight"]
            else:
                sd_np.pop("lm_head.weight", None)
        missing, extra = sorted(expected - set(sd_np)), sorted(set(sd_np) - expected)
        if missing or extra:
            fail(f"state dict keys differ from LlamaForCausalLM's: missing {missing}, unexpected {extra}")
        sd = {}
        for k, v in sd_np.items():
            want = tuple(model.state_dict()[k].shape)
            if tuple(v.shape) != want:
                fail(f"{k}: checkpoint shape {v.shape}, HF expects {want}")
            sd[k] = torch.from_numpy(np.array(v, dtype=np.float64)).to(self.device)
        result = model.load_state_dict(sd, strict=True)
        if getattr(result, "missing_keys", []) or getattr(result, "unexpected_keys", []):
            fail(f"load_state_dict: {result}")
        # Read back: every tensor exactly as given, and the classifier is the right matrix.
        for k, v in model.state_dict().items():
            if v.dtype != torch.float64 or not torch.equal(v, sd[k]):
                fail(f"{k} did not load as given (dtype {v.dtype})")
        lm = model.lm_head.weight.detach().cpu().numpy()
        if not np.array_equal(lm, ck.wcls):
            fail("lm_head.weight is not the checkpoint's classifier (tie_word_embeddings mix-up?)")
        if ck.shared_classifier and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
            print("note: lm_head and embed_tokens hold equal values but are not tied; fine for inference")

    def _check_model(self):
        """Checks that the config reached the modules: eps, RoPE type and theta, head counts."""
        ck, model, ml = self.ck, self.model, self.ml
        norms = [m for m in model.modules() if isinstance(m, ml.LlamaRMSNorm)]
        if len(norms) != 2 * ck.n_layers + 1:
            fail(f"found {len(norms)} LlamaRMSNorm modules, expected {2 * ck.n_layers + 1}")
        for m in norms:
            eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
            if eps != RMS_EPS:
                fail(f"RMSNorm eps is {eps}, expected {RMS_EPS}")
        ropes = [m for m in model.modules() if isinstance(m, ml.LlamaRotaryEmbedding)]
        if not ropes:
            fail("no LlamaRotaryEmbedding module found")
        expect = rope_freqs(ck.head_size)
        for m in ropes:
            rope_type = getattr(m, "rope_type", "default")
            if rope_type != "default":
                fail(f"RoPE type is {rope_type!r}, expected 'default'")
            inv = m.inv_freq.detach().double().cpu().numpy()
            if inv.shape != expect.shape or np.max(np.abs(inv / expect - 1)) > 1e-6:
                fail(f"HF RoPE inv_freq {inv} differs from 1/10000^(2j/{ck.head_size}) {expect}")
            if float(getattr(m, "attention_scaling", 1.0)) != 1.0:
                fail(f"RoPE attention_scaling is {m.attention_scaling}, expected 1.0")
        if self.fp64_patches:
            sig = inspect.signature(ml.LlamaRotaryEmbedding.forward).parameters
            if "position_ids" not in sig:
                fail("LlamaRotaryEmbedding.forward has no position_ids argument (transformers < 4.38?); "
                     "rerun with --no-fp64-patches")
        attn = model.model.layers[0].self_attn
        for name, want in (("num_key_value_groups", ck.n_heads // ck.n_kv_heads), ("head_dim", ck.head_size)):
            got = getattr(attn, name, want)
            if got != want:
                fail(f"attention {name} is {got}, expected {want}")
        if model.training:
            fail("model is in training mode")

    # -- forward -----------------------------------------------------------------------------

    def patches(self, enabled: bool | None = None) -> Fp64Patches:
        return Fp64Patches(self.torch, self.ml, self.inv_freq64,
                           self.fp64_patches if enabled is None else enabled)

    def forward(self, ids: list[int], start_pos: int, past, use_cache: bool):
        """Logits (len(ids), vocab) as float64 numpy for `ids` at positions start_pos.., plus the
        new cache. Runs the base model and lm_head directly, so no version can upcast/downcast the
        logits or keep only the last position."""
        torch, model = self.torch, self.model
        n = len(ids)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start_pos, start_pos + n, dtype=torch.long, device=self.device)
        kwargs = dict(input_ids=input_ids, position_ids=positions[None, :], use_cache=use_cache)
        if past is not None:
            kwargs["past_key_values"] = past
        if self.accepts_cache_position:
            kwargs["cache_position"] = positions
        with torch.no_grad():
            out = model.model(**kwargs)
            if isinstance(out, tuple):
                hidden, new_past = out[0], (out[1] if use_cache and len(out) > 1 else None)
            else:
                hidden, new_past = out.last_hidden_state, getattr(out, "past_key_values", None)
            logits = model.lm_head(hidden)
        if logits.dtype != torch.float64 or tuple(logits.shape) != (1, n, self.ck.vocab_size):
            fail(f"unexpected logits {logits.dtype} {tuple(logits.shape)}")
        if use_cache and new_past is None:
            fail("the model returned no past_key_values with use_cache=True")
        return logits[0].detach().cpu().numpy().astype(np.float64), new_past

    def greedy(self, prompt_ids: list[int], steps: int):
        """Greedy decoding with the KV cache, never stopping at EOS/BOS. Returns (generated ids,
        per-step logits); step k's logits produced generated[k]."""
        if len(prompt_ids) + steps > self.ck.seq_len:
            fail(f"prompt ({len(prompt_ids)} tokens) + {steps} steps exceeds seq_len {self.ck.seq_len}")
        logits, past = self.forward(prompt_ids, 0, None, use_cache=True)
        last = logits[-1]
        generated, step_logits = [], []
        for step in range(steps):
            step_logits.append(last)
            nxt = int(np.argmax(last))  # argmax in numpy on the float64 logits: first maximal index
            generated.append(nxt)
            if step + 1 < steps:
                logits, past = self.forward([nxt], len(prompt_ids) + step, past, use_cache=True)
                last = logits[-1]
        return generated, step_logits


def self_check(hf: HFReference, np_model: Llama2cNumpy, prompt_ids, generated, step_logits) -> dict:
    """Compares HF with the numpy llama2.c forward on the first prompt + SELF_CHECK_TOKENS generated
    tokens; fails loudly when they disagree."""
    n_gen = min(SELF_CHECK_TOKENS, len(generated))
    seq = list(prompt_ids) + list(generated[:n_gen])
    ref = np_model.forward_sequence(seq)  # (T, vocab)

    # Same forward as the generation (patched unless --no-fp64-patches), full sequence, no cache.
    with hf.patches() as p:
        full, _ = hf.forward(seq, 0, None, use_cache=False)
    hits = dict(p.hits)
    diff = float(np.max(np.abs(full - ref)))
    # Stock HF (float32 RMSNorm/RoPE/softmax inside), for information.
    with hf.patches(enabled=False):
        stock, _ = hf.forward(seq, 0, None, use_cache=False)
    stock_diff = float(np.max(np.abs(stock - ref)))
    # The cached step logits against the full forward at the same positions.
    n0 = len(prompt_ids) - 1
    cached = np.stack(step_logits[:n_gen + 1]) if n_gen + 1 <= len(step_logits) else np.stack(step_logits)
    cache_diff = float(np.max(np.abs(cached - full[n0:n0 + len(cached)])))
    # numpy's own greedy run (run.c-style, KV cache) must pick the same tokens.
    np_generated, np_logits = np_model.greedy(list(prompt_ids), n_gen)
    np_token_diff = float(np.max(np.abs(np.stack(np_logits) - ref[n0:n0 + n_gen])))

    tolerance = FP64_TOLERANCE if hf.fp64_patches else STOCK_TOLERANCE
    print(f"self-check over {len(seq)} positions ({len(prompt_ids)} prompt + {n_gen} generated):")
    print(f"  max |HF - numpy llama2.c| logits      {diff:.3e}  (tolerance {tolerance:g}, "
          f"{'float64 patches' if hf.fp64_patches else 'stock HF'})")
    print(f"  max |stock HF - numpy llama2.c|       {stock_diff:.3e}  (float32 inside HF; information)")
    print(f"  max |HF cached steps - HF full|       {cache_diff:.3e}")
    print(f"  max |numpy cached - numpy full|       {np_token_diff:.3e}")
    print(f"  numpy greedy {n_gen} tokens == HF: {np_generated == list(generated[:n_gen])}")
    if hf.fp64_patches:
        print(f"  float64 patch uses: {hits}")
        if hits["rmsnorm"] == 0 or hits["rope"] == 0:
            fail(f"the float64 patches were not used ({hits}): this transformers version computes "
                 f"RMSNorm/RoPE elsewhere; rerun with --no-fp64-patches")
    if not diff < tolerance:
        fail(f"self-check FAILED: HF logits differ from the numpy llama2.c forward by {diff:.3e} "
             f"(tolerance {tolerance:g}); the wq/wk permutation or the config is wrong")
    if not cache_diff < tolerance:
        fail(f"self-check FAILED: HF cached decoding differs from HF full forward by {cache_diff:.3e}")
    if not np_token_diff < 1e-9:
        fail(f"self-check FAILED: numpy cached vs full forward differ by {np_token_diff:.3e}")
    if np_generated != list(generated[:n_gen]):
        fail(f"self-check FAILED: numpy greedy {np_generated} != HF greedy {list(generated[:n_gen])}")
    if not stock_diff < STOCK_TOLERANCE:
        print(f"warning: stock HF differs from numpy by {stock_diff:.3e} (> {STOCK_TOLERANCE:g})")
    return {
        "max_abs_logit_diff": diff,
        "positions": len(seq),
        "tolerance": tolerance,
        "fp64_patches": hf.fp64_patches,
        "fp64_patch_uses": hits,
        "max_abs_logit_diff_stock_hf": stock_diff,
        "max_abs_cached_vs_full_diff": cache_diff,
        "numpy_greedy_matches": np_generated == list(generated[:n_gen]),
        "numpy_greedy_tokens_checked": n_gen,
    }


def check_against_numpy(np_model: Llama2cNumpy, prompt_ids, generated, step_logits) -> tuple[float, int]:
    """Every step of one HF run against the numpy forward over the same tokens (one whole-sequence
    pass). Returns (max |logit diff|, steps whose numpy argmax differs from HF's token)."""
    ref = np_model.forward_sequence(list(prompt_ids) + list(generated[:-1]))
    rows = ref[len(prompt_ids) - 1:]
    diff = float(np.max(np.abs(np.stack(step_logits) - rows)))
    mismatches = int(sum(int(np.argmax(r)) != g for r, g in zip(rows, generated)))
    return diff, mismatches


def run_transformers(args, ck: Checkpoint) -> dict:
    try:
        import sentencepiece as spm
    except ImportError as e:
        fail(f"transformers mode needs sentencepiece ({e})")
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    if sp.get_piece_size() != ck.vocab_size:
        fail(f"{args.tokenizer}: {sp.get_piece_size()} pieces, model vocab {ck.vocab_size}")
    if sp.bos_id() != BOS_ID or sp.eos_id() != EOS_ID:
        # llama2.c's tok512.model names its control pieces "\n<s>\n" / "\n</s>\n", so sentencepiece
        # finds no "<s>" and reports -1. BOS is id 1 by llama2.c's convention either way.
        print(f"note: {Path(args.tokenizer).name} reports bos/eos ids {sp.bos_id()}/{sp.eos_id()}; "
              f"using llama2.c's BOS {BOS_ID} (piece {sp.id_to_piece(BOS_ID)!r}, "
              f"{'control' if sp.is_control(BOS_ID) else 'NOT a control piece'})")
    # Optional cross-check with the llama2.c BPE port on a tokenizer.bin beside the .model.
    bpe = None
    bin_path = Path(args.tokenizer).with_suffix(".bin")
    if bin_path.exists():
        try:
            bpe = Llama2cTokenizer(str(bin_path), ck.vocab_size)
        except CheckFailed as e:
            print(f"note: not cross-checking with {bin_path}: {e}")

    hf = HFReference(ck, args.device, fp64_patches=not args.no_fp64_patches)
    torch, transformers = hf.torch, hf.transformers
    np_model = Llama2cNumpy(ck)
    prompts = args.prompt or DEFAULT_PROMPTS
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, device {hf.device}, "
          f"attention {hf.model.config._attn_implementation}, float64 patches {'on' if hf.fp64_patches else 'off'}")

    records, check, bpe_mismatches, all_diffs = [], None, [], []
    t0 = time.time()
    for i, prompt in enumerate(prompts):
        ids = [BOS_ID] + list(sp.encode(prompt, out_type=int))
        if bpe is not None and bpe.encode(prompt) != ids:
            bpe_mismatches.append(prompt)
            print(f"warning: sentencepiece ids {ids} != llama2.c BPE ids {bpe.encode(prompt)} for {prompt!r}")
        with hf.patches():
            generated, step_logits = hf.greedy(ids, args.steps)
        if i == 0:
            check = self_check(hf, np_model, ids, generated, step_logits)
        # Beyond the brief's self-check: every step of every prompt against the numpy forward.
        diff, mismatches = check_against_numpy(np_model, ids, generated, step_logits)
        all_diffs.append(diff)
        if not diff < check["tolerance"] or mismatches:
            fail(f"prompt {prompt!r}: HF step logits differ from the numpy forward by {diff:.3e} "
                 f"(tolerance {check['tolerance']:g}), {mismatches} greedy tokens differ")
        text = sp.decode(ids + generated)  # control tokens (BOS/EOS) decode to nothing
        records.append(prompt_record(prompt, ids, generated, step_logits, text))
    print(f"generated {len(prompts)} x {args.steps} tokens in {time.time() - t0:.1f}s; every step "
          f"matches the numpy forward to {max(all_diffs):.3e}")
    check["all_steps_max_abs_logit_diff"] = max(all_diffs)
    check["all_steps_checked"] = len(prompts) * args.steps
    if bpe is not None:
        check["llama2c_bpe_matches_sentencepiece"] = not bpe_mismatches
    precision = ("float64 kept in RMSNorm/RoPE/softmax" if hf.fp64_patches else "stock float32 RMSNorm/RoPE/softmax")
    return {
        "model": Path(args.model).name,
        "tokenizer": Path(args.tokenizer).name,
        "reference": f"transformers {transformers.__version__} LlamaForCausalLM float64 eager ({precision})",
        "torch_version": str(torch.__version__),
        "transformers_version": str(transformers.__version__),
        "device": str(hf.device),
        "generated_on": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "steps": args.steps,
        "prompts": records,
        "self_check": check,
    }


# ================================================================================================
# 7. Torch-free modes: --numpy-only and --self-test
# ================================================================================================

def run_numpy_only(args, ck: Checkpoint) -> dict:
    """Greedy decoding with the numpy llama2.c forward; prompts from --prompt-ids or --prompt."""
    tok = None
    tok_path = args.tokenizer_bin or str(Path(args.model).with_name("tok512.bin"))
    if Path(tok_path).exists():
        tok = Llama2cTokenizer(tok_path, ck.vocab_size)
    prompts = []
    for spec in args.prompt_ids or []:
        try:
            ids = [int(t) for t in spec.replace(" ", "").split(",") if t]
        except ValueError:
            fail(f"--prompt-ids {spec!r}: expected comma-separated integers")
        if not ids or any(t < 0 or t >= ck.vocab_size for t in ids):
            fail(f"--prompt-ids {spec!r}: ids must be in [0, {ck.vocab_size})")
        prompts.append((tok.decode(ids) if tok else spec, ids))
    for text in args.prompt or []:
        if tok is None:
            fail(f"--prompt needs a llama2.c tokenizer.bin in --numpy-only mode (not found: {tok_path})")
        prompts.append((text, tok.encode(text)))
    if not prompts:
        if tok is None:
            fail("give --prompt-ids (no tokenizer.bin found to encode the default prompts)")
        prompts = [(t, tok.encode(t)) for t in DEFAULT_PROMPTS]
    model = Llama2cNumpy(ck)
    records = []
    for text, ids in prompts:
        generated, step_logits = model.greedy(ids, args.steps)
        out_text = tok.decode(ids + generated) if tok else ""
        records.append(prompt_record(text, ids, generated, step_logits, out_text))
        print(f"prompt ids {ids}")
        print(f"generated ids {generated}")
        if tok:
            print(out_text)
    return {
        "model": Path(args.model).name,
        "tokenizer": Path(tok_path).name if tok else None,
        "reference": "numpy float64 port of llama2.c run.c (tools/hf_reference.py --numpy-only; NOT transformers)",
        "torch_version": None,
        "transformers_version": None,
        "generated_on": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "steps": args.steps,
        "prompts": records,
        "self_check": None,
    }


def run_self_test(args) -> bool:
    """Torch-free checks of everything the transformers path relies on. Returns True when all pass."""
    results = []

    def check(name: str, ok: bool, detail: str = ""):
        results.append(ok)
        print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}")

    rng = np.random.default_rng(1234)
    print("RoPE permutation (random weights, no checkpoint):")
    for n_heads, head_size, in_dim in ((8, 8, 64), (4, 8, 64), (6, 16, 48), (1, 2, 5)):
        rows = n_heads * head_size
        w = rng.standard_normal((rows, in_dim))
        x = rng.standard_normal((7, in_dim))
        pos = np.array([0, 1, 2, 5, 17, 100, 511])
        interleaved = rope_interleaved(x @ w.T, pos, head_size)
        half = rope_half(x @ permute_for_hf(w, n_heads).T, pos, head_size)
        want = interleaved.reshape(7, n_heads, head_size // 2, 2).transpose(0, 1, 3, 2).reshape(7, rows)
        d = float(np.max(np.abs(half - want)))
        check(f"heads {n_heads} x {head_size}: HF rotate_half on permuted rows == llama2.c interleaved "
              f"(same per-head reordering)", d < 1e-12, f"max diff {d:.1e}")
        # Attention scores only see q.k within a head, which the shared reordering leaves alone.
        qi = interleaved.reshape(7, n_heads, head_size)
        qh = half.reshape(7, n_heads, head_size)
        d = float(np.max(np.abs(np.einsum("thd,shd->hts", qi, qi) - np.einsum("thd,shd->hts", qh, qh))))
        check("  per-head dot products unchanged", d < 1e-12, f"max diff {d:.1e}")
        d = float(np.max(np.abs(unpermute_from_hf(permute_for_hf(w, n_heads), n_heads) - w)))
        check("  unpermute(permute(w)) == w", d == 0.0)
        if head_size > 2:
            wrong = rope_half(x @ w.T, pos, head_size)  # forgetting the permutation must show
            check("  without the permutation it differs", float(np.max(np.abs(wrong - want))) > 1e-3)
    # The brief's torch expression, written out with numpy's view semantics, on row indices.
    idx = np.arange(16, dtype=np.float64)[:, None]
    got = permute_for_hf(idx, 2)[:, 0].astype(int).tolist()
    check("row order for 2 heads x 8", got == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15], str(got))

    print("JSON writer:")
    doc = {"a": [0.1, 1e-300, -2.5e17, 1 / 3], "b": {"c": [1, 2], "d": [{"e": "x\"y"}]}, "f": None}
    text = to_json(_plain(doc))
    check("round-trips floats exactly", json.loads(text) == doc)

    model_path = args.model
    if not model_path or not Path(model_path).exists():
        print(f"checkpoint checks skipped: no model at {model_path}")
        ok = all(results)
        print("self-test", "PASSED" if ok else "FAILED")
        return ok
    ck = load_checkpoint(model_path)
    print(f"checkpoint {model_path}: dim {ck.dim}, hidden {ck.hidden_dim}, layers {ck.n_layers}, heads "
          f"{ck.n_heads}/{ck.n_kv_heads}, vocab {ck.vocab_size}, seq {ck.seq_len}, "
          f"{'shared' if ck.shared_classifier else 'separate'} classifier")
    angle = np.arange(ck.seq_len)[:, None] * rope_freqs(ck.head_size)[None, :]
    d = max(float(np.max(np.abs(np.cos(angle) - ck.freq_cis_real))),
            float(np.max(np.abs(np.sin(angle) - ck.freq_cis_imag))))
    check("our RoPE angles match the file's freq_cis tables (float32)", d < 2e-4, f"max diff {d:.1e}")

    np_model = Llama2cNumpy(ck)
    tok_path = args.tokenizer_bin or str(Path(model_path).with_name("tok512.bin"))
    tok = Llama2cTokenizer(tok_path, ck.vocab_size) if Path(tok_path).exists() else None
    prompt_ids = tok.encode("Once upon a time") if tok else None
    if tok:
        check("BPE encode/decode round trip", all(tok.decode(tok.encode(p)) == p for p in DEFAULT_PROMPTS))
        print(f"  'Once upon a time' -> {prompt_ids}")

    seq = prompt_ids or [BOS_ID, 1, 2, 3]
    generated, step_logits = np_model.greedy(seq, 120)
    if tok:
        text = tok.decode(seq + generated)
        print(f"  greedy: {text[:160]!r}")
        if Path(model_path).name == "stories260K.bin":
            check("greedy 'Once upon a time' continues as llama2.c does", text.startswith(EXPECTED_ONCE_UPON))
    full_seq = seq + generated[:40]
    full = np_model.forward_sequence(full_seq)
    n0 = len(seq) - 1
    d = float(np.max(np.abs(np.stack(step_logits[:41]) - full[n0:n0 + 41])))
    check("run.c-style KV-cache forward == whole-sequence forward", d < 1e-10, f"max diff {d:.1e}")

    sd = hf_state_dict_numpy(ck, permute=True)
    hf_style = hf_style_forward_numpy(sd, ck, full_seq)
    d = float(np.max(np.abs(hf_style - full)))
    check(f"HF-style numpy forward (permuted weights, rotate_half, repeat_kv) == llama2.c forward "
          f"over {len(full_seq)} positions", d < 1e-10, f"max diff {d:.1e}")
    d = float(np.max(np.abs(hf_style_forward_numpy(hf_state_dict_numpy(ck, permute=False), ck, full_seq) - full)))
    check("without the permutation the HF-style logits are far off", d > 0.1, f"max diff {d:.2f}")
    if ck.head_size > 4:  # for head_size 4 the permutation is its own inverse
        wrong = dict(sd)
        for l in range(ck.n_layers):
            for name, heads in (("q_proj", ck.n_heads), ("k_proj", ck.n_kv_heads)):
                key = f"model.layers.{l}.self_attn.{name}.weight"
                w = ck.wq[l] if name == "q_proj" else ck.wk[l]
                wrong[key] = unpermute_from_hf(w, heads)
        d = float(np.max(np.abs(hf_style_forward_numpy(wrong, ck, full_seq) - full)))
        check("the inverse permutation (wrong direction) is far off too", d > 0.1, f"max diff {d:.2f}")
    shapes_ok = (sd["model.layers.0.self_attn.k_proj.weight"].shape == (ck.kv_dim, ck.dim)
                 and sd["model.layers.0.mlp.down_proj.weight"].shape == (ck.dim, ck.hidden_dim)
                 and len(sd) == 2 + 9 * ck.n_layers + (0 if ck.shared_classifier else 1))
    check("state dict names/shapes", shapes_ok)

    rec = prompt_record("p", seq, generated, step_logits, "")
    m = np.asarray(rec["margin"])
    check("records: margins >= 0, logits_step100 present", bool((m >= 0).all()) and rec["logits_step100"] is not None)
    print(f"  min margin over {len(m)} steps: {m.min():.3e} at step {int(np.argmin(m))}")
    ok = all(results)
    print("self-test", "PASSED" if ok else "FAILED")
    return ok


# ================================================================================================
# 8. CLI
# ================================================================================================

def default_models_dir() -> Path:
    """LLM_MODELS_DIR, else ../shared/models beside the repository (as runtime/models_dir.h)."""
    env = os.environ.get("LLM_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "models"


def main(argv=None) -> int:
    models = default_models_dir()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default=str(models / "stories260K.bin"), help="llama2.c legacy checkpoint")
    ap.add_argument("--tokenizer", default=None, help="SentencePiece .model (default: tok512.model beside --model)")
    ap.add_argument("--tokenizer-bin", default=None, help="llama2.c tokenizer.bin for --numpy-only/--self-test "
                    "(default: tok512.bin beside --model)")
    ap.add_argument("--out", default=None, help="JSON output path (required unless --self-test)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="tokens to generate per prompt")
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    ap.add_argument("--prompt", action="append", help="prompt text (repeatable); default: 5 built-in prompts")
    ap.add_argument("--no-fp64-patches", action="store_true",
                    help="run stock transformers (float32 RMSNorm/RoPE/softmax inside); looser self-check")
    ap.add_argument("--numpy-only", action="store_true", help="no torch: greedy decode with the numpy forward")
    ap.add_argument("--prompt-ids", action="append", help="--numpy-only: comma-separated ids incl. BOS (repeatable)")
    ap.add_argument("--self-test", action="store_true", help="torch-free checks of the permutation and forward")
    args = ap.parse_args(argv)
    if args.tokenizer is None:
        args.tokenizer = str(Path(args.model).with_name("tok512.model"))
    if args.steps < 1:
        ap.error("--steps must be >= 1")

    try:
        if args.self_test:
            return 0 if run_self_test(args) else 1
        if not args.out and not args.numpy_only:
            ap.error("--out is required")
        ck = load_checkpoint(args.model)
        doc = run_numpy_only(args, ck) if args.numpy_only else run_transformers(args, ck)
        print("summary:")
        print_summary(doc["prompts"])
        if args.out:
            write_json(args.out, doc)
            print(f"wrote {args.out}")
        return 0
    except CheckFailed as e:
        print(f"hf_reference.py: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
