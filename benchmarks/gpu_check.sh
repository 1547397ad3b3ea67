#!/usr/bin/env bash
# The depth-1000 training step on a CUDA machine, in fp32 and bf16-mixed, through the same benchmark
# as the CPU table (benchmarks/peers.py: normlab vs a plain stack, torchscale if importable), then one
# 2-GPU FSDP2 smoke run over NCCL when there are two GPUs. Prints one Markdown table (peers.py's); about 5-8
# minutes on one H100-class GPU. From the repository root:
#
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/gpu_check.{md,json}
#
# It needs only a python3 with a CUDA torch: normlab runs from src/ (no install), and on a machine
# without a package index (an air-gapped GPU node, a bare CUDA image) the pure-Python packages such
# an image lacks (omegaconf, hydra-core, antlr4, torchscale, fairscale) come from a wheel folder made
# beforehand where an index is reachable (`make gpu-wheels` -> .whl/; copy it along). They are
# installed into a scratch folder, never into the machine's Python.
#
# Settings (environment): GPU_CHECK_OUT, where the table goes (default benchmarks/results/gpu_check);
# GPU_CHECK_DEVICE, cuda (default) or cpu, which the test suite uses to run this very script at
# depth 2. Arguments are passed on to peers.py after the defaults, so they override them
# (e.g. `--depths 100 --steps 3`).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
device=${GPU_CHECK_DEVICE:-cuda}
out=${GPU_CHECK_OUT:-benchmarks/results/gpu_check}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

has_torchscale() {  # with the timm stand-in that peers.py puts first on the path
  "$py" -c "import sys; sys.path.insert(0, 'benchmarks/stubs'); from torchscale.architecture.decoder import Decoder" \
    2>/dev/null
}
if [ -d .whl ] && ! { "$py" -c "import omegaconf" 2>/dev/null && has_torchscale; }; then
  site=$(mktemp -d /tmp/normlab-gpu-site.XXXXXX)
  trap 'rm -rf "$site"' EXIT
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:$site"
fi
"$py" -c "import omegaconf" 2>/dev/null || {
  echo "gpu_check: omegaconf is not importable; install normlab's dependencies, or run 'make gpu-wheels' where a package index is reachable and bring .whl/ along" >&2
  exit 2
}
if [ "$device" = cuda ]; then
  "$py" -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu_check: no CUDA GPU visible to torch ' + torch.__version__); print(torch.cuda.get_device_name(0))"
fi
impls="normlab plain"
has_torchscale && impls="normlab torchscale plain"
timeout 480 "$py" benchmarks/peers.py --device "$device" --depths 1000 --norms deepnorm preln \
  --impls $impls --variants bf16-mixed --rounds 1 --warmup 2 --steps 5 --out "$out" "$@"
gpus=0
[ "$device" = cuda ] && gpus=$("$py" -c 'import torch; print(torch.cuda.device_count())')
if [ "$gpus" -ge 2 ]; then
  # reads Tiny Shakespeare from data/ or NORMLAB_DATA_MIRROR, like any run
  timeout 240 "$py" train.py trainer=fsdp trainer.accelerator=gpu trainer.devices=2 experiment=debug \
    model.depth=48 trainer.max_steps=20 test=false run_id=gpu-check-fsdp \
    && echo "FSDP2 on 2 GPUs (NCCL): 20 steps finished" | tee -a "$out.md"
fi
