#!/usr/bin/env bash
# Stop the single-node SLURM of start-test-slurm.sh: cancel its jobs, stop slurmd,
# slurmctld and munged (by their pid files). Run as root. Does nothing to a SLURM whose
# slurm.conf that script did not write. Packages, configuration, state and logs
# (/var/log/slurm) stay: the next start-test-slurm.sh starts in a second.
set -uo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by deploy/slurm/start-test-slurm.sh (daskgmm): a single-node test SLURM"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "stop-test-slurm: $*" >&2; }
fail() { echo "stop-test-slurm: error: $*" >&2; exit 1; }
running() { [ -s "$2" ] && [ "$(cat "/proc/$(cat "$2")/comm" 2>/dev/null)" = "$1" ]; }
stop() {  # $1 program, $2 pid file: TERM, then KILL after 10 s
    running "$1" "$2" || return 0
    local pid
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 20); do
        kill -0 "$pid" 2>/dev/null || { say "stopped $1 (pid $pid)"; return 0; }
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null
    say "killed $1 (pid $pid): it did not stop within 10 s"
}

[ "$(id -u)" = 0 ] || fail "run as root (sudo $0)"
[ -e "$CONF" ] || { say "no $CONF: nothing to stop"; exit 0; }
head -n 1 "$CONF" | grep -qF "$MARK" \
    || fail "$CONF was not written by start-test-slurm.sh: this SLURM is not the test one, \
left alone"

# the jobs first: their processes outlive slurmd (proctrack/linuxproc)
if running slurmctld /run/slurmctld.pid; then
    jobs=$(squeue -h -o %i 2>/dev/null)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        scancel $jobs
        for _ in $(seq 30); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
        say "cancelled jobs: $(tr '\n' ' ' <<<"$jobs")"
    fi
fi
stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop munged /run/munge/munged.pid
say "stopped"
