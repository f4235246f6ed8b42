#!/usr/bin/env python3
"""Writes a randomly initialised Hugging Face Llama model for hf_server.py.

    python3 tools/examples/hf_mkmodel.py --shape 1b --out /tmp/hf-1b --device cuda
    python3 tools/examples/hf_mkmodel.py --shape 8b --out /tmp/hf-8b --device cuda

then serve it and capture the server with hotboot (see hf_server.py):

    hotboot build -o hf.hbsnap --port 8000 --canary-path /generate \\
        --canary-body '{"prompt":"The quick brown fox","max_tokens":16}' \\
        --canary-compare /tokens --after-restore /after-restore \\
        -- python3 tools/examples/hf_server.py --model /tmp/hf-1b --port 8000

Shapes (LlamaForCausalLM, bf16 by default):
  1b  TinyLlama-1.1B: hidden 2048, 22 layers, 32 heads / 4 KV heads,
      intermediate 5632, vocab 32000, rope_theta 10000        (~2.2 GB)
  8b  Llama-3-8B: hidden 4096, 32 layers, 32 heads / 8 KV heads,
      intermediate 14336, vocab 128256, rope_theta 500000     (~16 GB)

Fast at 8B: the model is built on the meta device (no memory, no
initialisation: transformers' _init_weights never runs), materialised empty
on --device, and every weight is drawn there by one seeded generator
(normal, std 0.02; norm weights 1), so on a GPU the weights cost well under
a second and the time goes to save_pretrained (safetensors shards). Each
phase's time is printed; the last line is JSON.

The tokenizer: a byte-level BPE with no merges (ids 0..2 <unk>, <s>, </s>,
then one id per byte), built in code with the `tokenizers` library and saved
as a PreTrainedTokenizerFast beside the weights: nothing is downloaded.
hf_server.py loads it with AutoTokenizer; without it (or when it cannot be
built) the server encodes prompts as UTF-8 bytes itself (id = byte + 3), the
same ids.

Needs torch and transformers (the GPU machine has them); without them it
exits 2 and says so.
"""
import argparse
import json
import os
import sys
import time

SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
               intermediate_size=5632, vocab_size=32000, rope_theta=10000.0, max_position_embeddings=2048),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
}
SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2; byte b is id b + 3


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES), help="1b (TinyLlama) or 8b (Llama-3-8B)")
    ap.add_argument("--out", required=True, help="the directory to write (must not exist, or be empty)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        ap.error(f"--out {args.out}: exists and is not an empty directory (pick a new one)")
    return args


def make_config(transformers, shape):
    s = dict(SHAPES[shape])
    theta = s.pop("rope_theta")
    config = transformers.LlamaConfig(**s, hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2, attention_bias=False, mlp_bias=False)
    # transformers 5 keeps RoPE settings in rope_parameters, 4.x in rope_theta:
    # set whichever this version has (set after construction, so that neither
    # version sees an argument it does not know).
    if hasattr(config, "rope_parameters"):
        config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    if hasattr(config, "rope_theta"):
        config.rope_theta = theta
    return config


def make_tokenizer(transformers):
    """A byte-level BPE without merges: one id per byte after the specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    byte_of = _byte_level_table()
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: byte_of[c])
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({c: i + len(SPECIALS) for i, c in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")


def _byte_level_table():
    """GPT-2's byte-to-unicode table, inverted (character -> byte): printable bytes map to themselves."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(map(chr, cs), bs))


def main():
    args = parse_args()
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"hf_mkmodel.py needs torch and transformers ({e}); run it where they are installed "
              f"(the GPU machine has torch 2.11 and transformers 5)", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("hf_mkmodel.py: --device cuda but torch sees no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    times = {}
    t0 = time.perf_counter()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = make_config(transformers, args.shape)

    t = time.perf_counter()
    with torch.device("meta"):  # no storage, so _init_weights costs nothing: the fast way at 8B
        model = transformers.LlamaForCausalLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    times["build_s"] = time.perf_counter() - t

    t = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() == 1:  # RMSNorm weights
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    times["fill_s"] = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())

    t = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(args.out)
    times["save_s"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        make_tokenizer(transformers).save_pretrained(args.out)
        tokenizer = "byte-level BPE (PreTrainedTokenizerFast)"
    except Exception as e:  # the server then encodes bytes itself, the same ids
        tokenizer = f"none ({type(e).__name__}: {e}); hf_server.py encodes UTF-8 bytes as ids"
        print(f"hf_mkmodel.py: no tokenizer saved: {tokenizer}", file=sys.stderr)
    times["tokenizer_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0

    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    for k, v in times.items():
        print(f"hf_mkmodel: {k[:-2]:10s} {v:8.2f} s")
    print(json.dumps({"out": os.path.abspath(args.out), "shape": args.shape, "params": params,
                      "dtype": args.dtype, "device": args.device, "bytes": size, "tokenizer": tokenizer,
                      "rope": getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None),
                      "seed": args.seed, "torch": torch.__version__, "transformers": transformers.__version__,
                      "timings": times}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
