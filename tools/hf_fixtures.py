#!/usr/bin/env python3
"""hf_fixtures: independent reference data for the Hugging Face loaders, made by HF itself.

Run where torch, transformers and tokenizers are installed (the GPU machine; no network needed):
    python3 tools/hf_fixtures.py --out tests/data/hf --spm path/to/tok512.model

It writes, under --out:
  llama2_style/  a random-weight LlamaForCausalLM (MHA, untied embeddings, no RoPE scaling), saved with
                 save_pretrained (safetensors, fp32), tok512.model copied in as tokenizer.model;
  llama3_style/  GQA (8 heads over 2), tied embeddings, rope_theta 500000 and rope_scaling of type llama3
                 with original_max_position_embeddings 32 so that the scaling changes the result within the
                 recorded positions; its tokenizer.json is the BPE trained below;
  each with reference.json: token ids and HF's fp32 logits (eager attention) at every position;
  bpe/           tokenizer.json: a byte-level BPE trained with HF tokenizers (Llama 3 pre-tokenizer regex,
                 special tokens) on an awkward corpus, and cases.json: texts with HF's token ids.
tests/hf_fixtures_test.cpp compares the runtime against these (fp32 logits within 1e-4 relative; token ids
equal). The files are small (a few hundred KB) and are committed as test data.
"""
import argparse
import json
import os
import shutil

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1e-10 0x1F 2024-11-30",
    "Whitespace:  two  spaces,\tone tab,\n\nblank lines,\r\nCRLF,   trailing   ",
    "Unicode: naïve café Ärger straße Ωμέγα привет мир 日本語の文章 한국어 עברית العربية",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ and ZWJ sequences",
    "Code: def f(x):\n    return x**2  # square\nif (a && b) { c->d[i] += 1; }",
    "Contractions: I'm, you're, it's, we've, they'll, he'd, CAN'T, WON'T, Y'ALL",
    "Punctuation!!! ??? ... --- ((())) [[]] {{}} <<>> \"quoted\" 'single' `back`",
]
CASES = CORPUS + [
    "A sentence the trainer never saw: zebras quietly juggle 987 oranges.",
    "Mixed 日本 and english 123abc456 😀😀",
    "<|begin_of_text|>special tokens inside<|end_of_text|> text",
    "   leading spaces and trailing   ",
    "",
]


def train_bpe(out_dir, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in CASES]
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"cases": cases}, f, ensure_ascii=False, indent=1)
    return path, tok.get_vocab_size()


def make_model(out_dir, config_kwargs, seed, n_tokens):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(**config_kwargs, attn_implementation="eager", torch_dtype="float32")
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # HF inits norms to 1: draw them too, so a swapped norm cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir, safe_serialization=True)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(3, config.vocab_size, (n_tokens,), generator=gen)
    ids[0] = 1 if config.vocab_size > 1 else 0
    with torch.no_grad():
        logits = model(ids[None, :]).logits[0].float()
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump({"token_ids": ids.tolist(), "logits": logits.tolist(),
                   "made_by": "transformers LlamaForCausalLM, fp32, eager attention"}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--spm", required=True, help="tok512.model (SentencePiece, 512 pieces)")
    args = ap.parse_args()
    bpe_path, bpe_vocab = train_bpe(os.path.join(args.out, "bpe"), 400)
    d2 = os.path.join(args.out, "llama2_style")
    make_model(d2, dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, vocab_size=512, max_position_embeddings=128, rms_norm_eps=1e-5,
                        rope_theta=10000.0, tie_word_embeddings=False), seed=7, n_tokens=48)
    shutil.copy(args.spm, os.path.join(d2, "tokenizer.model"))
    d3 = os.path.join(args.out, "llama3_style")
    make_model(d3, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=2, vocab_size=bpe_vocab, max_position_embeddings=128, rms_norm_eps=1e-5,
                        rope_theta=500000.0, tie_word_embeddings=True,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
               seed=11, n_tokens=64)
    shutil.copy(bpe_path, os.path.join(d3, "tokenizer.json"))
    print(f"wrote fixtures under {args.out}")


if __name__ == "__main__":
    main()
