#!/usr/bin/env bash
# Cloud TPU VM pods with gcloud: create, set up, run grit-train on every worker, gather logs, stop, delete.
# Run `launch/tpu.sh --help` for usage.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu.sh COMMAND [options] [-- arguments]

commands:
  create   queue a TPU slice (gcloud compute tpus queued-resources create) and wait until ACTIVE;
           with --slices N, N slices of --type in one multislice queued resource (nodes <name>-0..N-1)
  setup    copy the repository (git archive of --ref, default HEAD) to every worker (of every slice);
           install uv, a Python --python-version venv in <dir>/.venv (the runtime images have Python
           3.10), and '.[tpu]' into it (or, with --python, pip install into that Python)
  run      start grit-train on every worker (GRIT_DISTRIBUTED=1, nohup, output to <dir>/logs/train.log,
           exit status to <dir>/logs/train.rc):
             launch/tpu.sh run -- --config configs/gritlm.py:7b --workdir gs://bucket/run1
  keep     create (if absent), set up and run, then watch: when the queued resource is preempted or
           suspended (Spot/preemptible), delete it, create it again, set up and run again; grit-train
           resumes from the latest checkpoint in the gs:// --workdir. At most --max-restarts times;
           every event is logged to stderr and <--out, default logs/<name>>/keep.log, and after each
           restart and at the end the goodput line summed over the attempts (WORKDIR/goodput.jsonl);
           with --slices N, one slice preempted re-creates all of them
  logs     gather every worker's log into --out (default logs/<name>/<worker>.log; with --slices
           logs/<name>/<node>/<worker>.log); -f follows worker 0 (of slice 0)
  ssh      ssh to --worker (default 0; or all) of --node; arguments after -- are run there as a command
  stop     send SIGTERM to the training run on every worker (it checkpoints and exits);
           --vm also stops the TPU VM (single-host slices only)
  delete   delete the queued resource and its TPU nodes

options (flag, or environment variable):
  --project P      GRIT_PROJECT        Google Cloud project (required)
  --zone Z         GRIT_ZONE           zone, e.g. us-east5-a (required)
  --name N         GRIT_TPU_NAME       TPU (and queued resource) name (required)
  --type T         GRIT_TPU_TYPE       accelerator type (create, keep): v4-N, v5e-N (= v5litepod-N),
                                       v5p-N, v6e-N, N the TensorCores (v4, v5p) or chips (v5e, v6e)
  --version V      GRIT_TPU_VERSION    runtime version (create; default per generation from --type)
  --slices N       GRIT_TPU_SLICES     slices of --type in one multislice queued resource (default 1)
  --node I                             ssh: which slice's node (default 0; with --slices)
  --spot                               create Spot VMs instead of on-demand
  --no-wait                            create: do not wait for the slice to become ACTIVE
  --timeout S                          create: give up waiting after S seconds (default 0 = never)
  --worker W                           ssh: worker number or all (default 0)
  --ref R                              setup: git revision to copy (default HEAD)
  --env KEY=VALUE                      run: extra environment variable on every worker (repeatable)
  --remote-dir D   GRIT_REMOTE_DIR     repository directory on the workers, relative to home (default grit_jax)
  --python PY      GRIT_REMOTE_PYTHON  an existing python (>= 3.11) on the workers to use instead of the
                                       venv setup makes (default: <dir>/.venv/bin/python)
  --python-version V GRIT_PYTHON_VERSION  setup: Python version uv installs in the venv (default 3.11)
  --extras E                           setup: the package's extras to install (default tpu; tpu,eval adds mteb)
  --max-restarts N                     keep: re-create the slice at most N times (default 10)
  --poll S                             create, keep: seconds between state checks (default 30)
  --out DIR                            logs, keep: local directory (default logs/<name>)
  -f, --follow                         logs: follow worker 0's log
  --vm                                 stop: also stop the TPU VM
  --dry-run        DRY_RUN=1           print the commands (quoted, "+ " prefix) and run nothing;
                                       honoured anywhere, also after --
  -h, --help                           this message
EOF
}

die() { echo "tpu.sh: error: $*" >&2; exit 2; }

# Quote one word for a POSIX shell (like Python's shlex.quote).
q() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Quote a whole argv into one command line.
qjoin() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(q "$word")"; done
  printf '%s' "$out"
}

