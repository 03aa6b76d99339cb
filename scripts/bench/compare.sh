#!/usr/bin/env bash
# ftlab against the tools a user would otherwise pick, side by side in one run, as ratios:
# training tokens/s against HF transformers + peft (full fine-tuning, gradient checkpointing,
# LoRA; QLoRA's step time against LoRA's), and greedy decoding and prompt processing against
# llama.cpp (llama-cpp-python), on the same SmolLM2 GGUF with the same number of threads.
#
#   scripts/bench/compare.sh                 # every shape, every core
#   THREADS=2 SHAPES="1x256" STEPS=3 scripts/bench/compare.sh
#
# Installs what it needs into $FTLAB_BENCH_VENV (default ~/.cache/ftlab-bench/venv) from
# scripts/bench/requirements.txt the first time, builds ftlab (release) and fetches SmolLM2.
# Each pair is measured one after the other, alternating, so that both see the same machine;
# run it on a quiet machine (nothing else compiling or training). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."

THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-3}
SHAPES=${SHAPES-"1x256 2x256 1x512"}
MAX_NEW=${MAX_NEW:-128}
VENV=${FTLAB_BENCH_VENV:-$HOME/.cache/ftlab-bench/venv}
PY="$VENV/bin/python"

if ! "$PY" -c "import torch, transformers, peft, llama_cpp" 2>/dev/null; then
    echo "installing the comparison tools into $VENV (first run; torch's CUDA wheels are a few GB)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    # AVX2/AVX-512 (VNNI) kernels, not -march=native: on virtual machines that advertise
    # AMX, a native build crashes in its AMX path (seen here: llama-cpp-python 0.3.36).
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON}" \
        "$VENV/bin/pip" install -q -r scripts/bench/requirements.txt
fi

cargo build --release -q
FTLAB=target/release/ftlab
"$FTLAB" models fetch smollm2 >&2
MODEL_DIR=$("$FTLAB" models list | awk '$1 == "smollm2" { print $NF }')
GGUF=$(ls "$MODEL_DIR"/*.gguf | head -n 1)
DATA=data/sft/train.jsonl
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

field() { "$PY" -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
ratio() { "$PY" -c "print(f'{$1 / $2:.2f}')"; }
fmt() { "$PY" -c "print(f'{$1:.1f}')"; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $THREADS threads; $(date -u +%Y-%m-%d)"
echo "model: $(basename "$GGUF") (training: dequantised to f32 by both)"
echo
echo "| what | shape | reference | reference | ftlab | ftlab / reference |"
echo "|---|---|---|---|---|---|"

declare -A PRESET=([full]=baseline [grad-ckpt]=grad-ckpt [lora]=lora)
for shape in $SHAPES; do
    b=${shape%x*}
    s=${shape#*x}
    lora_step=""
    for tech in full grad-ckpt lora; do
        hf=$("$PY" scripts/bench/hf_train.py "$GGUF" "$tech" "$b" "$s" "$STEPS" "$THREADS" "$DATA" 2>"$TMP/hf.err") || {
            cat "$TMP/hf.err" >&2
            exit 1
        }
        ft=$("$FTLAB" bench "${PRESET[$tech]}" --steps "$STEPS" --batch-size "$b" --seq-len "$s" --threads "$THREADS" --json 2>"$TMP/ft.err") || {
            cat "$TMP/ft.err" >&2
            exit 1
        }
        hf_tps=$(echo "$hf" | field tokens_per_sec)
        ft_tps=$(echo "$ft" | field tokens_per_sec)
        [ "$tech" = lora ] && lora_step=$(echo "$ft" | field step_secs)
        echo "| training tokens/s, $tech | ${b}×${s} | HF transformers + peft | $(fmt "$hf_tps") | $(fmt "$ft_tps") | $(ratio "$ft_tps" "$hf_tps") |"
    done
    ft=$("$FTLAB" bench qlora --steps "$STEPS" --batch-size "$b" --seq-len "$s" --threads "$THREADS" --json 2>"$TMP/ft.err") || {
        cat "$TMP/ft.err" >&2
        exit 1
    }
    q_step=$(echo "$ft" | field step_secs)
    echo "| QLoRA step s (reference: ftlab's LoRA step s) | ${b}×${s} | ftlab LoRA | $(fmt "$lora_step") | $(fmt "$q_step") | $(ratio "$q_step" "$lora_step") |"
    # The qlora preset checkpoints its blocks (selective checkpointing: the 4-bit matmuls'
    # outputs kept); LoRA with the same checkpointing isolates the 4-bit base's own cost.
    ft=$("$FTLAB" bench lora --set model.gradient_checkpointing=true --set model.selective_checkpointing=true --steps "$STEPS" --batch-size "$b" --seq-len "$s" --threads "$THREADS" --json 2>"$TMP/ft.err") || {
        cat "$TMP/ft.err" >&2
        exit 1
    }
    ck_step=$(echo "$ft" | field step_secs)
    echo "| QLoRA step s (reference: ftlab's LoRA + the same selective checkpointing) | ${b}×${s} | ftlab LoRA + ckpt | $(fmt "$ck_step") | $(fmt "$q_step") | $(ratio "$q_step" "$ck_step") |"
done

# Greedy decoding of a chat answer.
echo "Write a short story about a lighthouse keeper." >"$TMP/chat.txt"
ll=$("$PY" scripts/bench/llama_speed.py "$GGUF" "$THREADS" "$MAX_NEW" "$TMP/chat.txt" --chat)
ft_err=$("$FTLAB" generate --chat --prompt-file "$TMP/chat.txt" --temperature 0 --max-new-tokens "$MAX_NEW" --threads "$THREADS" 2>&1 >/dev/null)
ll_tps=$(echo "$ll" | field decode_tokens_per_sec)
ft_tps=$(echo "$ft_err" | grep '^\[ftlab\]' | sed -E 's/.*: ([0-9.]+) tokens\/s.*/\1/')
echo "| decode tokens/s, greedy, $MAX_NEW new tokens | chat prompt | llama.cpp | $(fmt "$ll_tps") | $(fmt "$ft_tps") | $(ratio "$ft_tps" "$ll_tps") |"

# Prompt processing of a RAG-sized prompt (~1,000 tokens of the built-in documents).
cat data/docs/en_*.txt >"$TMP/docs.txt"
head -c 4600 "$TMP/docs.txt" >"$TMP/rag.txt"
printf '\n\nQuestion: When does the first train leave?\nAnswer:' >>"$TMP/rag.txt"
ll=$("$PY" scripts/bench/llama_speed.py "$GGUF" "$THREADS" 1 "$TMP/rag.txt")
ft_err=$("$FTLAB" generate --prompt-file "$TMP/rag.txt" --temperature 0 --max-new-tokens 1 --threads "$THREADS" 2>&1 >/dev/null)
ll_n=$(echo "$ll" | field prompt_tokens)
ll_s=$(echo "$ll" | field prompt_secs)
ft_n=$(echo "$ft_err" | grep '^\[ftlab\]' | sed -E 's/^\[ftlab\] ([0-9]+) prompt tokens.*/\1/')
ft_s=$(echo "$ft_err" | grep '^\[ftlab\]' | sed -E 's/.*prompt processed in ([0-9.]+) s.*/\1/')
ll_pps=$("$PY" -c "print($ll_n / $ll_s)")
ft_pps=$("$PY" -c "print($ft_n / $ft_s)")
echo "| prompt tokens/s ($ll_n / $ft_n tokens) | RAG prompt | llama.cpp | $(fmt "$ll_pps") | $(fmt "$ft_pps") | $(ratio "$ft_pps" "$ll_pps") |"
