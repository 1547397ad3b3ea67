#!/usr/bin/env bash
# The depth-1000 training step on a CUDA machine, in fp32 and bf16-mixed, through the same benchmark
# as the CPU table (benchmarks/peers.py: normlab vs a plain stack, torchscale if installed), then one
# 2-GPU FSDP2 smoke run over NCCL when there are two GPUs. Prints one Markdown table; about 5-8
# minutes on one H100-class GPU. Usage, from the repository root with the venv active:
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/gpu_check.md
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0))"
impls="normlab plain"
python -c "import torchscale" 2>/dev/null && impls="normlab torchscale plain"
timeout 480 python benchmarks/peers.py --device cuda --depths 1000 --norms deepnorm preln \
  --impls $impls --variants bf16-mixed --rounds 1 --warmup 2 --steps 5 --out benchmarks/results/gpu_check
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  timeout 240 python train.py trainer=fsdp trainer.accelerator=gpu trainer.devices=2 experiment=debug \
    model.depth=48 trainer.max_steps=20 test=false run_id=gpu-check-fsdp \
    && echo "FSDP2 on 2 GPUs (NCCL): 20 steps finished" >> benchmarks/results/gpu_check.md
fi
cat benchmarks/results/gpu_check.md
