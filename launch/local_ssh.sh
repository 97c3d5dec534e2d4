#!/bin/sh
# An ssh stand-in for trying multi-node launchers on one machine without an ssh server: it drops
# ssh's options and the host name and runs the remote command here (in this environment, where a
# real ssh would start a login shell). Every host of a hostfile is then this machine. Open MPI's
# rsh launcher, which `deepspeed --launcher openmpi` uses, takes it as its agent:
#
#   printf '127.0.0.1 slots=1\n127.0.0.2 slots=1\n' > hosts
#   deepspeed --hostfile hosts --launcher openmpi --no_ssh_check --master_addr 127.0.0.1 \
#     --launcher_args "--mca plm_rsh_agent $PWD/launch/local_ssh.sh --mca btl_tcp_if_include lo" \
#     --module megaphi.train --config configs/phi_tiny_cpu.yaml
#
# Name this machine by addresses Open MPI does not recognise as its own (127.0.0.2, ...): it folds
# 127.0.0.1, localhost and the hostname into one node, and then rejects the second slot count.
set -eu
while [ $# -gt 0 ]; do
  case "$1" in
    -[BbcDEeFIiJLlmOopQRSWw]) shift 2 ;;  # ssh options whose value is the next word
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  echo "local_ssh.sh: expected [ssh options] HOST COMMAND..., got no command to run" >&2
  exit 2
fi
shift  # the host: every host is this machine
# ssh hands the remote shell its words joined by spaces; so does this.
exec /bin/sh -c "$*"
