#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine (loopback), for the Slurm tests:
# Debian's slurmctld, slurmd and munge. Needs root.
# Idempotent: does nothing when `sinfo` already answers.
set -euo pipefail
if command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo -h >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null
fi
host=$(hostname -s)
mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge /etc/slurm \
  /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
# One munged only: a second one replaces the socket and breaks the first.
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=bnlab
SlurmctldHost=${host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
NodeName=${host} CPUs=$(nproc) RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qE "idle|mix|alloc"; then
    exit 0
  fi
  sleep 1
done
echo "slurm did not come up; see /var/log/slurm/" >&2
exit 1
