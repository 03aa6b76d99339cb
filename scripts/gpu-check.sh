#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no Rust toolchain (what
# scripts/gpu-prepare.sh made is carried there): under 8 minutes, it prints what it measures
# and ends with one JSON summary line (also written to $OUT/gpu-check.json when $OUT is set).
#
#   scripts/gpu-check.sh [CARRY_DIR]      # default: gpu-carry
#
# 1. the device: name, memory, driver (nvidia-smi), and the binary finds CUDA;
# 1b. `ftlab check-kernels`: every memory-saving op on the GPU (the generic definitions and
#    the CUDA dequantisation kernel) against the CPU kernels: values, gradients, updates;
# 2. numerics: perplexity of a SmolLM2-shaped model (random weights, 135M parameters) on
#    the CPU and on CUDA, f32 — the mean nll must agree within 0.01 %;
# 3. the Paris check on CUDA, when the real SmolLM2 is in the cache (FTLAB_CACHE_DIR);
# 4. `ftlab bench` of the four techniques on CUDA at 1 × 512: NVML peaks (VRAM), the
#    predicted peak beside each, tokens/s; QLoRA the smallest and every technique below
#    full fine-tuning (at this length LoRA, which keeps every activation, may pass
#    checkpointing: it does on the CPU);
# 5. a 20-step LoRA run on CUDA whose loss must fall.
# CUDA's runtime libraries are taken from PyTorch's nvidia packages when present.
set -uo pipefail
cd "$(dirname "$0")/.."
carry="${1:-gpu-carry}"
work="${OUT:-$(mktemp -d)}"
mkdir -p "$work"
log() { echo "[gpu-check] $*" >&2; }
fail=()
# FTLAB_CHECK_DEVICE=cpu runs the same steps on the CPU (to check the script itself).
dev="${FTLAB_CHECK_DEVICE:-cuda}"

# CUDA 13 runtime libraries (cuBLAS, cuRAND, NVRTC) from pip's nvidia packages.
libs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

bin="$work/ftlab"
if [ -f "$carry/ftlab.xz" ]; then xz -dc "$carry/ftlab.xz" > "$bin"; else cp "$carry/ftlab" "$bin"; fi
chmod +x "$bin"
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n1)
log "GPU: $gpu"
if ! "$bin" --version >/dev/null 2>"$work/start.err"; then
    log "the binary does not start: $(cat "$work/start.err")"
    exit 1
fi

# 1b. Every memory-saving op on the device against the CPU kernels (and the CUDA kernel
# against its twins).
if "$bin" check-kernels --device "$dev" >"$work/kernels.txt" 2>&1; then
    kernels=ok
else
    kernels=failed
    fail+=("check-kernels")
fi
sed 's/^/[gpu-check] /' "$work/kernels.txt" >&2

model="$work/smollm2-shape"
rm -rf "$model"
cp -r "$carry/smollm2-shape" "$model"
"$bin" models random "$model" >/dev/null || fail+=("random model")

# 2. Perplexity, CPU against CUDA.
text=tests/fixtures/smollm2_ref/ppl_text_en.txt
ppl_cpu=$("$bin" perplexity --model "$model" --file "$text" --device cpu 2>/dev/null | tail -n1)
ppl_gpu=$("$bin" perplexity --model "$model" --file "$text" --device "$dev" 2>"$work/ppl.err" | tail -n1)
log "perplexity cpu:  $ppl_cpu"
log "perplexity $dev: $ppl_gpu $(tail -n1 "$work/ppl.err")"
ppl_ok=$(python3 -c "
import json,sys
a=json.loads('''$ppl_cpu''')['nll']; b=json.loads('''$ppl_gpu''')['nll']
print('true' if abs(a-b)/a < 1e-4 else 'false')" 2>/dev/null || echo false)
[ "$ppl_ok" = true ] || fail+=("perplexity cpu vs $dev")

# 3. Paris, with the real model when it is cached.
paris=skipped
if "$bin" models list 2>/dev/null | grep -q smollm2; then
    answer=$("$bin" generate --device "$dev" --chat --prompt "What is the capital of France?" --temperature 0 --max-new-tokens 16 2>"$work/paris.err")
    log "Paris check: $answer | $(tail -n1 "$work/paris.err")"
    case "$answer" in *Paris*) paris=ok ;; *) paris=failed; fail+=("Paris") ;; esac
