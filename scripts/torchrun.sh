#!/usr/bin/env bash
# Launch train.py (or eval.py) under torchrun, on one node or many. All arguments go to the script
# as Hydra overrides; trainer.num_nodes / trainer.devices are set from NNODES / NPROC_PER_NODE so
# Lightning's world size always matches torchrun's.
#
#   one node, 8 GPUs:     NPROC_PER_NODE=8 scripts/torchrun.sh trainer=fsdp trainer.precision=bf16-mixed
#   one node, 2 CPU procs: NPROC_PER_NODE=2 scripts/torchrun.sh trainer=fsdp experiment=debug
#   2 nodes (run on each node, same RUN_ID and endpoint; rendezvous via c10d):
#     NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0:29500 RUN_ID=exp42 scripts/torchrun.sh trainer=fsdp
#
# Environment:
#   NNODES          number of nodes (default 1)
#   NPROC_PER_NODE  processes per node (default: number of visible GPUs, or 1 without GPUs)
#   RDZV_ENDPOINT   host:port of the c10d rendezvous, reachable from every node (required if NNODES>1;
#                   unset with NNODES=1 means --standalone on a free local port)
#   RUN_ID          names the one Hydra run directory all ranks share (logs/<task>/runs/<RUN_ID>);
#                   default NORMLAB_RUN_ID, SLURM_JOB_ID, else the time stamp (single node only)
#   LOCAL_ADDR      this node's address as the others reach it (torchrun --local-addr), optional
#   SCRIPT          train.py (default) or eval.py
#   PYTHON          interpreter (default: .venv/bin/python of the checkout if present, else python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NNODES="${NNODES:-1}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  [[ "${NPROC_PER_NODE}" -ge 1 ]] || NPROC_PER_NODE=1
fi
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "${ROOT}/.venv/bin/python" ]]; then PYTHON="${ROOT}/.venv/bin/python"; else PYTHON=python3; fi
fi
SCRIPT="${SCRIPT:-train.py}"

RUN_ID="${RUN_ID:-${NORMLAB_RUN_ID:-${SLURM_JOB_ID:-}}}"
if [[ -z "${RUN_ID}" ]]; then
  if [[ "${NNODES}" -gt 1 ]]; then
    echo "torchrun.sh: set RUN_ID (the same value on every node) so all ranks share one run directory" >&2
    exit 2
  fi
  RUN_ID="$(date +%Y-%m-%d_%H-%M-%S)"
fi
export NORMLAB_RUN_ID="${RUN_ID}"

if [[ "${NNODES}" -eq 1 && -z "${RDZV_ENDPOINT:-}" ]]; then
  RDZV=(--standalone)
else
  if [[ -z "${RDZV_ENDPOINT:-}" ]]; then
    echo "torchrun.sh: NNODES=${NNODES} needs RDZV_ENDPOINT=<host:port> reachable from every node" >&2
    exit 2
  fi
  RDZV=(--nnodes="${NNODES}" --rdzv-backend=c10d --rdzv-endpoint="${RDZV_ENDPOINT}" --rdzv-id="${RUN_ID}")
fi
if [[ -n "${LOCAL_ADDR:-}" ]]; then
  RDZV+=(--local-addr="${LOCAL_ADDR}")
fi

echo "torchrun.sh: run ${RUN_ID}: ${NNODES} node(s) x ${NPROC_PER_NODE} process(es), ${SCRIPT}" >&2
exec "${PYTHON}" -m torch.distributed.run "${RDZV[@]}" --nproc-per-node="${NPROC_PER_NODE}" \
  "${ROOT}/${SCRIPT}" trainer.num_nodes="${NNODES}" trainer.devices="${NPROC_PER_NODE}" "$@"
