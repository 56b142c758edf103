#!/usr/bin/env bash
# Run BlindHarmony's SLURM files on a real, one-node SLURM cluster on this machine.
#
#   bash docker/slurm/test-slurm.sh
#
# Installs munge and SLURM (Debian: munge slurmctld slurmd slurm-client) when missing,
# then starts a private munged, slurmctld and slurmd for one node (this machine, as
# `slurmd -C` describes it) with a minimal slurm.conf, all under a temporary folder
# (own key, socket, ports, state, spool and logs: a SLURM or munge already on the machine
# is left alone). On a copy of tests/data/ixi-hh-mini with two bad participants added
# (sub-BROKEN: a truncated image; sub-TINY: an 8x8x8 noise image that passes the input
# checks and crashes the registration node) it:
#   1. submits docker/slurm/blindharmony_array.sbatch for the three real participants,
#      and docker/slurm/blindharmony_group.sbatch with --dependency=afterok on it;
#   2. submits the same array script for the two bad participants, into the same output
#      folder, with a group job afterok on that array;
#   3. checks every derivative, sidecar, dataset_description.json and the group table and
#      report, the exit codes (scontrol), logs and crash file of the failed tasks, and
#      that the group job of the failed array is never started;
#   4. runs one participant with --use-plugin docker/plugins/slurm.yml (nipype submits
#      each workflow node as a SLURM job) and once locally, and checks the outputs are
#      identical (and identical to the array's);
# then cancels its jobs and stops the daemons it started (also on failure or Ctrl-C).
# Prints one PASS/FAIL line per check and exits non-zero on any failure.
#
# Needs root (apt-get; slurmd runs as root) and a pip-installed blindharmony: the first
# `blindharmony` on the PATH (or BLINDHARMONY_CMD) runs the jobs without a container
# (CONTAINER=none in the array script), and its Python runs the checks.
# Environment: BLINDHARMONY_CMD, PYTHON (default: the interpreter of blindharmony's
# script), TIMEOUT (seconds for all the jobs and runs together, default 1500),
# NICE (niceness of slurmd, hence of every job, and of the local runs; default 19),
# SLURM_PORT (slurmctld's port, slurmd uses the next one; default: the first free pair
# from 16817), TMPDIR (where the temporary folder goes; default /tmp; job scripts run
# from it), KEEP=1 (keep the temporary folder and print its path).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
ARRAY_SCRIPT=$repo/docker/slurm/blindharmony_array.sbatch
GROUP_SCRIPT=$repo/docker/slurm/blindharmony_group.sbatch
PLUGIN_FILE=$repo/docker/plugins/slurm.yml
FIXTURE=$repo/tests/data/ixi-hh-mini
SUBJECTS=(IXI052 IXI094 IXI146)
PLUGIN_SUBJECT=IXI052
TIMEOUT=${TIMEOUT:-1500}
NICE=${NICE:-19}
BLINDHARMONY_CMD=${BLINDHARMONY_CMD:-blindharmony}

