#!/usr/bin/env bash
# Real screenshots of the dashboard, one per tab: the release binary runs in tmux, each
# screen is captured with `tmux capture-pane -e` (text + colours) and rendered to PNG by
# scripts/ansi2png.py (Pillow). Reproducible: bash scripts/screenshots.sh
#
# The runs are trained on the tiny random LLaMA the tests use (SmolLM2's tokenizer, a few
# hundred thousand parameters), written into a scratch directory, so that three runs finish
# in about a minute on a CPU; the Inference tab talks to the real SmolLM2-135M-Instruct
# (fetched into ~/.cache/ftlab on first use). Also prints the dashboard's own CPU use while
# runs train (from /proc/<pid>/stat).
#
# Needs: tmux (apt-get install -y tmux), python3 with Pillow (pip install pillow).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/screenshots}
COLS=${COLS:-140}
ROWS=${ROWS:-42}
SESSION=ftlab-shots
command -v tmux >/dev/null || { echo "needs tmux: apt-get install -y tmux" >&2; exit 1; }
python3 -c 'import PIL' 2>/dev/null || { echo "needs Pillow: pip install pillow" >&2; exit 1; }

cd "$REPO"
cargo build --release
BIN=$REPO/target/release/ftlab
WORK=$(mktemp -d /tmp/ftlab-shots.XXXXXX)
trap 'tmux kill-session -t $SESSION 2>/dev/null || true' EXIT
echo "scratch directory: $WORK"

# The tiny model and a small SFT file, written by the same helper the tests use.
FTLAB_TINY_MODEL_DIR=$WORK cargo test --release --test supervisor \
    write_tiny_model_for_screenshots -- --ignored --nocapture >/dev/null
MODEL=$WORK/tiny-llama
DATA=$WORK/sft-64.jsonl
test -f "$MODEL/config.json"

# The project's presets (./presets, with ./data beside them) and the user's own directory.
mkdir -p "$WORK/presets" "$WORK/config/ftlab/presets"
cp "$REPO"/presets/*.toml "$WORK/presets/"
ln -s "$REPO/data" "$WORK/data"
tiny() { # name description extra-toml
    cat >"$WORK/config/ftlab/presets/$1.toml" <<TOML
name = "$1"
description = "$2"
[model]
spec = "$MODEL"
$3
[data]
train = "$DATA"
eval = "$DATA"
eval_limit = 16
max_seq_len = 96
[train]
batch_size = 4
lr = 3e-3
warmup_steps = 4
schedule = "cosine"
max_steps = 40
eval_every = 8
save_every = 20
TOML
}
tiny tiny-full "tiny random LLaMA: full fine-tuning" "gradient_checkpointing = false"
tiny tiny-lora "tiny random LLaMA: LoRA r=8 on all linear layers" "[lora]
r = 8
alpha = 16
target_modules = \"all-linear\""
sed -i 's/^lr = 3e-3/lr = 1e-2/' "$WORK/config/ftlab/presets/tiny-lora.toml"
tiny tiny-qlora "tiny random LLaMA: NF4 base + LoRA, 8-bit AdamW, checkpointing" "quant = \"nf4\"
gradient_checkpointing = true
[lora]
r = 8
alpha = 16
target_modules = \"all-linear\""
sed -i 's/^lr = 3e-3/lr = 1e-2\noptimizer = "adamw8bit"/' "$WORK/config/ftlab/presets/tiny-qlora.toml"

tmux kill-session -t $SESSION 2>/dev/null || true
tmux new-session -d -s $SESSION -x "$COLS" -y "$ROWS" -c "$WORK" \
    "env XDG_CONFIG_HOME=$WORK/config TERM=xterm-256color $BIN"
PID=$(tmux list-panes -t $SESSION -F '#{pane_pid}')
keys() { tmux send-keys -t $SESSION "$@"; sleep 0.3; }
screen() { tmux capture-pane -t $SESSION -p; }
shot() {
    sleep "${2:-0.5}"
    tmux capture-pane -t $SESSION -e -p >"$WORK/$1.ansi"
    python3 "$REPO/scripts/ansi2png.py" "$WORK/$1.ansi" "$OUT/$1.png" --cols "$COLS" --rows "$ROWS"
    echo "wrote $OUT/$1.png"
}
wait_for() { # text timeout-seconds
    for _ in $(seq 1 $(($2 * 2))); do
        screen | grep -q -- "$1" && return 0
        sleep 0.5
    done
    echo "timed out waiting for '$1'" >&2
    screen >&2
    return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
mkdir -p "$OUT"
sleep 1.5

# Presets: edit the LoRA rank of tiny-lora, mark the three tiny presets.
NPRESETS=$(ls "$WORK"/presets/*.toml | wc -l)
wait_for "Presets ($((NPRESETS + 3)))" 20
# tiny-lora: the project's presets come first, then the user's (tiny-full, tiny-lora, ...).
for _ in $(seq $((NPRESETS + 1))); do keys Down; done
keys e; keys Down; keys Down; keys Enter      # LoRA rank
keys BSpace; keys 16; keys Enter; keys Escape
keys Up; keys Space; keys Down; keys Space; keys Down; keys Space; keys Up
shot presets

# Runs: launch the three (they queue on the CPU), watch the first train.
keys Enter
keys 2
wait_for "step 12/40" 180
T0=$(cpu_ticks); S0=$(date +%s.%N)
sleep 30
T1=$(cpu_ticks); S1=$(date +%s.%N)
HZ=$(getconf CLK_TCK)
CPU=$(python3 -c "print(f'{100*($T1-$T0)/$HZ/($S1-$S0):.2f}')")
echo "dashboard CPU while a run trains (Runs tab, 30 s): $CPU % of one core"
shot runs

# Compare: wait for all three, choose them all.
wait_for "Runs (3) " 900
keys 3; keys a; shot compare

# Runs tab of a finished run.
keys 2; keys Down; shot runs-finished

# Inference: the base SmolLM2, greedy, one question.
keys 4
keys s; keys Enter; keys BSpace; keys BSpace; keys BSpace; keys BSpace; keys 0; keys Enter; keys Escape
keys Enter
tmux send-keys -t $SESSION -l "What is the capital of France? Answer in one sentence."
keys Enter
wait_for "end of turn\|token limit" 300
shot infer 1

# Search mode: the base MiniLM embeds data/docs (chunked) and lists the nearest chunks.
keys Escape; keys m
keys Enter
tmux send-keys -t $SESSION -l "How many bikes does the bike share have?"
keys Enter
wait_for "nearest chunks" 300
shot search 1

# RAG mode: the same retrieval, then SmolLM2 answers from the retrieved chunks.
keys Escape; keys m
keys Enter
tmux send-keys -t $SESSION -l "How much does Harrowby's optional garden waste collection cost per year?"
keys Enter
wait_for "end of turn\|token limit" 600
shot rag 1

# Help overlay.
keys Escape; keys '?'; shot help
keys Escape; keys q
sleep 1
echo "done: $(ls "$OUT")"
