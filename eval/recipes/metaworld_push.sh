#!/usr/bin/env bash
# Rebuild the shipped MetaWorld push assets and every published number from scratch, with one command:
#
#     bash eval/recipes/metaworld_push.sh              # one CUDA GPU (planned for about 25 minutes on an H100)
#     SCALE=smoke bash eval/recipes/metaworld_push.sh  # the same steps at toy sizes (a few minutes on a CPU)
#
# Steps: record the training set (parallel workers) and held-out long tours -> train the `small` and
# `tiny` world models and the success judge -> package them into pretrained/metaworld_push (fp16, model
# cards) -> fidelity (horizons, ablations, revisits), ranking (all policies x RANK_EPISODES), streaming
# speed (batched 1/16/128, naive), training throughput and MFU, the improvement loop -> model cards
# rewritten with the results. Everything lands under $WORK (data, checkpoints, reports) and
# eval/results/ + pretrained/metaworld_push (what is committed). Recording, training and ranking resume,
# the judge and fidelity runs are skipped when their output exists, so a rerun after an interruption
# continues where it stopped; packaging and the speed benchmarks are short and simply run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

SCALE=${SCALE:-gpu}
if [[ $SCALE == smoke ]]; then
  : "${EPISODES:=6}" "${EPISODE_STEPS:=60}" "${TOUR_AFTER:=30}" "${LONG_EPISODES:=2}" "${HORIZONS:=[0.5,1.0]}"
  : "${SMALL_STEPS:=4}" "${TINY_STEPS:=4}" "${BATCH:=2}" "${JUDGE_STEPS:=10}" "${JUDGE_VAL:=2}" "${RANK_EPISODES:=1}" "${VAL_CLIPS:=1}"
  : "${SPEED_ARGS:=--short_horizon=4 --long_horizon=8 --naive_horizon=4 --call_frames=4 --batch_sizes=[1,2] --batched_frames=4}"
  : "${TRAIN_SPEED_ARGS:=--presets=[tiny] --steps=1}" "${IMPROVE:=0}" "${RUN:=smoke}" "${WORK:=outputs/recipe_smoke}"
  : "${DEST:=$WORK/pretrained}" "${RESULTS:=$WORK/results}" "${NUM_WORKERS:=0}"
else
  : "${EPISODES:=400}" "${EPISODE_STEPS:=200}" "${TOUR_AFTER:=120}" "${LONG_EPISODES:=8}" "${HORIZONS:=[1,5,10,20]}"
  : "${SMALL_STEPS:=6000}" "${TINY_STEPS:=4000}" "${BATCH:=64}" "${JUDGE_STEPS:=2000}" "${JUDGE_VAL:=20}" "${RANK_EPISODES:=20}" "${VAL_CLIPS:=16}"
  : "${SPEED_ARGS:=--preset=small --batch_sizes=[1,16,128]}" "${TRAIN_SPEED_ARGS:=}" "${IMPROVE:=1}" "${RUN:=gpu}"
  : "${WORK:=outputs/recipe}" "${DEST:=pretrained/metaworld_push}" "${RESULTS:=eval/results}" "${NUM_WORKERS:=4}"
fi
PY=${PYTHON:-python}
export MUJOCO_GL=${MUJOCO_GL:-egl}
TRAIN_DATA=$WORK/datasets/metaworld_push
LONG_DATA=$WORK/datasets/metaworld_push_long
GPU_TIME_START=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - GPU_TIME_START )) s so far)"; }

step "1/7 record the training set and the held-out long tours"
$PY -m data.metaworld.record --root="$TRAIN_DATA" --repo_id=local/metaworld_push --episodes="$EPISODES" \
  --env.max_episode_steps="$EPISODE_STEPS" --tour_after="$TOUR_AFTER" --tour_prob=0.5
# 20 s of robot time is 1600 env steps; seeds far from the training set's.
LONG_STEPS=$($PY -c "import json; print(int(max(json.loads('$HORIZONS')) * 80) + 20)")
$PY -m data.metaworld.record --root="$LONG_DATA" --repo_id=local/metaworld_push_long --episodes="$LONG_EPISODES" \
  --env.max_episode_steps="$LONG_STEPS" --tour_after=120 --seed=1000000