t0=$(date +%s)
deadline=$((t0 + TIMEOUT))
log() { printf '[test-slurm %4ds] %s\n' "$(($(date +%s) - t0))" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
# shellcheck source=/dev/null
. "$here/../checks.sh"  # check NAME COMMAND...
left() { # seconds left before the deadline (at least 1)
  local s=$((deadline - $(date +%s)))
  ((s > 0)) || s=1
  echo "$s"
}

# --- 0. prerequisites ----------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root (apt-get, slurmd)"
bh=$(command -v "$BLINDHARMONY_CMD") || die "$BLINDHARMONY_CMD is not on the PATH: pip install . first"
if [[ -z "${PYTHON:-}" ]]; then
  shebang=$(head -n 1 "$bh")
  PYTHON=${shebang#\#!}
  [[ "$shebang" == '#!'* && -x "$PYTHON" ]] || PYTHON=python3
fi
"$PYTHON" -c 'import bids_app, nibabel, numpy' 2> /dev/null \
  || die "$PYTHON cannot import bids_app and nibabel (set PYTHON)"
export LOGNAME=${LOGNAME:-$(id -un)} # nipype's SLURM plugin names jobs after $LOGNAME
# nothing of an outer SLURM job or of the user's settings may reach this cluster's clients
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(SLURM|SBATCH|SALLOC|SRUN|SQUEUE)_' || true)

# --- 1. munge and SLURM ----------------------------------------------------------------
if ! command -v munged > /dev/null || ! command -v slurmctld > /dev/null \
  || ! command -v slurmd > /dev/null || ! command -v sbatch > /dev/null; then
  log "installing munge and SLURM (Debian packages)"
  # no service may start from the package scripts: this test starts its own daemons
  policy_added=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  install_rc=0
  {
    apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive nice -n "$NICE" apt-get install -y -qq \
        --no-install-recommends munge slurmctld slurmd slurm-client > /dev/null
  } || install_rc=$?
  ((policy_added == 0)) || rm -f /usr/sbin/policy-rc.d
  ((install_rc == 0)) || die "apt-get install failed ($install_rc)"
  # where systemd is PID 1, the packages start their own daemons; they are not ours
fi
log "$(slurmctld -V), $(munged -V 2>&1 | awk '{print $1; exit}')"

# --- 2. configuration under a temporary folder -----------------------------------------
port_free() { ! (: < "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }
if [[ -z "${SLURM_PORT:-}" ]]; then
  for ((SLURM_PORT = 16817; SLURM_PORT < 16917; SLURM_PORT += 2)); do
    port_free "$SLURM_PORT" && port_free "$((SLURM_PORT + 1))" && break
  done
fi
if ! port_free "$SLURM_PORT" || ! port_free "$((SLURM_PORT + 1))"; then
  die "port $SLURM_PORT or $((SLURM_PORT + 1)) is in use (set SLURM_PORT)"
fi

T=$(mktemp -d "${TMPDIR:-/tmp}/blindharmony-slurm.XXXXXX")
chmod 0755 "$T" # munged checks the folders above its socket and key
mkdir -p "$T"/{etc,munge,state,spool,run,log,logs}
chmod 0700 "$T/munge"
pids=()

cleanup() {
  local rc=$? pid i
  set +e
  trap - EXIT INT TERM
  exec 1>&3 2>&4 # a signal during a redirected command: report here, not into its log
  if [[ -n "${child:-}" ]]; then # a local or plugin run in progress
    kill -TERM "$child" 2> /dev/null
    wait "$child" 2> /dev/null
  fi
  if [[ -n "${SLURM_CONF:-}" && -f "$SLURM_CONF" ]] && ((${#pids[@]})); then
    # cancel what is left, and let slurmd end the jobs' processes (slurmstepd)
    scancel --user "$(id -un)" 2> /dev/null
    for ((i = 0; i < 30; i++)); do
      [[ -z "$(squeue -h -o %i 2> /dev/null)" ]] && ! stepd_pids > /dev/null && break
      sleep 1
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do # slurmd, slurmctld, munged
    pid=${pids[i]}
    kill -TERM "$pid" 2> /dev/null || continue
    for ((j = 0; j < 20; j++)); do
      kill -0 "$pid" 2> /dev/null || break
      sleep 0.5
    done
    kill -KILL "$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
  done
  # a job step that outlived slurmd (it should not): only those of this cluster
  for pid in $(stepd_pids); do kill -KILL "$pid" 2> /dev/null; done
  cd /
  if [[ -n "${KEEP:-}" ]]; then
    log "kept $T"
  else
    rm -rf "$T"
  fi
  log "daemons stopped; exit $rc"
  exit "$rc"
}
stepd_pids() { # slurmstepd processes started by this test's slurmd; false when none
  local p found=1
  for p in /proc/[0-9]*; do
    [[ "$({ tr '\0' ' ' < "$p/cmdline"; } 2> /dev/null)" == slurmstepd* ]] || continue
    if { tr '\0' '\n' < "$p/environ"; } 2> /dev/null | grep -qx "SLURM_CONF=$T/etc/slurm.conf"; then
      echo "${p#/proc/}"
      found=0
    fi
  done
  return $found
}
exec 3>&1 4>&2
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
child=
run_child() { # run a command and wait for it, so that a signal to this script stops it
  local rc=0
  "$@" 3>&- 4>&- &
  child=$!
  wait "$child" || rc=$?
  child=
  return "$rc"
}

# munge: a key of this test only
dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$T/munge/munge.key"
export MUNGE_SOCKET=$T/munge/munge.socket.2

node=$(hostname -s)
node_line=$(slurmd -C | head -n 1) # NodeName=<host> CPUs=... RealMemory=...
[[ "$node_line" == NodeName=* ]] || die "slurmd -C printed no node description"
node_line=${node_line/NodeName=* CPUs=/NodeName=$node NodeAddr=127.0.0.1 CPUs=}
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<< "$node_line")
mem_mb=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<< "$node_line")
# docker/plugins/slurm.yml asks 2 CPUs and 8 GB per node job
((cpus >= 2 && mem_mb >= 8192)) || die "this machine has $cpus CPUs and $mem_mb MB; the test needs 2 and 8192"
export SLURM_CONF=$T/etc/slurm.conf
cat > "$SLURM_CONF" << EOF
# one-node test cluster of docker/slurm/test-slurm.sh
ClusterName=blindharmony-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$SLURM_PORT
SlurmdPort=$((SLURM_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# finished jobs stay visible to scontrol (there is no accounting, hence no sacct)
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
$node_line State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

# --- 3. daemons --------------------------------------------------------------------------
log "starting munged, slurmctld and slurmd (ports $SLURM_PORT, $((SLURM_PORT + 1))) in $T"
munged -F --force --key-file="$T/munge/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/log/munged.log" \
  --seed-file="$T/munge/munged.seed" > "$T/log/munged.out" 2>&1 3>&- 4>&- &
pids+=($!)
for ((i = 0; i < 50; i++)); do
  [[ -S "$MUNGE_SOCKET" ]] && break
  kill -0 "${pids[0]}" 2> /dev/null || break
  sleep 0.2
done
munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" > /dev/null 2>&1 \
  || die "munged did not start: $(tail -n 5 "$T/log/munged.log" "$T/log/munged.out" 2> /dev/null)"
slurmctld -D -f "$SLURM_CONF" > "$T/log/slurmctld.out" 2>&1 3>&- 4>&- &
pids+=($!)
# every job inherits slurmd's niceness
nice -n "$NICE" slurmd -D -f "$SLURM_CONF" -N "$node" > "$T/log/slurmd.out" 2>&1 3>&- 4>&- &
pids+=($!)
for ((i = 0; i < 60; i++)); do
  state=$(sinfo -h -n "$node" -o %T 2> /dev/null || true)
  [[ "$state" == idle ]] && break
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2> /dev/null || die "a daemon exited: $(tail -n 20 "$T"/log/*.log)"
  done
  sleep 1
done
[[ "$state" == idle ]] || die "node $node is '$state', not idle: $(tail -n 20 "$T"/log/*.log)"
log "cluster up: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %T')"

# --- 4. data -----------------------------------------------------------------------------
bids=$T/bids
cp -r "$FIXTURE" "$bids"
for s in BROKEN TINY; do mkdir -p "$bids/sub-$s/anat"; done
head -c 4000 "$FIXTURE/sub-IXI052/anat/sub-IXI052_T1w.nii.gz" > "$bids/sub-BROKEN/anat/sub-BROKEN_T1w.nii.gz"
"$PYTHON" - "$bids/sub-TINY/anat/sub-TINY_T1w.nii.gz" << 'EOF'
import sys
import nibabel as nb
import numpy as np
data = np.random.default_rng(0).random((8, 8, 8)).astype("float32") * 100
nb.save(nb.Nifti1Image(data, np.eye(4)), sys.argv[1])
EOF
printf 'sub-BROKEN\tn/a\tn/a\tn/a\nsub-TINY\tn/a\tn/a\tn/a\n' >> "$bids/participants.tsv"
# participants.tsv: lines 2-4 the real participants (tasks 1-3), 5 BROKEN, 6 TINY

# the checks, in the app's Python
cat > "$T/checks.py" << 'EOF'
"""Checks of test-slurm.sh: python checks.py outputs|failed|same ARGS..."""
import json
import re
import sys
from pathlib import Path

import nibabel as nb
import numpy as np

SUFFIXES = ("_desc-harmonized_T1w.nii.gz", "_desc-harmonized_T1w.json",
            "_space-MNIColin27_res-2_desc-harmonized_T1w.nii.gz",
            "_space-MNIColin27_res-2_desc-harmonized_T1w.json",
            "_from-T1w_to-MNIColin27_mode-image_xfm.txt")
PARTIAL = (".tmp", "~", ".part", ".partial", ".lock", ".swp")
problems = []


def fail(message):
    problems.append(message)


def outputs(out, bids, *subjects):
    """Every derivative, sidecar, report; dataset_description.json; the group files."""
    from bids_app.__about__ import __version__

    out, bids = Path(out), Path(bids)
    for s in subjects:
        anat = out / f"sub-{s}" / "anat"
        for suffix in SUFFIXES:
            if not (anat / f"sub-{s}{suffix}").is_file():
                fail(f"missing {anat / f'sub-{s}{suffix}'}")
        source = nb.load(bids / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz")
        for image in sorted(anat.glob("*.nii.gz")):
            data = np.asanyarray(nb.load(image).dataobj)
            if not (np.isfinite(data).all() and data.std() > 0):
                fail(f"{image}: not finite or constant")
        native = anat / f"sub-{s}_desc-harmonized_T1w.nii.gz"
        if native.is_file():
            img = nb.load(native)
            if img.shape != source.shape or not np.allclose(img.affine, source.affine, atol=1e-4):
                fail(f"{native}: shape/affine differ from the source")
        for sidecar in sorted(anat.glob("*.json")):
            meta = json.loads(sidecar.read_text())
            if (meta.get("Sources") or [None])[0] != f"bids:raw:sub-{s}/anat/sub-{s}_T1w.nii.gz":
                fail(f"{sidecar}: Sources {meta.get('Sources')}")
            if not (meta.get("Prior") or {}).get("SHA256"):
                fail(f"{sidecar}: no Prior.SHA256")
            if not (meta.get("Harmonization") or {}).get("Method"):
                fail(f"{sidecar}: no Harmonization.Method")
        xfm = anat / f"sub-{s}_from-T1w_to-MNIColin27_mode-image_xfm.txt"
        if xfm.is_file() and "Transform" not in xfm.read_text():
            fail(f"{xfm}: not an ITK transform")
        if not (out / f"sub-{s}.html").is_file():
            fail(f"no report {out / f'sub-{s}.html'}")
        if not list((out / f"sub-{s}" / "figures").glob("*")):
            fail(f"no figures for sub-{s}")
    found = sorted(p.name[4:] for p in out.glob("sub-*") if p.is_dir())
    if found != sorted(subjects):
        fail(f"participant folders {found}, expected {sorted(subjects)}")
    desc = json.loads((out / "dataset_description.json").read_text())
    generated = desc.get("GeneratedBy") or [{}]
    if desc.get("DatasetType") != "derivative" or len(generated) != 1 \
            or generated[0].get("Name") != "blindharmony" \
            or generated[0].get("Version") != __version__:
        fail(f"dataset_description.json: {desc}")
    rows = (out / "group_T1w.tsv").read_text().splitlines()
    names = sorted(line.split("\t")[0] for line in rows[1:])
    if rows[0].split("\t")[0] != "bids_name" or names != [f"sub-{s}_T1w" for s in sorted(subjects)]:
        fail(f"group_T1w.tsv rows {names}")
    html = (out / "group_T1w.html").read_text()
    for s in subjects:
        if f"sub-{s}" not in html:
            fail(f"group_T1w.html does not mention sub-{s}")
    partial = [str(p) for p in out.rglob("*") if p.is_file() and (
        any(m in p.name for m in PARTIAL) or (p.name.startswith(".") and p.name != ".bidsignore"))]
    if partial:
        fail(f"partial files: {partial}")


def failed(out, label, code, errfile, crash):
    """A failed task: no derivative, the error line on stderr, a crash file or none."""
    out = Path(out)
    if list(out.glob(f"sub-{label}*")):
        fail(f"sub-{label} left outputs: {list(out.glob(f'sub-{label}*'))}")
    lines = [line for line in Path(errfile).read_text().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if not last.startswith("blindharmony: error: "):
        fail(f"last line of {errfile} is not the app's error line: {last!r}")
    crashes = sorted(out.glob("logs/*/crash-*.txt"))
    if crash == "none":
        if f"sub-{label}" not in last or "cannot read the image" not in last:
            fail(f"error line does not name sub-{label}'s unreadable image: {last!r}")
    else:  # the crash file named in the error line, in OUTPUT_DIR/logs/<run id>/
        named = last.split("crash file(s): ", 1)[-1].split(", ")
        if len(named) != 1 or not Path(named[0]).is_file():
            fail(f"error line names no crash file: {last!r}")
        else:
            path = Path(named[0])
            if path.parent.parent != out / "logs" or not path.name.startswith("crash-") \
                    or crash not in path.name or path not in crashes:
                fail(f"crash file {path} is not OUTPUT_DIR/logs/<run id>/crash-*{crash}*.txt")
            elif f"sub-{label}" not in path.read_text() and label not in path.read_text():
                fail(f"crash file {path} does not mention {label}")


def diff(x, y, where=""):
    """Where two JSON values differ (at most a few)."""
    if isinstance(x, dict) and isinstance(y, dict):
        out = []
        for key in sorted(set(x) | set(y)):
            out += diff(x.get(key), y.get(key), f"{where}.{key}")
        return out[:5]
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in diff(u, v, f"{where}[{i}]")][:5]
    return [] if x == y else [f"{where}: {str(x)[:60]} != {str(y)[:60]}"]


def same(a, b, label):
    """Two outputs of one participant are identical (but for run times and SVG ids)."""
    a, b = Path(a), Path(b)
    files_a = sorted(p.relative_to(a) for p in (a / f"sub-{label}").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in (b / f"sub-{label}").rglob("*") if p.is_file())
    if files_a != files_b or not files_a:
        fail(f"file lists differ: {files_a} vs {files_b}")
    for rel in set(files_a) & set(files_b):
        x, y = (a / rel).read_bytes(), (b / rel).read_bytes()
        if rel.suffix == ".json":
            x, y = json.loads(x), json.loads(y)
            for meta in (x, y):
                (meta.get("Metrics") or {}).pop("RunTimeSeconds", None)
        elif rel.suffix == ".svg":  # matplotlib writes the date and random ids
            x, y = (re.sub(rb"<dc:date>[^<]*</dc:date>|\b[pm][0-9a-f]{10}\b", b"", v) for v in (x, y))
        if x != y:
            fail(f"{rel} differs" + (f": {'; '.join(diff(x, y))}" if rel.suffix == ".json" else ""))
    for name in ("dataset_description.json", ".bidsignore"):
        if (a / name).read_bytes() != (b / name).read_bytes():
            fail(f"{name} differs")


try:
    {"outputs": outputs, "failed": failed, "same": same}[sys.argv[1]](*sys.argv[2:])
except Exception as err:  # a missing or unreadable file: one problem, no traceback
    fail(f"{type(err).__name__}: {err}")
for p in problems:
    print(f"  {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
pycheck() { "$PYTHON" "$T/checks.py" "$@"; }

# --- 5. the job array and the group level ------------------------------------------------
export BIDS_DIR=$bids OUTPUT_DIR=$T/out WORK_ROOT=$T/work CONTAINER=none \
  BLINDHARMONY_CMD=$bh BLINDHARMONY_ARGS="--skip-bids-validation"
# 1 CPU and 2 GB per task (the script's defaults, 4 CPUs and 8 GB, are for real nodes)
res=(--cpus-per-task=1 --mem=2G --time=00:20:00)
cd "$T" # logs/ of the sbatch scripts go here
t_array=$(date +%s)
jid=$(sbatch --parsable "${res[@]}" --array=1-3 "$ARRAY_SCRIPT")
gid=$(sbatch --parsable --dependency="afterok:$jid" "$GROUP_SCRIPT")
fjid=$(sbatch --parsable "${res[@]}" --array=4-5 "$ARRAY_SCRIPT")
fgid=$(sbatch --parsable --dependency="afterok:$fjid" "$GROUP_SCRIPT")
log "submitted array $jid (tasks 1-3) + group $gid (afterok); array $fjid (tasks 4-5, bad input) + group $fgid (afterok)"

job_field() { # job_field JOB FIELD: a field of `scontrol show job` (e.g. JobState, ExitCode)
  scontrol -o show job "$1" 2> /dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}
ended() { # all of the given jobs (or array tasks) have ended
  local j s
  for j in "$@"; do
    s=$(job_field "$j" JobState)
    case "$s" in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | OUT_OF_MEMORY | NODE_FAIL | BOOT_FAIL | DEADLINE | PREEMPTED) ;;
      *) return 1 ;;
    esac
  done
}
wait_for() { # wait_for WHAT JOB...: until they have ended, or the deadline
  local what=$1
  shift
  while ! ended "$@"; do
    (($(date +%s) < deadline)) || {
      log "timeout waiting for $what"
      return 1
    }
    sleep 2
  done
}
if ! wait_for "the jobs" "${jid}_1" "${jid}_2" "${jid}_3" "$gid" "${fjid}_4" "${fjid}_5"; then
  squeue >&2
  echo "FAIL: the array and group jobs did not end within TIMEOUT=$TIMEOUT s"
  exit 1
fi
t_done=$(date +%s)

for t in 1 2 3; do
  check "array task $t (sub-${SUBJECTS[t - 1]}): COMPLETED, exit 0" \
    test "$(job_field "${jid}_$t" JobState) $(job_field "${jid}_$t" ExitCode)" = "COMPLETED 0:0"
  check "array task $t: log says exit code 0" \
    grep -q "sub-${SUBJECTS[t - 1]} finished with exit code 0" "logs/blindharmony_${jid}_$t.out"
done
check "group job $gid (afterok): COMPLETED, exit 0" \
  test "$(job_field "$gid" JobState) $(job_field "$gid" ExitCode)" = "COMPLETED 0:0"
group_start=$(date -d "$(job_field "$gid" StartTime)" +%s 2> /dev/null || echo 0)
last_end=0
for t in 1 2 3; do
  e=$(date -d "$(job_field "${jid}_$t" EndTime)" +%s 2> /dev/null || echo 0)
  ((e > last_end)) && last_end=$e
done
check "group job started after the last array task ended" test "$group_start" -ge "$last_end" -a "$last_end" -gt 0
check "derivatives, sidecars, reports, dataset_description.json, group table and report" \
  pycheck outputs "$OUTPUT_DIR" "$bids" "${SUBJECTS[@]}"
check "work folders of successful tasks removed" \
  test ! -e "$WORK_ROOT/sub-IXI052" -a ! -e "$WORK_ROOT/sub-IXI094" -a ! -e "$WORK_ROOT/sub-IXI146"

# the failed array: BROKEN exits 65 (bad input, no crash file), TINY 1 (crash file)
check "task 4 (sub-BROKEN, truncated image): FAILED, exit 65" \
  test "$(job_field "${fjid}_4" JobState) $(job_field "${fjid}_4" ExitCode)" = "FAILED 65:0"
check "task 4: log says exit code 65" \
  grep -q "sub-BROKEN finished with exit code 65" "logs/blindharmony_${fjid}_4.out"
check "task 4: error line names the image, no derivative" \
  pycheck failed "$OUTPUT_DIR" BROKEN 65 "logs/blindharmony_${fjid}_4.err" none
check "task 5 (sub-TINY, registration node crashes): FAILED, exit 1" \
  test "$(job_field "${fjid}_5" JobState) $(job_field "${fjid}_5" ExitCode)" = "FAILED 1:0"
check "task 5: crash file in OUTPUT_DIR/logs/<run id>/, named in the error line" \
  pycheck failed "$OUTPUT_DIR" TINY 1 "logs/blindharmony_${fjid}_5.err" register
check "exactly one crash file (sub-TINY's) in OUTPUT_DIR/logs" \
  test "$(find "$OUTPUT_DIR/logs" -name 'crash-*' | wc -l)" -eq 1
check "failed tasks keep their work folders" test -d "$WORK_ROOT/sub-BROKEN" -a -d "$WORK_ROOT/sub-TINY"
reason=
for ((i = 0; i < 30; i++)); do # the scheduler marks it on its next pass
  reason=$(job_field "$fgid" Reason)
  [[ "$reason" == DependencyNeverSatisfied ]] && break
  sleep 1
done
check "group job $fgid of the failed array: PENDING, DependencyNeverSatisfied ($(job_field "$fgid" JobState), $reason)" \
  test "$(job_field "$fgid" JobState) $reason" = "PENDING DependencyNeverSatisfied"
scancel "$fgid"
# after the failures, the group level still sees exactly the three good participants
check "outputs still valid after the failed tasks" pycheck outputs "$OUTPUT_DIR" "$bids" "${SUBJECTS[@]}"

# --- 6. nipype's SLURM plugin vs a local run -----------------------------------------------
lean=(--skip-bids-validation --nprocs 1 --omp-nthreads 1)
job_info_rpcs() { # job queries slurmctld has answered (squeue, scontrol show job)
  sdiag 2> /dev/null | awk '$1 ~ /^REQUEST_JOB_INFO/ { for (i = 2; i <= NF; i++) if ($i ~ /^count:/) { sub(/count:/, "", $i); n += $i } } END { print n + 0 }'
}
first_job=$(scontrol -o show jobs | sed -n 's/^JobId=\([0-9]*\) .*/\1/p' | sort -n | tail -n 1)
log "participant run of sub-$PLUGIN_SUBJECT with --use-plugin $PLUGIN_FILE"
t_plugin=$(date +%s)
plugin_rc=0
rpcs_before=$(job_info_rpcs)
run_child timeout "$(left)" nice -n "$NICE" "$bh" "$bids" "$T/out-plugin" participant --participant-label "$PLUGIN_SUBJECT" \
  -w "$T/work-plugin" --use-plugin "$PLUGIN_FILE" "${lean[@]}" > "$T/log/plugin-run.log" 2>&1 \
  || plugin_rc=$?
t_plugin_done=$(date +%s)
rpcs=$(($(job_info_rpcs) - rpcs_before))
check "plugin run exits 0 (got $plugin_rc)" test "$plugin_rc" -eq 0
node_jobs=$(scontrol -o show jobs | awk -v f="$first_job" '
  { id = $1; sub(/^JobId=/, "", id) } id + 0 > f + 0 { print }')
n_node_jobs=$(grep -c . <<< "$node_jobs" || true)
n_completed=$(grep -c "JobState=COMPLETED" <<< "$node_jobs" || true)
check "plugin run: workflow nodes ran as SLURM jobs ($n_node_jobs jobs, $n_completed COMPLETED)" \
  test "$n_node_jobs" -gt 1 -a "$n_completed" -eq "$n_node_jobs"
check "plugin run: nipype batch scripts in the work folder" \
  test -n "$(find "$T/work-plugin" -name 'batchscript_*.sh' -print -quit)"
log "local participant run of sub-$PLUGIN_SUBJECT"
t_local=$(date +%s)
local_rc=0
run_child timeout "$(left)" nice -n "$NICE" "$bh" "$bids" "$T/out-local" participant \
  --participant-label "$PLUGIN_SUBJECT" -w "$T/work-local" "${lean[@]}" > "$T/log/local-run.log" 2>&1 \
  || local_rc=$?
t_local_done=$(date +%s)
check "local run exits 0 (got $local_rc)" test "$local_rc" -eq 0
check "plugin run output identical to the local run" pycheck same "$T/out-plugin" "$T/out-local" "$PLUGIN_SUBJECT"
check "array task output identical to the local run" pycheck same "$OUTPUT_DIR" "$T/out-local" "$PLUGIN_SUBJECT"

# --- 7. summary --------------------------------------------------------------------------
elapsed() { # elapsed JOB: seconds from StartTime to EndTime
  local s e
  s=$(date -d "$(job_field "$1" StartTime)" +%s 2> /dev/null) || return 0
  e=$(date -d "$(job_field "$1" EndTime)" +%s 2> /dev/null) || return 0
  echo $((e - s))
}
log "measured: array tasks 1-3 $(for t in 1 2 3; do printf '%ss ' "$(elapsed "${jid}_$t")"; done)(1 CPU each, $cpus CPUs on the node), group $(elapsed "$gid")s, tasks 4-5 $(elapsed "${fjid}_4")s $(elapsed "${fjid}_5")s"
log "measured: submission to the end of all array/group jobs $((t_done - t_array))s; plugin run $((t_plugin_done - t_plugin))s ($n_node_jobs SLURM jobs, $rpcs job queries to slurmctld); local run $((t_local_done - t_local))s; total $(($(date +%s) - t0))s"
if ((failures)); then
  log "slurmctld log: $(tail -n 5 "$T/log/slurmctld.log")"
  echo "FAIL: $failures check(s) failed"
  exit 1
fi
echo "PASS: all checks"
