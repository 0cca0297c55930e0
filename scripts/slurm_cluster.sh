#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (localhost only), for the workflow's cluster test:
#   scripts/slurm_cluster.sh install   Debian's slurm-wlm and munge (apt; as root)
#   scripts/slurm_cluster.sh start     write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd; wait until up
#   scripts/slurm_cluster.sh stop      stop the daemons this script started, remove the config it wrote
# Runs as root. The config goes to the default /etc/slurm/slurm.conf, not a SLURM_CONF of its own: the SLURM
# executor plugin's job step removes SLURM_CONF (it keeps only a few job-id SLURM_* variables) before its `srun`,
# which then finds no config. An /etc/slurm/slurm.conf this script did not write is never touched. State and
# logs live under $SLURM_HOME. The node offers all CPUs and, where `nvidia-smi -L` lists GPUs, those GPUs as gres
# (so `--gpus=1` works there); on a CPU-only machine no gres is declared, unless SLURM_FAKE_GPU=1 (the tests: one
# "GPU" backed by /dev/null, which SLURM schedules and hands to a job as CUDA_VISIBLE_DEVICES=0).
set -euo pipefail

SLURM_HOME=${SLURM_HOME:-/tmp/diffusion-post-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by diffusion-post scripts/slurm_cluster.sh"
NODE=$(hostname -s)

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        echo "slurm: slurm-wlm and munge installed"; return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge
}

write_config() {
    if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
        echo "slurm: $CONF exists and was not written by this script: not starting a test cluster over it" >&2
        exit 1
    fi
    mkdir -p "$SLURM_HOME"/{state,spool,log} /etc/slurm
    local cpus mem gpus gres=""
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    if [ "${gpus:-0}" -gt 0 ]; then
        gres="Gres=gpu:$gpus"
        { echo "$MARK"; for i in $(seq 0 $((gpus - 1))); do echo "NodeName=$NODE Name=gpu File=/dev/nvidia$i"; done; } > /etc/slurm/gres.conf
    elif [ "${SLURM_FAKE_GPU:-0}" = 1 ]; then  # the tests' stand-in: one gres "GPU" backed by /dev/null
        gres="Gres=gpu:1"
        { echo "$MARK"; echo "NodeName=$NODE Name=gpu File=/dev/null"; } > /etc/slurm/gres.conf
    fi
    cat > "$CONF" <<CONF
$MARK
ClusterName=diffusionpost
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SLURM_HOME/state
SlurmdSpoolDir=$SLURM_HOME/spool
SlurmctldPidFile=$SLURM_HOME/slurmctld.pid
SlurmdPidFile=$SLURM_HOME/slurmd.pid
SlurmctldLogFile=$SLURM_HOME/log/slurmctld.log
SlurmdLogFile=$SLURM_HOME/log/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue for 10 minutes: the executor reads their final state there.
MinJobAge=600
ReturnToService=2
SchedulerParameters=sched_interval=1
MessageTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

running() {
    [ -s "$SLURM_HOME/slurmctld.pid" ] && kill -0 "$(cat "$SLURM_HOME/slurmctld.pid")" 2>/dev/null
}

start() {
    if running; then echo "slurm: already running ($SLURM_HOME)"; return; fi
    write_config
    if ! munge -n </dev/null >/dev/null 2>&1; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/diffusion-post-munged.pid  # writable by munge
    fi
    slurmctld
    slurmd
    for _ in $(seq 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
            echo "slurm: node $NODE idle ($SLURM_HOME)"; return
        fi
        sleep 1
    done
    echo "slurm: the node did not come up in 60 s; logs in $SLURM_HOME/log" >&2
    tail -n 5 "$SLURM_HOME"/log/*.log >&2 || true
    exit 1
}

stop() {
    local pids=() pid
    for pid_file in "$SLURM_HOME/slurmd.pid" "$SLURM_HOME/slurmctld.pid" /run/munge/diffusion-post-munged.pid; do
        if [ -s "$pid_file" ]; then
            pid=$(cat "$pid_file")
            if kill "$pid" 2>/dev/null; then pids+=("$pid"); fi
        fi
        rm -f "$pid_file"
    done
    # Wait until they have exited (SIGKILL after 20 s): a start right after must find their ports free.
    local alive
    for _ in $(seq 200); do
        alive=0
        for pid in "${pids[@]}"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
        if [ "$alive" = 0 ]; then break; fi
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for file in "$CONF" /etc/slurm/gres.conf; do
        if [ -e "$file" ] && grep -qxF "$MARK" "$file"; then rm -f "$file"; fi
    done
    echo "slurm: stopped"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
