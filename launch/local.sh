#!/usr/bin/env bash
# Run N processes of grit-train on this machine as N hosts of one JAX cluster (gloo CPU collectives),
# each with DEVICES_PER_HOST faked CPU devices: the multi-host path of a TPU pod, on one machine.
#
#   launch/local.sh N [grit-train arguments...]
#
# Environment: PYTHON (default python3), DEVICES_PER_HOST (default 4), LOG_DIR (default WORKDIR/logs,
# WORKDIR being the run's --workdir, else ./logs; process i writes LOG_DIR/process_i.log, and its lines
# also go to stdout prefixed "[i] "),
# GRIT_COORDINATOR_PORT (default: a free port), GRIT_LOCAL_MODULE (default grit_jax.programs.grit_train),
# KILL_AFTER (seconds between SIGTERM and SIGKILL when stopping the others, default 30).
# If one process fails, the others are stopped and the exit status is the first failure's.
# SIGTERM / SIGINT are forwarded to every process (as a preemption would be).
# Several slices: add --config.mesh.slices=S (S divides N): processes i*N/S .. (i+1)*N/S-1 are slice i.
set -euo pipefail

usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }
die() { echo "local.sh: error: $*" >&2; exit 2; }

[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
(($# >= 1)) || { usage >&2; exit 2; }
N=$1
shift
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number of processes, not '$N'"

PYTHON=${PYTHON:-python3}
MODULE=${GRIT_LOCAL_MODULE:-grit_jax.programs.grit_train}
DEVICES_PER_HOST=${DEVICES_PER_HOST:-4}
# The run's own --workdir (local only: a gs:// work directory keeps its logs here, under ./logs).
workdir=.
for ((i = 1; i <= $#; i++)); do
  case ${!i} in
    --workdir=*) workdir=${!i#--workdir=} ;;
    --workdir) j=$((i + 1)); workdir=${!j:-.} ;;
  esac
done
[[ $workdir == *://* ]] && workdir=.
LOG_DIR=${LOG_DIR:-$workdir/logs}
KILL_AFTER=${KILL_AFTER:-30}
[[ $DEVICES_PER_HOST =~ ^[1-9][0-9]*$ ]] || die "DEVICES_PER_HOST must be a positive number"
[[ $KILL_AFTER =~ ^[0-9]+$ ]] || die "KILL_AFTER must be a number of seconds"
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON not found"
PORT=${GRIT_COORDINATOR_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
mkdir -p "$LOG_DIR"

# XLA_FLAGS of the caller, without its own device count (ours must win).
xla_flags="--xla_force_host_platform_device_count=$DEVICES_PER_HOST"
for flag in ${XLA_FLAGS:-}; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || xla_flags+=" $flag"
done

pids=() pipes=()
for ((i = 0; i < N; i++)); do
  exec {out}> >(tee "$LOG_DIR/process_$i.log" | sed -u "s/^/[$i] /")
  pipes+=($!)
  GRIT_NUM_PROCESSES=$N GRIT_PROCESS_ID=$i GRIT_COORDINATOR=localhost:$PORT \
    XLA_FLAGS=$xla_flags JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 \
    "$PYTHON" -m "$MODULE" "$@" >&$out 2>&1 &
  pids+=($!)
  exec {out}>&-
done
echo "local.sh: $N processes (${pids[*]}), coordinator localhost:$PORT, logs in $LOG_DIR/process_*.log" >&2

killer=""
stop_all() {  # SIGTERM to the processes still running now, SIGKILL after KILL_AFTER seconds
  [[ -z $killer ]] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  (sleep "$KILL_AFTER"; kill -KILL "${pids[@]}" 2>/dev/null) </dev/null >/dev/null 2>&1 &
  killer=$!
}
trap 'echo "local.sh: SIGTERM, forwarding to the processes" >&2; stop_all' TERM
trap 'echo "local.sh: SIGINT, forwarding SIGTERM to the processes" >&2; stop_all' INT

# Poll rather than `wait -n`: bash's `wait -n PID...` can lose a child that ended while a trap ran
# ("no such job"), and then loops forever. A finished job leaves `jobs -rp`; `wait PID` gives its status.
status=0 left=("${pids[@]}")
while ((${#left[@]})); do
  running=" $(jobs -rp | tr '\n' ' ') "
  still=()
  for pid in "${left[@]}"; do
    if [[ $running == *" $pid "* ]]; then still+=("$pid"); continue; fi
    if wait "$pid" 2>/dev/null; then rc=0; else rc=$?; fi
    for ((i = 0; i < N; i++)); do [[ ${pids[i]} == "$pid" ]] && break; done
    if ((rc != 0)); then
      echo "local.sh: process $i exited with status $rc (log: $LOG_DIR/process_$i.log)" >&2
      if ((status == 0)); then
        status=$rc
        stop_all
      fi
    fi
  done
  left=("${still[@]}")
  ((${#left[@]} == 0)) || sleep 0.2
done
[[ -z $killer ]] || kill "$killer" 2>/dev/null || true
wait "${pipes[@]}" 2>/dev/null || true  # the last lines of the logs
exit "$status"
