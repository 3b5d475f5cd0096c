#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for rga-launch's SLURM tests and for trying the
# launcher: munge, MariaDB + slurmdbd (accounting, which submitit reads job states from),
# slurmctld and slurmd, one partition sized from nproc and the free memory. Everything lives in
# one state folder; the daemons are stopped by the PIDs recorded there.
#   bash scripts/slurm-cluster.sh start STATE_DIR   # installs the Debian packages when missing
#   bash scripts/slurm-cluster.sh stop STATE_DIR
#   export SLURM_CONF=STATE_DIR/etc/slurm.conf      # every process that submits needs it
# Needs root (the daemons and their jobs run as root) and Debian's slurm-wlm 22.05. Settings for a
# machine without systemd or cgroup v2 delegation: proctrack/linuxproc, task/none, no job
# accounting gather and no cgroup.conf; DefMemPerCPU so that a job without --mem does not take
# the whole node.
set -euo pipefail
cmd="${1:-}"; S="${2:-}"
[ -n "$cmd" ] && [ -n "$S" ] || { echo "usage: $0 start|stop STATE_DIR" >&2; exit 2; }
mkdir -p "$S"; S="$(cd "$S" && pwd)"
PORT_BASE="${RGA_SLURM_PORT_BASE:-16817}"   # slurmctld, slurmd, slurmdbd, mariadb: four ports from here

stop() {
  for d in slurmd slurmctld slurmdbd mariadb munged; do
    if [ -f "$S/run/$d.pid" ]; then
      pid="$(cat "$S/run/$d.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$S/run/$d.pid"
    fi
  done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "unknown command $cmd: start | stop" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "the test cluster runs its daemons as root; run as root" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v mariadbd >/dev/null; then
  echo "[slurm-cluster] installing slurm-wlm slurmdbd mariadb-server munge (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm slurmdbd mariadb-server munge >/dev/null
fi
stop  # a previous cluster in this folder
mkdir -p "$S/etc" "$S/run" "$S/log" "$S/munge" "$S/ctld" "$S/spool"
chmod 700 "$S/munge"

# munge at its default socket (/run/munge/munge.socket.2, where SLURM's auth/munge looks; a socket
# elsewhere through AuthInfo failed to encode for slurmctld in 22.05) with its own key; a munged
# already serving that socket is left alone
[ -f "$S/munge/munge.key" ] || { dd if=/dev/urandom bs=1 count=1024 of="$S/munge/munge.key" 2>/dev/null; chmod 400 "$S/munge/munge.key"; }
mkdir -p /run/munge
if ! munge -n >/dev/null 2>&1; then
  munged --force --key-file="$S/munge/munge.key" --pid-file="$S/run/munged.pid" --log-file="$S/log/munged.log" \
    --seed-file="$S/munge/munge.seed"
fi

# MariaDB for slurmdbd, on loopback
DB_PORT=$((PORT_BASE + 3))
if [ ! -d "$S/mysql/mysql" ]; then
  mariadb-install-db --datadir="$S/mysql" --user=root --auth-root-authentication-method=socket >/dev/null 2>&1
fi
mariadbd --user=root --datadir="$S/mysql" --socket="$S/run/mysql.sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
  --pid-file="$S/run/mariadb.pid" --log-error="$S/log/mariadb.log" --skip-name-resolve >/dev/null 2>&1 &
for _ in $(seq 100); do [ -S "$S/run/mysql.sock" ] && break; sleep 0.1; done
mariadb --socket="$S/run/mysql.sock" -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'rga-test';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

CPUS="$(nproc)"
MEM_MB="$(awk '/MemAvailable/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
cat > "$S/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((PORT_BASE + 2))
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=rga-test
StorageLoc=slurm_acct_db
PidFile=$S/run/slurmdbd.pid
LogFile=$S/log/slurmdbd.log
CONF
chmod 600 "$S/etc/slurmdbd.conf"
cat > "$S/etc/slurm.conf" <<CONF
ClusterName=rga
SlurmctldHost=localhost
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$PORT_BASE
SlurmdPort=$((PORT_BASE + 1))
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT_BASE + 2))
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((MEM_MB / CPUS))
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=300
NodeName=rga-node NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=rga-node Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$S/etc/slurm.conf"
slurmdbd
for _ in $(seq 100); do [ -f "$S/run/slurmdbd.pid" ] && break; sleep 0.1; done
sleep 0.5
slurmctld
slurmd -N rga-node
for _ in $(seq 150); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "[slurm-cluster] up: partition debug, $CPUS CPUs, $MEM_MB MB; export SLURM_CONF=$SLURM_CONF" >&2
    exit 0
  fi
  sleep 0.2
done
echo "[slurm-cluster] the cluster did not come up; logs in $S/log" >&2
tail -n 20 "$S"/log/*.log >&2 || true
exit 1
