#!/usr/bin/env bash
# Status of a SLURM job for Snakemake's generic cluster executor: prints running, success or failed.
# Reads squeue (finished jobs stay there MinJobAge seconds), then sacct where accounting storage exists.
set -uo pipefail
state=$(squeue --noheader --states=all --jobs "$1" --format=%T 2>/dev/null | head -n1)
if [ -z "$state" ]; then
    state=$(sacct --noheader --parsable2 --allocations --jobs "$1" --format=State 2>/dev/null | head -n1)
fi
case "${state%% *}" in
    COMPLETED) echo success ;;
    PENDING | CONFIGURING | RUNNING | COMPLETING | SUSPENDED | REQUEUED | REQUEUE_HOLD | REQUEUE_FED | RESIZING | SIGNALING | STAGE_OUT | RESV_DEL_HOLD) echo running ;;
    "") echo "slurm job $1: no state from squeue or sacct (past MinJobAge, no accounting storage): counted as failed" >&2; echo failed ;;
    *) echo "slurm job $1: $state" >&2; echo failed ;;
esac