step "2/7 train the world models and the judge"
train() {  # name preset steps
  local out=$WORK/train/$1 resume=false
  [[ -f $out/model/config.json ]] && { echo "$out: done"; return; }
  [[ -f $out/checkpoints/latest ]] && resume=true
  $PY -m worldmodel.train --dataset.root="$TRAIN_DATA" --model.preset="$2" --dataset.clip_frames=6 \
    --dataset.memory_frames=3 --train.steps="$3" --train.batch_size="$BATCH" --train.lr=1e-3 \
    --train.warmup_steps=$(( $3 / 20 + 1 )) --train.val_every=$(( $3 / 4 + 1 )) \
    --train.checkpoint_every=$(( $3 / 8 + 1 )) --train.val_episodes=2 --train.val_clips="$VAL_CLIPS" --train.num_workers="$NUM_WORKERS" \
    --output_dir="$out" --resume="$resume"
}
train small small "$SMALL_STEPS"
train tiny tiny "$TINY_STEPS"
[[ -f $WORK/judge/config.json ]] || $PY -m worldmodel.cli judge --dataset.root="$TRAIN_DATA" --val_episodes="$JUDGE_VAL" \
  --steps="$JUDGE_STEPS" --output_dir="$WORK/judge"
GPU_TRAIN_S=$(( $(date +%s) - GPU_TIME_START ))

step "3/7 package (fp16, model cards)"
for name in small tiny; do
  $PY -m eval.package --train_dir="$WORK/train/$name" --name=$name --dest="$DEST" --gpu_time="$SCALE run, ${GPU_TRAIN_S} s for data + all training"
done
$PY -m eval.package --judge_dir="$WORK/judge" --dest="$DEST" --gpu_time="$SCALE run, within ${GPU_TRAIN_S} s"

step "4/7 fidelity: horizons, ablations, revisits"
for name in small tiny; do
  [[ -f $RESULTS/fidelity_${RUN}_$name.json ]] && { echo "fidelity $name: done"; continue; }
  $PY -m eval.fidelity --model="$DEST/$name" --dataset.root="$LONG_DATA" --dataset.repo_id=local/metaworld_push_long \
    --episodes="$LONG_EPISODES" --horizons_s="$HORIZONS" --run="${RUN}_$name" --results_dir="$RESULTS" \
    --output_dir="$WORK/fidelity"
done

step "5/7 ranking: the whole policy family in imagination vs the simulator"
$PY -m eval.rank --model="$DEST/small" --judge="$DEST/judge" --episodes="$RANK_EPISODES" --run="${RUN}_small" \
  --results_dir="$RESULTS" --output_dir="$WORK/rank" --resume=true  # finished (policy, episode) pairs are kept

step "6/7 speed: streaming (single, batched, naive) and training throughput / MFU"
$PY -m eval.speed $SPEED_ARGS --output="$RESULTS/speed_$RUN.json"
$PY -m eval.train_speed $TRAIN_SPEED_ARGS --output="$RESULTS/train_speed_$RUN.json"

if [[ $IMPROVE == 1 ]]; then
  step "7/7 improvement loop: fine-tuning on imagined successes, measured in the simulator"
  $PY -m eval.improve --model="$DEST/small" --judge="$DEST/judge" --dataset_root="$TRAIN_DATA" --device=cuda \
    --run="${RUN}_small" --results_dir="$RESULTS" --output_dir="$WORK/improve"
else
  step "7/7 improvement loop skipped (IMPROVE=0)"
fi

step "model cards with the results"
for name in small tiny; do
  $PY -m eval.package --train_dir="$WORK/train/$name" --name=$name --dest="$DEST" \
    --gpu_time="$SCALE run, ${GPU_TRAIN_S} s for data + all training" \
    --results="[$RESULTS/fidelity_${RUN}_$name.json$([[ $name == small ]] && echo ",$RESULTS/rank_${RUN}_small.json")]"
done
step "done: $DEST, $RESULTS"
