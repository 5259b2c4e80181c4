"""goodput.jsonl: one record per attempt, its buckets timed by context managers, and the productive time
lost to a restart found from the earlier attempts' records."""

import json
import subprocess
import sys
import time

import pytest

from grit_jax.train.goodput import BUCKETS, FILE, Goodput, lost_seconds, read_records, summary_line, totals
from tests.grit_fixtures import ROOT


def attempt(start, last, productive, checkpoints=(), wall=None, **buckets):
    return dict(
        start_step=start, last_step=last, productive=productive, checkpoints=[list(c) for c in checkpoints],
        wall=wall if wall is not None else productive + sum(buckets.values()) + 1.0, **buckets,
    )  # fmt: skip


def test_an_attempt_times_its_buckets_and_writes_one_record(tmp_path):
    goodput = Goodput(str(tmp_path), main=True, started=time.perf_counter())
    with goodput.timer("checkpoint_restore"):
        time.sleep(0.01)
    goodput.begin(0)
    for step in range(1, 4):
        with goodput.timer("data_wait"):
            time.sleep(0.002)
        goodput.step(step, 0.5 if step == 1 else 0.01, compiled=step == 1)
    with goodput.timer("checkpoint_save"):
        time.sleep(0.005)
    goodput.saved(3)
    with goodput.timer(None):  # times nothing
        time.sleep(0.01)
    [record] = read_records(str(tmp_path / FILE))
    assert record["attempt"] == 1 and (record["start_step"], record["last_step"]) == (0, 3)
    assert record["compile"] == 0.5 and record["productive"] == pytest.approx(0.02)
    assert record["checkpoints"] == [[3, pytest.approx(0.02)]]
    assert record["checkpoint_restore"] >= 0.01 and record["data_wait"] >= 0.006
    assert record["checkpoint_save"] >= 0.005 and record["evaluation"] == 0.0
    assert record["lost_to_restart"] == 0.0
    measured = sum(record[k] for k in BUCKETS) - record["compile"]  # the steps' seconds were given
    assert 0 < measured <= record["wall"]
    assert goodput.summary().startswith("goodput: ")


def test_a_process_other_than_the_first_writes_nothing(tmp_path):
    goodput = Goodput(str(tmp_path), main=False, started=time.perf_counter())
    goodput.begin(0)
    goodput.step(1, 0.1, compiled=False)
    goodput.saved(1)
    goodput.write()
    assert not (tmp_path / FILE).exists()


def test_a_resumed_attempt_finds_what_the_killed_one_computed_past_its_checkpoint(tmp_path):
    """Killed at step 7 after a checkpoint at 4: the productive time of steps 5-7 is redone."""
    first = Goodput(str(tmp_path), main=True, started=time.perf_counter())
    first.begin(0)
    for step in range(1, 8):
        first.step(step, 1.0, compiled=step == 1)
        if step == 4:
            first.saved(4)
    first.write()  # its last log step; then SIGKILL
    second = Goodput(str(tmp_path), main=True, started=time.perf_counter())
    second.begin(4)
    records = read_records(str(tmp_path / FILE))
    assert [r["attempt"] for r in records] == [1, 2]
    assert records[1]["lost_to_restart"] == pytest.approx(3.0)  # steps 5, 6 and 7
    assert records[0]["productive"] == 6.0 and records[0]["checkpoints"] == [[4, 3.0]]
    # over both attempts productive counts steps 5-7 once
    assert totals(records)["productive"] == pytest.approx(3.0 + second.productive)


def test_lost_seconds_counts_each_redone_step_once():
    saved_at_stop = [attempt(0, 10, 9.0, [(5, 4.0), (10, 9.0)])]
    assert lost_seconds(saved_at_stop, 10) == 0.0  # SIGTERM: saved where it stopped
    assert lost_seconds([attempt(0, 7, 6.0, [(5, 4.0)])], 5) == 2.0
    # killed before its first checkpoint: everything it computed is redone from step 0
    assert lost_seconds([attempt(0, 3, 2.5)], 0) == 2.5
    # attempt 1 to 25 (checkpoints 10, 20); attempt 2 resumed at 20, killed at 26 (no checkpoint);
    # attempt 3 resumes at 10 (20 damaged): all of attempt 2 and attempt 1's steps 11-20 (its 21-25 were
    # counted when attempt 2 started)
    records = [attempt(0, 25, 24.0, [(10, 9.0), (20, 19.0)]), attempt(20, 26, 6.0)]
    assert lost_seconds(records[:1], 20) == 5.0
    assert lost_seconds(records, 10) == 6.0 + (19.0 - 9.0)
    assert lost_seconds([], 0) == 0.0


def test_totals_add_up_to_the_wall_time():
    records = [
        attempt(0, 7, 6.0, [(4, 3.0)], compile=2.0, data_wait=0.5, checkpoint_save=1.0, wall=12.0),
        attempt(4, 10, 6.0, [(10, 6.0)], compile=1.0, checkpoint_restore=0.5, lost_to_restart=3.0, wall=9.0),
    ]
    total = totals(records)
    assert total["wall"] == 21.0 and total["productive"] == 9.0 and total["lost_to_restart"] == 3.0
    named = total["productive"] + total["other"] + sum(total[k] for k in (*BUCKETS, "lost_to_restart"))
    assert named == pytest.approx(total["wall"])
    assert total["goodput"] == pytest.approx(9.0 / 21.0)
    assert summary_line(records) == (
        "goodput: 0.429 of 21.0 s wall over 2 attempt(s): productive 9.0 s, compile 3.0 s, data wait 0.5 s, "
        "checkpoint save 1.0 s, checkpoint restore 0.5 s, evaluation 0.0 s, lost to restarts 3.0 s, "
        "other 4.0 s"
    )


def test_a_damaged_line_is_skipped_and_the_summary_printed_from_the_command_line(tmp_path):
    good = attempt(0, 5, 4.0, wall=5.0)
    (tmp_path / FILE).write_text(json.dumps(good) + "\n" + '{"start_step": 5, "la')  # cut short
    assert read_records(str(tmp_path / FILE)) == [good]
    command = [sys.executable, "-m", "grit_jax.train.goodput"]
    done = subprocess.run([*command, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("goodput: 0.800 of 5.0 s wall over 1 attempt(s): productive 4.0 s")
    done = subprocess.run([*command, str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and f"a work dir with {FILE}" in done.stderr
