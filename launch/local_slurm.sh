#!/usr/bin/env bash
# A throwaway Slurm cluster on this one machine, to run the sbatch scripts of slurm/ without a cluster
# (Debian's slurm-wlm; launch/bootstrap.sh installs it):
#   eval "$(bash launch/local_slurm.sh up /tmp/megaphi-slurm)"                          # one node, node1
#   eval "$(bash launch/local_slurm.sh up /tmp/megaphi-slurm n1=127.0.0.2 n2=127.0.0.3)" # two nodes
#   sbatch --wait slurm/smoke_cpu.sh
#   bash launch/local_slurm.sh down /tmp/megaphi-slurm
# `up` writes DIR/slurm.conf, starts slurmctld and one slurmd per node, waits until every node is
# idle and prints `export SLURM_CONF=DIR/slurm.conf`: run it inside `eval "$(...)"` as above so that
# sbatch/srun/squeue in this shell talk to it (printed to a terminal, it also says so). Each node is NAME=ADDR: ADDR is the node's
# NodeAddr (any 127.x.y.z reaches this host), so node names never need to resolve, as on clusters
# where only Slurm knows its nodes' addresses. `down` stops the daemons by the pids in their pid
# files. Authentication is off (auth/none): any local user can submit while it runs; testing only.
set -euo pipefail

usage() {
  echo "usage: $0 up DIR [NAME=ADDR ...] [--cpus N]  |  $0 down DIR" >&2
  exit 2
}
die() {
  echo "error: $*" >&2
  exit 2
}
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}
alive() {  # the daemons are not our children: a dead one may linger as a zombie until reaped
  [ -r "/proc/$1/stat" ] && [ "$(cut -d')' -f2- "/proc/$1/stat" | awk '{print $1}')" != Z ]
}

up() {
  local dir="$1"
  shift
  local cpus
  cpus="$(nproc)"
  local -a names=() addrs=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --cpus) [ $# -ge 2 ] || usage; cpus="$2"; shift 2 ;;
      *=*) names+=("${1%%=*}"); addrs+=("${1#*=}"); shift ;;
      *) die "node '$1' must be NAME=ADDR, e.g. n1=127.0.0.2" ;;
    esac
  done
  [ ${#names[@]} -gt 0 ] || { names=(node1); addrs=(127.0.0.1); }
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    || die "slurmctld/slurmd not found; install Debian's slurm-wlm (launch/bootstrap.sh does)"
  if [ -f "$dir/slurmctld.pid" ] && alive "$(cat "$dir/slurmctld.pid")"; then
    die "a cluster is already running in $dir; run: $0 down $dir"
  fi
  mkdir -p "$dir/state"
  dir="$(cd "$dir" && pwd)"
  local user nodes="" i
  user="$(id -un)"
  # RealMemory: room for the data stages' 2 GB per CPU (datatrove's default); nothing enforces it here
  # (no cgroups).
  for i in "${!names[@]}"; do
    mkdir -p "$dir/spool${names[$i]}"
    nodes+="NodeName=${names[$i]} NodeHostname=localhost NodeAddr=${addrs[$i]} Port=$(free_port) CPUs=$cpus RealMemory=4096 State=UNKNOWN"$'\n'
  done
  cat > "$dir/slurm.conf" <<EOF
ClusterName=megaphi-local
SlurmctldHost=localhost
SlurmctldPort=$(free_port)
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmdLogFile=$dir/slurmd-%n.log
${nodes}PartitionName=debug Nodes=$(IFS=,; echo "${names[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld
  for i in "${!names[@]}"; do
    slurmd -N "${names[$i]}"
  done
  local deadline=$((SECONDS + 30)) states
  while [ $SECONDS -lt $deadline ]; do
    states="$(sinfo -h -N -o %T 2>/dev/null | sort -u | tr '\n' ' ')"
    if [ "$states" = "idle " ]; then
      echo "export SLURM_CONF=$SLURM_CONF"
      if [ -t 1 ]; then  # not captured by eval: this shell does not know the cluster yet
        echo "# the cluster is up; to use it from this shell run the line above, or next time:" \
             "eval \"\$(bash $0 up $dir)\"" >&2
      fi
      return 0
    fi
    sleep 0.2
  done
  tail -n 5 "$dir"/*.log >&2 || true
  down "$dir"
  die "Slurm nodes not idle after 30 s (states: ${states:-none}); logs are in $dir"
}

down() {
  local dir="$1" pid pids=() f
  for f in "$dir"/slurmctld.pid "$dir"/slurmd-*.pid; do
    [ -s "$f" ] && pids+=("$(cat "$f")")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$dir"/slurmctld.pid "$dir"/slurmd-*.pid
}

[ $# -ge 2 ] || usage
case "$1" in
  up) shift; up "$@" ;;
  down) [ $# -eq 2 ] || usage; down "$2" ;;
  *) usage ;;
esac