# Print the command (quoted) in dry-run mode, run it otherwise.
x() {
  if [[ $DRY_RUN == 1 ]]; then
    echo "+ $(qjoin "$@")"
  else
    echo "+ $(qjoin "$@")" >&2
    "$@"
  fi
}

# gcloud's accelerator type and default runtime version per generation, from Google's "Create Cloud TPU
# VMs" guide (https://cloud.google.com/tpu/docs/create-tpu-vm: ACCELERATOR_TYPE=v5litepod-8,
# VERSION=v2-alpha-tpuv5-lite) and its TPU software versions page
# (https://cloud.google.com/tpu/docs/runtimes).
# v5e is the common name, v5litepod the one gcloud takes. Sets ACCEL and DEFAULT_VERSION.
accelerator() {
  local size=${1##*-}
  [[ $1 == *-* && $size =~ ^[1-9][0-9]*$ ]] ||
    die "unknown --type '$1': use v4-N, v5e-N (or v5litepod-N), v5p-N or v6e-N, e.g. v5e-64"
  case ${1%-*} in
    v4) ACCEL=v4-$size DEFAULT_VERSION=tpu-ubuntu2204-base ;;
    v5e | v5litepod) ACCEL=v5litepod-$size DEFAULT_VERSION=v2-alpha-tpuv5-lite ;;
    v5p) ACCEL=v5p-$size DEFAULT_VERSION=v2-alpha-tpuv5 ;;
    v6e) ACCEL=v6e-$size DEFAULT_VERSION=v2-alpha-tpuv6e ;;
    *) die "unknown --type '$1': use v4-N, v5e-N (or v5litepod-N), v5p-N or v6e-N, e.g. v5e-64" ;;
  esac
  # Only the slice sizes Cloud TPU offers (its v4, v5e, v5p and v6e pages): v5e and v6e count chips, in
  # fixed shapes; v4 and v5p count TensorCores (2 a chip), whole hosts of 4 chips up to a full pod.
  case ${ACCEL%-*} in
    v5litepod | v6e)
      [[ " 1 4 8 16 32 64 128 256 " == *" $size "* ]] ||
        die "no such slice --type '$1': ${1%-*} slices have 1, 4, 8, 16, 32, 64, 128 or 256 chips" ;;
    v4 | v5p)
      local most=$([[ ${ACCEL%-*} == v4 ]] && echo 8192 || echo 17920)
      ((size % 8 == 0 && size <= most)) ||
        die "no such slice --type '$1': ${1%-*}-N counts TensorCores, a multiple of 8 (whole hosts) up to $most" ;;
  esac
}

# ---- arguments ------------------------------------------------------------------------------------
COMMAND=""
PROJECT=${GRIT_PROJECT:-}
ZONE=${GRIT_ZONE:-}
NAME=${GRIT_TPU_NAME:-}
TYPE=${GRIT_TPU_TYPE:-}
VERSION=${GRIT_TPU_VERSION:-}
REMOTE_DIR=${GRIT_REMOTE_DIR:-grit_jax}
REMOTE_PYTHON=${GRIT_REMOTE_PYTHON:-}
PYTHON_VERSION=${GRIT_PYTHON_VERSION:-3.11}
DRY_RUN=${DRY_RUN:-0}
SLICES=${GRIT_TPU_SLICES:-1}
EXTRAS=tpu SPOT=0 WAIT=1 TIMEOUT=0 WORKER=0 NODE=0 REF=HEAD OUT="" FOLLOW=0 STOP_VM=0 MAX_RESTARTS=10 POLL=30
ENVS=() PASSTHROUGH=()

