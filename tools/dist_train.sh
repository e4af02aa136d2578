#!/usr/bin/env bash
# Distributed training on one or more machines with torchrun (mmdet's tools/dist_train.sh convention).
#   bash tools/dist_train.sh CONFIG GPUS [tools/train.py arguments]
# GPUS is the number of processes per machine (one per GPU; without CUDA they train on the CPU with gloo).
# Several machines: run it on each with NNODES=<machines> NODE_RANK=<0..NNODES-1> MASTER_ADDR=<node 0's address>
# and the same PORT (default 29500). PYTHON overrides the interpreter (default: the repo's .venv, else python).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: [NNODES=1] [NODE_RANK=0] [MASTER_ADDR=127.0.0.1] [PORT=29500] $0 CONFIG GPUS [train.py args]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PORT=${PORT:-29500}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"
