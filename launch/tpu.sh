#!/usr/bin/env bash
# Cloud TPU VM pods with gcloud: create, set up, run grit-train on every worker, gather logs, stop, delete.
# Run `launch/tpu.sh --help` for usage.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu.sh COMMAND [options] [-- arguments]

commands:
  create   queue a TPU slice (gcloud compute tpus queued-resources create) and wait until ACTIVE
  setup    copy the repository (git archive of --ref, default HEAD) to every worker, pip install -e '.[tpu]'
  run      start grit-train on every worker (GRIT_DISTRIBUTED=1, nohup, output to <dir>/logs/train.log):
             launch/tpu.sh run -- --config configs/gritlm.py:7b --workdir gs://bucket/run1
  logs     gather every worker's log into --out (default logs/<name>/<worker>.log); -f follows worker 0
  ssh      ssh to --worker (default 0; or all); arguments after -- are run there as a command
  stop     send SIGTERM to the training run on every worker (it checkpoints and exits);
           --vm also stops the TPU VM (single-host slices only)
  delete   delete the queued resource and its TPU nodes

options (flag, or environment variable):
  --project P      GRIT_PROJECT        Google Cloud project (required)
  --zone Z         GRIT_ZONE           zone, e.g. us-east5-a (required)
  --name N         GRIT_TPU_NAME       TPU (and queued resource) name (required)
  --type T         GRIT_TPU_TYPE       accelerator type, e.g. v5p-64 (create)
  --version V      GRIT_TPU_VERSION    runtime version (create; default from --type)
  --spot                               create Spot VMs instead of on-demand
  --no-wait                            create: do not wait for the slice to become ACTIVE
  --timeout S                          create: give up waiting after S seconds (default 0 = never)
  --worker W                           ssh: worker number or all (default 0)
  --ref R                              setup: git revision to copy (default HEAD)
  --env KEY=VALUE                      run: extra environment variable on every worker (repeatable)
  --remote-dir D   GRIT_REMOTE_DIR     repository directory on the workers, relative to home (default grit_jax)
  --python PY      GRIT_REMOTE_PYTHON  python on the workers (default python3)
  --out DIR                            logs: local directory (default logs/<name>)
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

default_version() {
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime version for --type $1: pass --version" ;;
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
REMOTE_PYTHON=${GRIT_REMOTE_PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
SPOT=0 WAIT=1 TIMEOUT=0 WORKER=0 REF=HEAD OUT="" FOLLOW=0 STOP_VM=0
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
    --project | --zone | --name | --type | --version | --timeout | --worker | --ref | --env | --remote-dir | --python | --out)
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
  create | setup | run | logs | ssh | stop | delete) ;;
  "") usage >&2; exit 2 ;;
  *) die "unknown command '$COMMAND' (create, setup, run, logs, ssh, stop, delete)" ;;
esac
[[ $DRY_RUN == 0 || $DRY_RUN == 1 ]] || die "DRY_RUN must be 0 or 1, not '$DRY_RUN'"
[[ -n $PROJECT ]] || die "missing project: pass --project or set GRIT_PROJECT"
[[ -n $ZONE ]] || die "missing zone: pass --zone or set GRIT_ZONE"
[[ -n $NAME ]] || die "missing TPU name: pass --name or set GRIT_TPU_NAME"
[[ $WORKER =~ ^([0-9]+|all)$ ]] || die "--worker must be a number or all, not '$WORKER'"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds, not '$TIMEOUT'"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ && $REMOTE_DIR != *..* ]] ||
  die "--remote-dir must be a path relative to the workers' home directory, not '$REMOTE_DIR'"
