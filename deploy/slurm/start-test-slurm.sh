#!/usr/bin/env bash
# A single-node SLURM on this machine, to try the SLURM recipe and to test it
# (tests/test_slurm.py, `make slurm-test`). Run as root:
#
#   deploy/slurm/start-test-slurm.sh     # install (when missing), configure, start, wait
#   deploy/slurm/stop-test-slurm.sh      # cancel its jobs, stop its daemons
#
# 1. Installs Debian's packages slurm-wlm and munge when their programs are missing
#    (apt-get update && apt-get install -y), without letting the packages start daemons.
# 2. Creates a munge key when there is none, and starts munged.
# 3. Writes /etc/slurm/slurm.conf for this host: its short name, and the CPUs and memory
#    slurmd finds here (slurmd -C); one partition "debug" holding this one node. A
#    slurm.conf this script did not write (a real cluster's) is never replaced.
# 4. Starts slurmctld and slurmd, and waits until sinfo shows the node idle.
#
# Idempotent: when its SLURM is already up with the same configuration it says so and
# returns at once; a changed configuration (another CPU count, say) restarts the daemons.
# On failure it prints what failed (the command, its output, the daemon's log lines) on
# stderr, last line "start-test-slurm: error: ...", and exits 1.
#
# Environment: SLURM_START_TIMEOUT (seconds to wait for each step, default 60).
set -uo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by deploy/slurm/start-test-slurm.sh (daskgmm): a single-node test SLURM"
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
TIMEOUT=${SLURM_START_TIMEOUT:-60}
PARTITION=debug
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "start-test-slurm: $*" >&2; }
fail() {
    # the details first, the one-line reason last (tests/test_slurm.py skips with it)
    if [ $# -gt 1 ]; then printf '%s\n' "${@:2}" | sed 's/^/    /' >&2; fi
    echo "start-test-slurm: error: $1" >&2
    exit 1
}
log_tail() { [ -f "$1" ] && { echo "last lines of $1:"; tail -n 15 "$1"; }; }
# the last fatal or error line of a daemon's log (its cause of death, usually)
last_error() {
    local line
    line=$(grep -E 'fatal|error' "$1" 2>/dev/null | tail -n 1 | sed 's/^\[[^]]*\] //')
    echo "${line:-no error in $1}"
}
# a daemon is running when its pid file names a live process of that program
running() { [ -s "$2" ] && [ "$(cat "/proc/$(cat "$2")/comm" 2>/dev/null)" = "$1" ]; }

[ "$(id -u)" = 0 ] || fail "run as root: this installs packages and starts daemons (sudo $0)"

# --- 1. packages --------------------------------------------------------------------------
missing=()
for program in munged munge unmunge slurmctld slurmd sinfo sbatch squeue scontrol; do
    command -v "$program" >/dev/null || missing+=("$program")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || fail "SLURM is not installed (missing: ${missing[*]}) \
and this is not a Debian-like system with apt-get: install slurm-wlm and munge by hand"
    say "installing slurm-wlm and munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    started=$(date +%s)
    # the packages must not start their daemons with the default configuration: this
    # script starts them once configured (policy-rc.d: Debian's switch for that)
    created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    drop_policy() { [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d; }
    unreachable='Failed to fetch|Temporary failure resolving|Could not resolve|Could not connect|Unable to connect|Connection (timed out|refused|failed)|Network is unreachable|No route to host'
    out=$(apt-get update 2>&1)
    status=$?
    if [ $status -ne 0 ] || grep -Eq "$unreachable" <<<"$out"; then
        drop_policy
        fail "apt-get could not reach Debian's mirrors: $(grep -E '^(E|W|Err):' <<<"$out" \
| head -n 3 | tr '\n' ' ')" "apt-get update (exit $status):" "$(tail -n 20 <<<"$out")"
    fi
    out=$(apt-get install -y --no-install-recommends slurm-wlm munge 2>&1)
    status=$?
    drop_policy
    if [ $status -ne 0 ]; then
        if grep -Eq "$unreachable" <<<"$out"; then
            fail "apt-get could not reach Debian's mirrors: $(grep -E '^(E|Err):' <<<"$out" \
| head -n 3 | tr '\n' ' ')" "$(tail -n 20 <<<"$out")"
        fi
        fail "apt-get install -y slurm-wlm munge failed (exit $status): $(grep -E '^E:' \
<<<"$out" | head -n 3 | tr '\n' ' ')" "$(tail -n 20 <<<"$out")"
    fi
    say "installed slurm-wlm and munge in $(( $(date +%s) - started )) s"
fi

# --- 2. munge -----------------------------------------------------------------------------
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s "$MUNGE_KEY" ]; then
        out=$(mungekey --create --keyfile="$MUNGE_KEY" 2>&1) \
            || fail "mungekey could not create $MUNGE_KEY" "$out"
    fi
    chown munge:munge "$MUNGE_KEY" && chmod 0400 "$MUNGE_KEY"
    install -d -o munge -g munge -m 0755 /run/munge
    out=$(runuser -u munge -- munged 2>&1) \
        || fail "munged did not start: $(tail -n 1 <<<"$out")" "$out" \
                "$(log_tail /var/log/munge/munged.log)"
    for _ in $(seq "$TIMEOUT"); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 1
    done
    out=$(munge -n </dev/null 2>&1 | unmunge 2>&1) \
        || fail "munged started but a credential does not decode (munge -n | unmunge)" "$out" \
                "$(log_tail /var/log/munge/munged.log)"
    say "munged is up"
fi

# --- 3. slurm.conf for this host ----------------------------------------------------------
host=$(hostname -s)
[ -n "$host" ] || fail "hostname -s printed nothing: give this machine a name"
# "NodeName=<host> CPUs=2 Boards=1 SocketsPerBoard=... RealMemory=24000": what slurmd
# sees on this machine (its first line; the second is the uptime)
node=$(slurmd -C 2>&1 | head -n 1)
grep -q "^NodeName=$host " <<<"$node" \
    || fail "slurmd -C did not describe this host ($host): $node" "$(slurmd -C 2>&1)"
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
conf=$(cat <<EOF
$MARK
# for $host: $cpus CPUs, $memory MB. Replaced by the next run of the script; removed by
# nothing (stop-test-slurm.sh leaves it for the next start).
ClusterName=daskgmm-test
# on the loopback address: a host name that does not resolve here is no obstacle
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# no cgroups (containers often have none to give): processes tracked through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets 1 GiB per CPU, not the whole node
DefMemPerCPU=1024
ReturnToService=2
# no accounting database: finished jobs are recorded one line each in the job
# completion log (JobId, UserId, Name, JobState, NodeList, times)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
MinJobAge=300
KillWait=5
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARK"; then
    fail "$CONF exists and was not written by this script: this machine has its own \
SLURM configuration, left alone (use that SLURM, or move the file away to start a test one)"
fi

node_state() { sinfo -h -n "$host" -o %T 2>/dev/null | head -n 1; }
if [ -e "$CONF" ] && [ "$(cat "$CONF")" = "$conf" ] && running slurmctld "$CTLD_PID" \
        && running slurmd "$SLURMD_PID"; then
    state=$(node_state)
    case "$state" in
        idle|mixed|allocated|completing)
            say "already up: node $host is $state in partition $PARTITION"; exit 0 ;;
    esac
fi

changed=
[ -e "$CONF" ] && [ "$(cat "$CONF")" != "$conf" ] && changed=1
{ mkdir -p /etc/slurm && printf '%s\n' "$conf" > "$CONF"; } || fail "could not write $CONF"
install -d -o slurm -g slurm -m 0755 "$STATE_DIR" "$LOG_DIR"
install -d -o root -g root -m 0755 "$SPOOL_DIR"

# --- 4. slurmctld and slurmd --------------------------------------------------------------
stop() {  # $1 program, $2 pid file
    running "$1" "$2" || return 0
    local pid
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
}
if [ -n "$changed" ]; then
    say "the configuration changed: restarting slurmctld and slurmd"
    stop slurmd "$SLURMD_PID"
    stop slurmctld "$CTLD_PID"
fi

if ! running slurmctld "$CTLD_PID"; then
    out=$(slurmctld 2>&1) || fail "slurmctld did not start: $(tail -n 1 <<<"$out")" "$out" \
        "$(log_tail "$LOG_DIR/slurmctld.log")"
fi
for _ in $(seq "$TIMEOUT"); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && break
    sleep 1
done
if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then
    running slurmctld "$CTLD_PID" \
        || fail "slurmctld exited: $(last_error "$LOG_DIR/slurmctld.log")" \
            "$(log_tail "$LOG_DIR/slurmctld.log")"
    fail "slurmctld is not answering after ${TIMEOUT} s (scontrol ping)" \
        "$(scontrol ping 2>&1)" "$(log_tail "$LOG_DIR/slurmctld.log")"
fi

if ! running slurmd "$SLURMD_PID"; then
    out=$(slurmd 2>&1) || fail "slurmd did not start: $(tail -n 1 <<<"$out")" "$out" \
        "$(log_tail "$LOG_DIR/slurmd.log")"
fi
state=
for _ in $(seq "$TIMEOUT"); do
    state=$(node_state)
    [ "$state" = idle ] && break
    case "$state" in
        down*|drain*|fail*)  # ReturnToService=2 brings it back once slurmd registers
            scontrol update nodename="$host" state=resume >/dev/null 2>&1 ;;
    esac
    sleep 1
done
if [ "$state" != idle ]; then
    running slurmd "$SLURMD_PID" \
        || fail "slurmd exited: $(last_error "$LOG_DIR/slurmd.log")" \
            "$(log_tail "$LOG_DIR/slurmd.log")"
    fail "node $host is '${state:-unknown}' after ${TIMEOUT} s, not idle \
($(scontrol show node "$host" 2>/dev/null | grep -o 'Reason=.*' || echo 'no reason given'))" \
        "$(sinfo 2>&1)" "$(log_tail "$LOG_DIR/slurmd.log")" "$(log_tail "$LOG_DIR/slurmctld.log")"
fi
say "up: node $host ($cpus CPUs, $memory MB) is idle in partition $PARTITION; logs in $LOG_DIR"