fi

# 4. The four techniques on CUDA, 1 × 512.
"$bin" bench --steps 3 --seq-len 512 --json --set model.spec="$model" --set model.device="$dev" \
    >"$work/bench.jsonl" 2>"$work/bench.err" || { fail+=("bench"); tail -n5 "$work/bench.err" >&2; }
python3 - "$work/bench.jsonl" >&2 <<'PY' || true
import json, sys
mib = lambda b: f"{b / 2**20:,.0f}" if b is not None else "-"
for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip()):
    print(f"[gpu-check] bench 1x512 {r['technique']:<45} {r['tokens_per_sec']:>9.1f} tok/s  peak {mib(r['train_peak_bytes'])} MiB  predicted {mib(r.get('predicted_peak_bytes'))} MiB  load {mib(r['load_peak_bytes'])} MiB  ({r.get('device')})")
PY
bench_ok=$(python3 -c "
import json
rows=[json.loads(l) for l in open('$work/bench.jsonl') if l.strip()]
p=[r['train_peak_bytes'] for r in rows]
# Rows: full, checkpointing, LoRA, QLoRA. At 1 x 512 LoRA (every activation kept) may
# pass checkpointing, on the CPU too; each saving must still beat full fine-tuning, and
# QLoRA be the smallest.
print('true' if len(p)==4 and p[3]<min(p[:3]) and p[1]<p[0] and p[2]<p[0] else 'false')" 2>/dev/null || echo false)
[ "$bench_ok" = true ] || fail+=("memory order on $dev")

# 5. Twenty LoRA steps on CUDA.
rm -rf "$work/lora"
"$bin" train lora --run-dir "$work/lora" --set model.spec="$model" --set model.device="$dev" \
    --set train.max_steps=20 --set train.eval_every=10 --set train.save_every=20 \
    --set data.eval_limit=8 >"$work/train.out" 2>"$work/train.err" || { fail+=("LoRA run"); tail -n5 "$work/train.err" >&2; }
loss=$(python3 -c "
import json
ev=[json.loads(l) for l in open('$work/lora/metrics.jsonl')]
s=[e['loss'] for e in ev if e.get('event')=='step']
d=[e.get('device') for e in ev if e.get('event')=='start']
print(json.dumps({'first3': sum(s[:3])/3, 'last3': sum(s[-3:])/3, 'steps': len(s), 'device': d[0] if d else None}))" 2>/dev/null || echo '{}')
log "LoRA on $dev: $loss"
loss_ok=$(python3 -c "
import json; l=json.loads('''$loss''')
print('true' if l.get('steps')==20 and l['last3']<l['first3'] and str(l.get('device','')).startswith('$dev') else 'false')" 2>/dev/null || echo false)
[ "$loss_ok" = true ] || fail+=("LoRA loss did not fall on $dev")

printf '%s\n' "${fail[@]}" > "$work/failed.txt"
summary=$(python3 - "$work/bench.jsonl" "$work/failed.txt" <<PY
import json, sys
rows = []
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
except OSError:
    pass
print(json.dumps({
    "gpu": """$gpu""",
    "perplexity_cpu": """$ppl_cpu""", "perplexity_cuda": """$ppl_gpu""",
    "paris": "$paris",
    "check_kernels": "$kernels",
    "bench_1x512": [{k: r.get(k) for k in ("technique", "device", "tokens_per_sec", "train_peak_bytes", "predicted_peak_bytes", "load_peak_bytes")} for r in rows],
    "lora_20_steps": json.loads('''$loss'''),
    "failed": [l.strip() for l in open(sys.argv[2]) if l.strip()],
}))
PY
)
echo "$summary"
[ -n "${OUT:-}" ] && echo "$summary" > "$OUT/gpu-check.json"
[ ${#fail[@]} -eq 0 ]
