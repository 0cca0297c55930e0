#!/bin/bash
# properties = {properties}
# The job's Snakemake command, with --force-use-threads added: Snakemake leaves it out of a group job's command,
# so each job of the group would be its own process loading the models again; with it, a section's figures run
# as threads of one Snakemake process, which loads each model stage once. (Remote jobs read no profile.)
read -r -d '' command <<'SNAKEMAKE_JOB'
{exec_job}
SNAKEMAKE_JOB
# scancel (SIGTERM) stops the job at once: on SIGTERM Snakemake would finish its running jobs and write their
# outputs after the cluster has reported the job cancelled. Outputs are written atomically (renamed into place),
# so a killed job leaves none behind, and the next run makes them again.
trap 'kill -KILL 0' TERM
eval "${{command/ -m snakemake / -m snakemake --force-use-threads }}" &
wait $!
