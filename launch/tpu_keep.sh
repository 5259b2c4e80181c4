# `launch/tpu.sh keep`: the preemption loop, and the goodput summary it logs. Sourced by launch/tpu.sh
# (it uses tpu.sh's options, x, event helpers and commands); not run by itself.

# What grit-train on worker 0 is doing, one word: running, done, preempted (it caught SIGTERM, saved and
# exited), lost (no process and no exit status: the VM restarted), failed:STATUS.
STATUS_COMMAND="cd $RDIR; if [ -f logs/train.rc ]; then rc=\$(cat logs/train.rc);"
STATUS_COMMAND+=" if grep -q '^preempted: saved checkpoint' logs/train.log; then echo preempted;"
STATUS_COMMAND+=" elif [ \"\$rc\" = 0 ]; then echo done; else echo failed:\$rc; fi;"
STATUS_COMMAND+=" elif [ -f logs/train.pid ] && kill -0 \"\$(cat logs/train.pid)\" 2>/dev/null; then echo running; else echo lost; fi"

# Logs one event, with the time, to stderr and <out>/keep.log.
event() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) $NAME: $*"
  echo "tpu.sh: $line" >&2
  [[ $DRY_RUN == 1 ]] || echo "$line" >>"$KEEP_LOG"
}

# Counts a restart (and logs the goodput so far); ends the loop when there have been --max-restarts already.
restart() {
  RESTARTS=$((RESTARTS + 1))
  ((RESTARTS <= MAX_RESTARTS)) || { event "$1; gave up after $MAX_RESTARTS restarts"; goodput_summary; exit 1; }
  event "$1; restart $RESTARTS of $MAX_RESTARTS: $2"
  goodput_summary
}

# The goodput line over every attempt so far, from WORKDIR/goodput.jsonl (grit_jax/train/goodput.py: one
# JSON record per start of grit-train, seconds per bucket): the buckets summed, productive net of the
# seconds lost to restarts, goodput = productive / wall; the same line as `python -m
# grit_jax.train.goodput WORKDIR` prints, without Python here.
GOODPUT_AWK='
function num(key,   found) {
  if (match($0, "\"" key "\": *-?[0-9.]+([eE][-+]?[0-9]+)?")) {
    found = substr($0, RSTART, RLENGTH); sub(/^[^:]*: */, "", found); return found + 0
  }
  return 0
}
/"start_step"/ {
  n++; wall += num("wall"); productive += num("productive")
  for (i = 1; i <= nb; i++) total[i] += num(key[i])
}
BEGIN { nb = split("compile data_wait checkpoint_save checkpoint_restore evaluation lost_to_restart", key, " ")
        split("compile,data wait,checkpoint save,checkpoint restore,evaluation,lost to restarts", word, ",") }
END {
  if (!n) exit 1
  productive -= total[nb]; other = wall - productive
  line = sprintf("productive %.1f s", productive)
  for (i = 1; i <= nb; i++) { line = line sprintf(", %s %.1f s", word[i], total[i]); other -= total[i] }
  printf "goodput: %.3f of %.1f s wall over %d attempt(s): %s, other %.1f s\n",
    (wall > 0 ? productive / wall : 0), wall, n, line, (other > 0 ? other : 0)
}'

goodput_summary() {
  local url records
  url="$(train_workdir)/goodput.jsonl"
  if [[ $DRY_RUN == 1 ]]; then
    echo "+ $(qjoin gcloud storage cat "$url")"
    echo "# (after each restart and at the end: the goodput line over all attempts, into keep.log)"
    return 0
  fi
  if records=$(gcloud storage cat "$url" 2>/dev/null) && records=$(awk "$GOODPUT_AWK" <<<"$records"); then
    event "$records"
  else
    event "goodput: no record in $url yet"
  fi
}

# One slice of a multislice resource preempted (its node PREEMPTED, TERMINATED, or gone) while the
# queued resource may still read ACTIVE: prints the node and its state.
slice_lost() {
  local node state
  ((SLICES > 1)) || return 1
  for node in "${NODES[@]}"; do
    state=$(gcloud compute tpus tpu-vm describe "$node" "${WHERE[@]}" --format 'value(state)' 2>/dev/null) ||
      state=ABSENT
    case $state in
      PREEMPTED | TERMINATED | STOPPED | ABSENT) echo "$node $state"; return 0 ;;
    esac
  done
  return 1
}

