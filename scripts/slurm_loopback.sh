#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests and for trying `sweetspot run --emit slurm`
# without a cluster: munged, slurmctld and slurmd with their own socket, ports and state under
# DIR (no cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none). Needs Debian's
# `slurm-wlm` and `munge` packages and root (the daemons run as root).
#
#   scripts/slurm_loopback.sh start DIR   # then: export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm_loopback.sh stop DIR
set -euo pipefail
cmd=${1:?start or stop}
dir=$(realpath -m "${2:?a folder for the cluster files}")
case "$cmd" in
stop)
    for p in slurmd slurmctld munged; do
        if [ -f "$dir/$p.pid" ]; then kill "$(cat "$dir/$p.pid")" 2>/dev/null || true; fi
    done
    exit 0
    ;;
start) ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
for bin in munged slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || {
        echo "$bin is not installed (Debian: apt-get install slurm-wlm munge)" >&2
        exit 3
    }
done
export PATH="$PATH:/usr/sbin"
mkdir -p "$dir"/{state,spool,log}
host=$(hostname -s)
port=$((20000 + RANDOM % 20000))
head -c 1024 /dev/urandom > "$dir/munge.key"
chmod 400 "$dir/munge.key"
munged --socket="$dir/munge.sock" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed" --force
cat > "$dir/slurm.conf" <<CONF
ClusterName=loopback
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=$port
SlurmdPort=$((port + 1))
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$(nproc) RealMemory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 )) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -c
slurmd -c
for _ in $(seq 1 50); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then
        echo "SLURM_CONF=$dir/slurm.conf"
        exit 0
    fi
    sleep 0.2
done
echo "the loopback cluster did not come up; see $dir/log" >&2
exit 1