if [[ $COMMAND != ssh && $COMMAND != run && ${#PASSTHROUGH[@]} -gt 0 ]]; then
  die "$COMMAND takes no arguments after --"
fi

WHERE=(--project "$PROJECT" --zone "$ZONE")
TPU_SSH=(gcloud compute tpus tpu-vm ssh "$NAME" "${WHERE[@]}")
RDIR=$(q "$REMOTE_DIR")
RPY=$(q "$REMOTE_PYTHON")

# ---- commands -------------------------------------------------------------------------------------
cmd_create() {
  [[ -n $TYPE ]] || die "missing accelerator type: pass --type (e.g. v5p-64) or set GRIT_TPU_TYPE"
  [[ -n $VERSION ]] || VERSION=$(default_version "$TYPE")
  local tier=()
  ((SPOT)) && tier=(--spot)
  x gcloud compute tpus queued-resources create "$NAME" --node-id "$NAME" "${WHERE[@]}" \
    --accelerator-type "$TYPE" --runtime-version "$VERSION" "${tier[@]}"
  ((WAIT)) || return 0
  local describe=(gcloud compute tpus queued-resources describe "$NAME" "${WHERE[@]}" --format 'value(state.state)')
  if [[ $DRY_RUN == 1 ]]; then
    echo "+ $(qjoin "${describe[@]}")"
    echo "# (repeated every 30 s until the state is ACTIVE)"
    return 0
  fi
  local state start=$SECONDS
  while :; do
    state=$("${describe[@]}")
    echo "tpu.sh: $NAME is ${state:-UNKNOWN}" >&2
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) die "queued resource $NAME is $state (see: gcloud compute tpus queued-resources describe $NAME)" ;;
    esac
    if ((TIMEOUT > 0 && SECONDS - start >= TIMEOUT)); then
      die "queued resource $NAME not ACTIVE after $TIMEOUT s (state ${state:-UNKNOWN})"
    fi
    sleep 30
  done
}

cmd_setup() {
  local root archive="grit_jax-src.tar.gz"
  root=$(git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --show-toplevel)
  if [[ $DRY_RUN == 0 && -n $(git -C "$root" status --porcelain --untracked-files=no) ]]; then
    echo "tpu.sh: warning: uncommitted changes are not copied (setup copies $REF)" >&2
  fi
  local tmp=${TMPDIR:-/tmp}/$archive
  x git -C "$root" archive --format=tar.gz -o "$tmp" "$REF"
  x gcloud compute tpus tpu-vm scp "$tmp" "$NAME:$archive" --worker=all "${WHERE[@]}"
  x "${TPU_SSH[@]}" --worker=all --command \
    "set -e; mkdir -p $RDIR; tar xzf $(q "$archive") -C $RDIR; cd $RDIR; $RPY -m pip install -q -e '.[tpu]'"
}

cmd_run() {
  ((${#PASSTHROUGH[@]})) || die "run needs grit-train arguments after --, e.g. -- --config configs/gritlm.py:7b --workdir gs://bucket/run"
  local env="GRIT_DISTRIBUTED=1" kv i workdir=""
  # Every worker must see one work directory (checkpoint shards of all hosts, one compilation cache).
  for ((i = 0; i < ${#PASSTHROUGH[@]}; i++)); do
    case ${PASSTHROUGH[i]} in
      --workdir=*) workdir=${PASSTHROUGH[i]#--workdir=} ;;
      --workdir) workdir=${PASSTHROUGH[i + 1]:-} ;;
    esac
  done
  [[ $workdir == gs://* ]] || echo "tpu.sh: warning: --workdir '$workdir' is not gs://BUCKET/PATH; every worker" \
    "must see the same directory (checkpoints, compilation cache), e.g. a bucket mounted on all of them" >&2
  for kv in "${ENVS[@]}"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, not '$kv'"
    env+=" ${kv%%=*}=$(q "${kv#*=}")"
  done
  x "${TPU_SSH[@]}" --worker=all --command \
    "cd $RDIR && mkdir -p logs && { $env nohup $RPY -m grit_jax.programs.grit_train $(qjoin "${PASSTHROUGH[@]}") > logs/train.log 2>&1 < /dev/null & echo \$! > logs/train.pid; }"
}

cmd_logs() {
  if ((FOLLOW)); then
    x "${TPU_SSH[@]}" --worker=0 --command "tail -n +1 -f $RDIR/logs/train.log"
    return
  fi
  local out=${OUT:-logs/$NAME}
  x mkdir -p "$out"
  x "${TPU_SSH[@]}" --worker=all --command "cat $RDIR/logs/train.log" --output-directory "$out"
  [[ $DRY_RUN == 1 ]] || echo "tpu.sh: logs in $out/<worker>.log" >&2
}

cmd_ssh() {
  local command=()
  ((${#PASSTHROUGH[@]})) && command=(--command "$(qjoin "${PASSTHROUGH[@]}")")
  x "${TPU_SSH[@]}" "--worker=$WORKER" "${command[@]}"
}

cmd_stop() {
  x "${TPU_SSH[@]}" --worker=all --command \
    "if [ -f $RDIR/logs/train.pid ]; then kill -TERM \"\$(cat $RDIR/logs/train.pid)\" 2>/dev/null || true; rm -f $RDIR/logs/train.pid; fi"
  ((STOP_VM)) || return 0
  x gcloud compute tpus tpu-vm stop "$NAME" "${WHERE[@]}"
}

cmd_delete() {
  x gcloud compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force --quiet
}

"cmd_$COMMAND"