keep_dry_run() {
  echo "+ $(qjoin "${DESCRIBE[@]}")"
  echo "# (absent: create; SUSPENDED or FAILED: delete, then create)"
  cmd_delete
  cmd_create
  wait_active
  cmd_setup
  cmd_run
  echo "+ $(qjoin "${TPU_SSH[@]}" --worker=0 --command "$STATUS_COMMAND")"
  if ((SLICES > 1)); then
    local node
    for node in "${NODES[@]}"; do
      echo "+ $(qjoin gcloud compute tpus tpu-vm describe "$node" "${WHERE[@]}" --format 'value(state)')"
    done
    echo "# (any slice PREEMPTED, TERMINATED, STOPPED or gone: delete the queued resource, create all $SLICES again)"
  fi
  echo "# (every $POLL s with the state above until done; preempted or suspended: again from the top, at most $MAX_RESTARTS times)"
  goodput_summary
}

cmd_keep() {
  [[ -n $TYPE ]] || die "missing accelerator type: pass --type (e.g. v5e-64) or set GRIT_TPU_TYPE"
  ((${#PASSTHROUGH[@]})) || die "keep needs grit-train arguments after --, e.g. -- --config configs/gritlm.py:7b --workdir gs://bucket/run"
  [[ $(train_workdir) == gs://* ]] || die "keep needs --workdir gs://BUCKET/PATH: a re-created slice starts with empty disks"
  local out=${OUT:-logs/$NAME}
  KEEP_LOG=$out/keep.log RESTARTS=0 WAIT=0 FINISHED=0
  if [[ $DRY_RUN == 1 ]]; then
    keep_dry_run
    return 0
  fi
  mkdir -p "$out"
  local first=1 slices=""
  ((SLICES == 1)) || slices=" x $SLICES slices"
  event "keep: $ACCEL$slices, grit-train $(qjoin "${PASSTHROUGH[@]}")"
  while :; do
    if ! STATE=$("${DESCRIBE[@]}" 2>/dev/null); then
      if ((first)); then event "no queued resource: creating it"; else restart "queued resource gone" "creating it"; fi
      cmd_create || true
    elif [[ $STATE == SUSPENDED || $STATE == FAILED ]]; then
      restart "queued resource $STATE (preempted)" "deleting and re-creating it"
      cmd_delete
      cmd_create || true
    fi
    first=0
    if ! wait_active; then continue; fi
    event "ACTIVE: setting up and starting grit-train (it resumes from the latest checkpoint)"
    cmd_setup
    cmd_run
    keep_watch
    ((FINISHED == 0)) || return 0
  done
}

# Watches an ACTIVE run; returns when the queued resource must be made again (from the top of the
# loop) or grit-train finished (FINISHED=1); exits when it failed.
keep_watch() {
  local status lost
  while :; do
    sleep "$POLL"
    STATE=$("${DESCRIBE[@]}" 2>/dev/null) || STATE=ABSENT
    [[ $STATE == ACTIVE ]] || { event "queued resource is $STATE"; [[ $STATE == SUSPENDING ]] && continue; return 0; }
    if lost=$(slice_lost); then
      restart "slice ${lost% *} is ${lost#* }" "deleting and re-creating all $SLICES slices"
      cmd_delete
      cmd_create || true
      return 0
    fi
    status=$("${TPU_SSH[@]}" --worker=0 --command "$STATUS_COMMAND" 2>/dev/null | tail -n 1) || status=unreachable
    case $status in
      running) ;;
      done) event "grit-train finished"; goodput_summary; FINISHED=1; return 0 ;;
      failed:*) event "grit-train exited with status ${status#failed:}; not restarting (see launch/tpu.sh logs)"; goodput_summary; exit 1 ;;
      preempted | lost) restart "grit-train $status on an ACTIVE slice" "starting it again"; cmd_run ;;
      *) event "worker 0 did not answer ($status)" ;;
    esac
  done
}
