#!/bin/bash
# properties = {properties}
# The job's Snakemake command, with --force-use-threads added: Snakemake leaves it out of a group job's command,
# so each job of the group would be its own process loading the models again; with it, a section's figures run
# as threads of one Snakemake process, which loads each model stage once. (Remote jobs read no profile.)
read -r -d '' command <<'SNAKEMAKE_JOB'
{exec_job}
SNAKEMAKE_JOB
eval "${{command/ -m snakemake / -m snakemake --force-use-threads }}"
