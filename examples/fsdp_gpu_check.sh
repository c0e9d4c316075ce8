#!/usr/bin/env bash
# FSDP check for a machine with two or more CUDA GPUs (FSDP does not run on CPU; see
# docs/distributed.md). Trains the demo ChannelGPT for one epoch under strategy fsdp,
# once with full and once with sharded checkpoints, and resumes each for a second epoch.
#   bash examples/fsdp_gpu_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-fsdp_check}
config=$(python -c "from brain_gen.cli import demo_files; print(demo_files('$out'))" | tail -n 1)
fsdp=(--set trainer.accelerator=gpu --set trainer.devices=2 --set trainer.strategy=fsdp --set eval_runner.enabled=false)
for kind in full sharded; do
    run=(--set "trainer.fsdp_state_dict_type=$kind" --set "save_dir=runs_fsdp_$kind")
    brain-gen train "$config" "${fsdp[@]}" "${run[@]}" --set trainer.max_epochs=1
    brain-gen train "$config" "${fsdp[@]}" "${run[@]}" --set trainer.max_epochs=2 --set resume_from=last
    ls -d "$out/runs_fsdp_$kind"/logs/version_*/checkpoints/last-checkpoint*
done
echo "FSDP trained, saved and resumed with full and with sharded checkpoints"
