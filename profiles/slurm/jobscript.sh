#!/bin/bash
# properties = {properties}
export SNAKEMAKE_PROFILE="$SLURM_SUBMIT_DIR/profiles/slurm/job"
{exec_job}
