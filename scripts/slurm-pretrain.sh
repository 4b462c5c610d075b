#!/bin/bash
# Multi-node pre-training under Slurm: one torchrun agent per node, one training process per GPU.
#
#   sbatch --nodes=4 scripts/slurm-pretrain.sh configs/llama-tiny.yaml train.checkpoint_every=500
#   GPUS=4 sbatch --nodes=2 --gpus-per-node=4 scripts/slurm-pretrain.sh configs/gpt2-tiny.yaml train.distributed=ddp
#
# Arguments: the config file, then KEY=VALUE overrides (FSDP unless one says train.distributed=ddp). run_dir must
# be on a filesystem every node sees: each rank writes its own shards of an FSDP checkpoint there. Submitting the
# same command again resumes from the newest valid checkpoint, on any number of nodes (shards are resharded on
# load). Environment: GPUS (processes per node; default: the GPUs Slurm gave the node), PORT (rendezvous port on
# the first node, 29500), PYTHON (the interpreter with ptlab installed).
#
#SBATCH --job-name=ptlab-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --output=%x-%j.out

set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch [--nodes=N] scripts/slurm-pretrain.sh CONFIG [KEY=VALUE ...]" >&2
    exit 2
fi
CONFIG=$1
shift

GPUS=${GPUS:-${SLURM_GPUS_ON_NODE:-8}}
MASTER=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}
PYTHON=${PYTHON:-python}

# --signal=TERM@120 has Slurm send SIGTERM two minutes before the time limit; torchrun passes it to every rank,
# which saves a checkpoint after its current step and stops (torchrun kills ranks still running 30 s later, so
# keep train.checkpoint_every as the safety net for models whose save takes longer).
srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$GPUS" \
    --rdzv-id="$SLURM_JOB_ID" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="$MASTER:$PORT" \
    -m ptlab pretrain --config "$CONFIG" --quiet train.distributed=fsdp "$@"
