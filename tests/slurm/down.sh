#!/usr/bin/env bash
# Stop the test cluster of tests/slurm/up.sh: cancel its jobs, then stop slurmd, slurmctld,
# slurmdbd, MariaDB and munged, each by its own pid file under $MMIE_SLURM_DIR (never by name).
# The state directory (logs, database) is kept for inspection; up.sh wipes it on the next start.
# Also removes up.sh's symlink /etc/slurm/slurm.conf (only when it points into this state directory).
set -uo pipefail

DIR=${MMIE_SLURM_DIR:-/tmp/mmie-slurm}
export PATH="$PATH:/usr/sbin:/sbin"
log() { echo "[slurm down $(date +%T)] $*"; }

if [ ! -e "$DIR/.mmie-slurm" ]; then
    log "no test cluster state in $DIR; nothing to stop"
    exit 0
fi
export SLURM_CONF=$DIR/etc/slurm.conf

alive() {  # alive <pidfile> <expected command name>: prints the pid when that process runs
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ] && echo "$pid"
}

stop() {  # stop <name> <pidfile>: SIGTERM, up to 30 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    pid=$(alive "$pidfile" "$name") || { log "$name: not running"; return 0; }
    kill -TERM "$pid"
    for _ in $(seq 150); do
        [ -d "/proc/$pid" ] || { log "$name (pid $pid) stopped"; return 0; }
        sleep 0.2
    done
    log "$name (pid $pid) ignored SIGTERM for 30 s; SIGKILL"
    kill -KILL "$pid"
}

# jobs first (the cluster is private to these tests, so every job on it is ours)
if alive "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    scancel --full --quiet --cluster=mmie --state=PENDING,RUNNING --user="$(id -un)" 2>/dev/null \
        || scancel --quiet --user="$(id -un)"
    for _ in $(seq 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop slurmd "$DIR/run/slurmd.pid"
stop slurmctld "$DIR/run/slurmctld.pid"
stop slurmdbd "$DIR/run/slurmdbd.pid"
stop mariadbd "$DIR/run/mariadb.pid"
stop munged "$DIR/munge/munged.pid"
rm -f "$DIR/env"     # the cluster is down: tests/workflow/test_slurm.py then skips with "no test cluster"
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/etc/slurm.conf" ]; then
    rm /etc/slurm/slurm.conf
    log "removed the symlink /etc/slurm/slurm.conf"
fi
exit 0
