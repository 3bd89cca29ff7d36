#!/usr/bin/env bash
# A one-node SLURM cluster on this host, for tests/test_slurm.py and for trying the slurm profile.
# Idempotent: safe to run again (re-writes the config, starts only what is not running).
#   sudo .ci/slurm_setup.sh        # then: sinfo ; pytest -m slow tests/test_slurm.py
# Needs root, Debian/Ubuntu apt and PyPI. No accounting (slurmdbd) is set up: the executor
# plugin then reads job status from squeue, so MinJobAge keeps finished jobs visible there.
set -euo pipefail
cd "$(dirname "$0")/.."

SLURM_CONF_DIR=/etc/slurm
SLURM_CONF=$SLURM_CONF_DIR/slurm.conf
PLUGIN_REQ="snakemake-executor-plugin-slurm==2.8.0"

# 1. Packages (skipped when already installed).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd munge slurm-client
fi
python -m pip install -q "$PLUGIN_REQ"

# 2. munge: one key, shared by controller and node (here: the same host).
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey --create --force; else
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
  runuser -u munge -- munged
  for _ in $(seq 20); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.5; done
fi
munge -n </dev/null | unmunge >/dev/null

# 3. slurm.conf: this host is controller and the only compute node, sized from the machine
#    (`slurmd -C` prints CPUs/sockets/cores/threads/RealMemory as slurmd itself sees them).
HOST=$(hostname -s)
NODE_LINE=$(slurmd -C | head -n 1 | sed -E 's/ *UpTime=.*//')
# Leave 5% of RAM for the OS and the controller.
MEM=$(sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' <<<"$NODE_LINE")
NODE_LINE=$(sed -E "s/RealMemory=[0-9]+/RealMemory=$((MEM * 95 / 100))/" <<<"$NODE_LINE")
mkdir -p $SLURM_CONF_DIR /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
NEW_CONF=$(mktemp)
cat >"$NEW_CONF" <<CONF
# Written by .ci/slurm_setup.sh: a one-node test cluster, no accounting.
ClusterName=flowrepro
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups inside containers/CI runners.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# CPUs and memory are consumable, so --mem/--cpus-per-task requests are scheduled for real.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Keep finished jobs in squeue's memory for an hour: without accounting the plugin sees
# COMPLETED/FAILED states only there.
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
$NODE_LINE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
CHANGED=1
if [ -f $SLURM_CONF ] && cmp -s "$NEW_CONF" $SLURM_CONF; then CHANGED=0; fi
install -m 644 "$NEW_CONF" $SLURM_CONF && rm -f "$NEW_CONF"

# 4. Daemons (no systemd in containers: start them directly; reconfigure if the config changed).
if pgrep -x slurmctld >/dev/null; then
  [ $CHANGED = 1 ] && scontrol reconfigure || true
else
  slurmctld
fi
pgrep -x slurmd >/dev/null || slurmd

# 5. Wait for the node to be idle.
for i in $(seq 60); do
  STATE=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null || true)
  case "$STATE" in
    idle|mixed|allocated) break ;;
    down*|drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
sinfo
case "$(sinfo -h -n "$HOST" -o '%T')" in
  idle|mixed|allocated) echo "slurm_setup: node $HOST is up" ;;
  *) echo "slurm_setup: node $HOST not up; see /var/log/slurm/" >&2; exit 1 ;;
esac