while (($#)); do
  arg=$1
  if [[ $arg == --*=* ]]; then  # --flag=value → --flag value
    set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
    arg=$1
  fi
  case $arg in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --no-wait) WAIT=0 ;;
    -f | --follow) FOLLOW=1 ;;
    --vm) STOP_VM=1 ;;
    --project | --zone | --name | --type | --version | --timeout | --worker | --ref | --env | --remote-dir | --python | --out | --python-version | --max-restarts | --poll | --extras | --slices | --node)
      (($# >= 2)) || die "$arg needs a value"
      case $arg in
        --project) PROJECT=$2 ;;
        --zone) ZONE=$2 ;;
        --name) NAME=$2 ;;
        --type) TYPE=$2 ;;
        --version) VERSION=$2 ;;
        --timeout) TIMEOUT=$2 ;;
        --worker) WORKER=$2 ;;
        --ref) REF=$2 ;;
        --env) ENVS+=("$2") ;;
        --remote-dir) REMOTE_DIR=$2 ;;
        --python) REMOTE_PYTHON=$2 ;;
        --out) OUT=$2 ;;
        --python-version) PYTHON_VERSION=$2 ;;
        --max-restarts) MAX_RESTARTS=$2 ;;
        --poll) POLL=$2 ;;
        --extras) EXTRAS=$2 ;;
        --slices) SLICES=$2 ;;
        --node) NODE=$2 ;;
      esac
      shift ;;
    --)  # the rest goes to grit-train or the remote command, except --dry-run (honoured anywhere)
      shift
      for arg in "$@"; do
        if [[ $arg == --dry-run ]]; then DRY_RUN=1; else PASSTHROUGH+=("$arg"); fi
      done
      break ;;
    -*) die "unknown option $arg (arguments for grit-train or the remote command go after --)" ;;
    *)
      [[ -z $COMMAND ]] || die "unexpected argument '$arg' (arguments for grit-train go after --)"
      COMMAND=$arg ;;
  esac
  shift
done

case $COMMAND in
  create | setup | run | keep | logs | ssh | stop | delete) ;;
  "") usage >&2; exit 2 ;;
  *) die "unknown command '$COMMAND' (create, setup, run, keep, logs, ssh, stop, delete)" ;;
esac
[[ $DRY_RUN == 0 || $DRY_RUN == 1 ]] || die "DRY_RUN must be 0 or 1, not '$DRY_RUN'"
[[ -n $PROJECT ]] || die "missing project: pass --project or set GRIT_PROJECT"
[[ -n $ZONE ]] || die "missing zone: pass --zone or set GRIT_ZONE"
[[ -n $NAME ]] || die "missing TPU name: pass --name or set GRIT_TPU_NAME"
[[ $WORKER =~ ^([0-9]+|all)$ ]] || die "--worker must be a number or all, not '$WORKER'"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds, not '$TIMEOUT'"
[[ $POLL =~ ^[0-9]+$ ]] || die "--poll must be a number of seconds, not '$POLL'"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts must be a number, not '$MAX_RESTARTS'"
[[ $SLICES =~ ^[1-9][0-9]*$ ]] || die "--slices must be a number of slices (1 or more), not '$SLICES'"
[[ $NODE =~ ^[0-9]+$ && $NODE -lt $SLICES ]] || die "--node must be a slice number below --slices $SLICES, not '$NODE'"
# gcloud names the nodes of a multislice queued resource <prefix>-0 .. <prefix>-(N-1) (the API's
# MultisliceParams.nodeIdPrefix, which must match ^[A-Za-z0-9_.~+%-]+$).
((SLICES == 1)) || [[ $NAME =~ ^[A-Za-z0-9_.~+%-]+$ ]] ||
  die "--name '$NAME' with --slices: node names <name>-0.. may use letters, digits and _.~+%- only"
[[ $PYTHON_VERSION =~ ^3\.[0-9]+(\.[0-9]+)?$ ]] || die "--python-version must look like 3.11, not '$PYTHON_VERSION'"
[[ -z $TYPE ]] || accelerator "$TYPE"
[[ $EXTRAS =~ ^[a-z0-9_]+(,[a-z0-9_]+)*$ ]] || die "--extras must look like tpu,eval, not '$EXTRAS'"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ && $REMOTE_DIR != *..* ]] ||
  die "--remote-dir must be a path relative to the workers' home directory, not '$REMOTE_DIR'"
if [[ $COMMAND != ssh && $COMMAND != run && $COMMAND != keep && ${#PASSTHROUGH[@]} -gt 0 ]]; then
  die "$COMMAND takes no arguments after --"
fi

WHERE=(--project "$PROJECT" --zone "$ZONE")
# The TPU VM nodes: the queued resource's one node (named like it), or one per slice.
NODES=("$NAME")
((SLICES == 1)) || for ((i = 0; i < SLICES; i++)); do NODES[i]=$NAME-$i; done
ssh_node() { TPU_SSH=(gcloud compute tpus tpu-vm ssh "$1" "${WHERE[@]}"); }
ssh_node "${NODES[0]}"  # worker 0 of slice 0 is JAX's process 0 (it writes logs, metrics and goodput)
RDIR=$(q "$REMOTE_DIR")
# run and setup's pip use the venv setup made (relative to <dir>: every remote command cds there first).
RPY=$(q "${REMOTE_PYTHON:-.venv/bin/python}")

# ---- commands -------------------------------------------------------------------------------------
QR=(gcloud compute tpus queued-resources)
DESCRIBE=("${QR[@]}" describe "$NAME" "${WHERE[@]}" --format 'value(state.state)')

cmd_create() {
  [[ -n $TYPE ]] || die "missing accelerator type: pass --type (e.g. v5e-64) or set GRIT_TPU_TYPE"
  local tier=() nodes=(--node-id "$NAME")
  ((SPOT)) && tier=(--spot)
  # Multislice: N slices of one accelerator type in one queued resource, provisioned together, from
  # Google's "Cloud TPU Multislice overview" (https://cloud.google.com/tpu/docs/multislice-introduction)
  # and gcloud's grammar (--node-id | --node-count --node-prefix;
  # https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create).
  ((SLICES == 1)) || nodes=(--node-count "$SLICES" --node-prefix "$NAME")
  x "${QR[@]}" create "$NAME" "${nodes[@]}" "${WHERE[@]}" \
    --accelerator-type "$ACCEL" --runtime-version "${VERSION:-$DEFAULT_VERSION}" "${tier[@]}"
  ((WAIT)) || return 0
  wait_active || die "queued resource $NAME is $STATE (see: gcloud compute tpus queued-resources describe $NAME)"
}

# Polls until the queued resource is ACTIVE (status 0) or FAILED/SUSPENDED (status 1); sets STATE.
wait_active() {
  if [[ $DRY_RUN == 1 ]]; then
    echo "+ $(qjoin "${DESCRIBE[@]}")"
    echo "# (repeated every $POLL s until the state is ACTIVE)"
    return 0
  fi
  local start=$SECONDS failures=0
  while :; do
    if ! STATE=$("${DESCRIBE[@]}"); then
      failures=$((failures + 1))
      ((failures < 10)) || die "gcloud could not describe queued resource $NAME 10 times in a row"
    fi
    echo "tpu.sh: $NAME is ${STATE:-UNKNOWN}" >&2
    case $STATE in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) return 1 ;;
    esac
    if ((TIMEOUT > 0 && SECONDS - start >= TIMEOUT)); then
      die "queued resource $NAME not ACTIVE after $TIMEOUT s (state ${STATE:-UNKNOWN})"
    fi
    sleep "$POLL"
  done
}

cmd_setup() {
  local root archive="grit_jax-src.tar.gz"
  root=$(git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --show-toplevel)
  if [[ $DRY_RUN == 0 && -n $(git -C "$root" status --porcelain --untracked-files=no) ]]; then
    echo "tpu.sh: warning: uncommitted changes are not copied (setup copies $REF)" >&2
  fi
  local tmp=${TMPDIR:-/tmp}/$archive install
  # The runtime images are Ubuntu 22.04 with Python 3.10, older than setup.py's python_requires. uv
  # (from PyPI, into the user's site) downloads a standalone CPython into the venv: no root, no apt
  # repository, the same Python on every worker, and a re-run keeps the venv.
  install="python3 -m pip install -q --user uv; ~/.local/bin/uv venv -q --python $(q "$PYTHON_VERSION") .venv"
  install="test -x .venv/bin/python || { $install; }; ~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[$EXTRAS]'"
  [[ -z $REMOTE_PYTHON ]] || install="$RPY -m pip install -q -e '.[$EXTRAS]'"
  x git -C "$root" archive --format=tar.gz -o "$tmp" "$REF"
  local node
  for node in "${NODES[@]}"; do
    ssh_node "$node"
    x gcloud compute tpus tpu-vm scp "$tmp" "$node:$archive" --worker=all "${WHERE[@]}"
    x "${TPU_SSH[@]}" --worker=all --command \
      "set -e; mkdir -p $RDIR; tar xzf $(q "$archive") -C $RDIR; cd $RDIR; $install && $RPY --version"
  done
  ssh_node "${NODES[0]}"
}

# The --workdir among grit-train's arguments (after --).
train_workdir() {
  local i
  for ((i = 0; i < ${#PASSTHROUGH[@]}; i++)); do
    case ${PASSTHROUGH[i]} in
      --workdir=*) echo "${PASSTHROUGH[i]#--workdir=}" ;;
      --workdir) echo "${PASSTHROUGH[i + 1]:-}" ;;
    esac
  done
}

cmd_run() {
  ((${#PASSTHROUGH[@]})) || die "$COMMAND needs grit-train arguments after --, e.g. -- --config configs/gritlm.py:7b --workdir gs://bucket/run"
  local env="GRIT_DISTRIBUTED=1" kv workdir
  workdir=$(train_workdir)
  # Every worker must see one work directory (checkpoint shards of all hosts, one compilation cache).
  [[ $workdir == gs://* ]] || echo "tpu.sh: warning: --workdir '$workdir' is not gs://BUCKET/PATH; every worker" \
    "must see the same directory (checkpoints, compilation cache), e.g. a bucket mounted on all of them" >&2
  for kv in "${ENVS[@]}"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, not '$kv'"
    env+=" ${kv%%=*}=$(q "${kv#*=}")"
  done
  # A background shell waits for grit-train and writes its exit status (what `keep` reads); HUP is
  # ignored so that the ssh session ending leaves both running. Multislice: every worker of every
  # slice; nothing more is set, the TPU runtime puts MEGASCALE_COORDINATOR_ADDRESS, MEGASCALE_NUM_SLICES
  # and MEGASCALE_SLICE_ID in each VM's tpu-env metadata and jax.distributed.initialize() reads them.
  local node
  for node in "${NODES[@]}"; do
    ssh_node "$node"
    x "${TPU_SSH[@]}" --worker=all --command \
      "cd $RDIR && mkdir -p logs && rm -f logs/train.rc && { ( trap '' HUP; $env nohup $RPY -m grit_jax.programs.grit_train $(qjoin "${PASSTHROUGH[@]}") > logs/train.log 2>&1 < /dev/null & echo \$! > logs/train.pid; wait \$!; echo \$? > logs/train.rc ) > /dev/null 2>&1 < /dev/null & }"
  done
  ssh_node "${NODES[0]}"
}

# keep: the preemption loop and its goodput summary (STATUS_COMMAND, event, restart, cmd_keep)
# shellcheck source=launch/tpu_keep.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_keep.sh"

cmd_logs() {
  if ((FOLLOW)); then
    x "${TPU_SSH[@]}" --worker=0 --command "tail -n +1 -f $RDIR/logs/train.log"
    return
  fi
  local out=${OUT:-logs/$NAME} node dir
  for node in "${NODES[@]}"; do  # multislice: one directory per slice's node
    dir=$out
    ((SLICES == 1)) || dir=$out/$node
    ssh_node "$node"
    x mkdir -p "$dir"
    x "${TPU_SSH[@]}" --worker=all --command "cat $RDIR/logs/train.log" --output-directory "$dir"
  done
  [[ $DRY_RUN == 1 ]] || echo "tpu.sh: logs in $out/$( ((SLICES == 1)) || echo '<node>/')<worker>.log" >&2
}

cmd_ssh() {
  local command=()
  ((${#PASSTHROUGH[@]})) && command=(--command "$(qjoin "${PASSTHROUGH[@]}")")
  ssh_node "${NODES[NODE]}"
  x "${TPU_SSH[@]}" "--worker=$WORKER" "${command[@]}"
}

cmd_stop() {
  local node
  for node in "${NODES[@]}"; do
    ssh_node "$node"
    x "${TPU_SSH[@]}" --worker=all --command \
      "if [ -f $RDIR/logs/train.pid ]; then kill -TERM \"\$(cat $RDIR/logs/train.pid)\" 2>/dev/null || true; rm -f $RDIR/logs/train.pid; fi"
  done
  ((STOP_VM)) || return 0
  for node in "${NODES[@]}"; do x gcloud compute tpus tpu-vm stop "$node" "${WHERE[@]}"; done
}

cmd_delete() {
  x gcloud compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force --quiet
}

"cmd_$COMMAND"
