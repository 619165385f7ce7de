# SPDX-License-Identifier: MIT
# cluster_hosts.sh: luamp-mpi over two hosts, made on this machine: two
# network namespaces joined by a veth pair, each with a host name of its
# own (a UTS namespace: Open MPI tells nodes apart by name), mpirun in the
# first, and Open MPI's rsh launcher entering the second through a wrapper
# instead of ssh (tests/cluster/hosts.lua: mp.cluster() shows both hosts,
# work is done on both).  Over TCP on the veth subnet only: the shared
# memory transport (vader) must not be used between namespaces that share
# /dev/shm.  Root only; skipped, saying why, otherwise or without ip or
# unshare.  The namespaces are removed however the test ends.
. "$top_srcdir/tests/tap.sh"
. "$top_srcdir/tests/cluster/lib.sh"

reason=$(cluster_skip_reason)
if [ -z "$reason" ]; then
    if [ "$(id -u)" != 0 ]; then reason="needs root (network namespaces)"
    elif ! command -v ip >/dev/null; then reason="ip was not found (install the Debian package iproute2)"
    elif ! command -v unshare >/dev/null; then reason="unshare was not found (install the Debian package util-linux)"
    fi
fi
skip_all() {
    skip "cluster: two hosts (hosts.lua, 2 + 2 ranks)" "$1"
    done_testing
}
[ -n "$reason" ] && skip_all "$reason"

tmp=$(mktemp -d)
id=$$
ns1=luamp-ct-$id-a
ns2=luamp-ct-$id-b
# (interface names: at most 15 characters)
if1=lct$((id % 100000))a
if2=lct$((id % 100000))b
net=10.231.$((id % 250))
host1=luamp-host-a
host2=luamp-host-b
job="$tmp/job"
# (`ip netns add` makes /run/netns a mount point of its own the first
# time; one this test made, and left empty, goes with it)
netns_mounted=$(mountpoint -q /run/netns 2>/dev/null && echo yes)
cleanup() {
    if [ -f "$job/mark" ]; then
        for p in $(cluster_procs "$(cat "$job/mark")"); do kill -KILL "$p" 2>/dev/null; done
    fi
    ip netns del "$ns1" 2>/dev/null
    ip netns del "$ns2" 2>/dev/null
    ip link del "$if1" 2>/dev/null
    if [ -z "$netns_mounted" ] && mountpoint -q /run/netns 2>/dev/null && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
        umount /run/netns 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if ! { ip netns add "$ns1" && ip netns add "$ns2" &&
        ip link add "$if1" type veth peer name "$if2" &&
        ip link set "$if1" netns "$ns1" && ip link set "$if2" netns "$ns2" &&
        ip -n "$ns1" addr add "$net.1/30" dev "$if1" && ip -n "$ns2" addr add "$net.2/30" dev "$if2" &&
        ip -n "$ns1" link set lo up && ip -n "$ns2" link set lo up &&
        ip -n "$ns1" link set "$if1" up && ip -n "$ns2" link set "$if2" up; } 2> "$tmp/ip.err"; then
    # (a container without CAP_NET_ADMIN, or without veth, cannot: that is
    # this machine's limit, not luamp's)
    skip_all "cannot make the two network namespaces here: $(tr '\n' ' ' < "$tmp/ip.err")"
fi

# the rsh agent: Open MPI runs it as `AGENT [options] HOST COMMAND...`
# (for ssh); it runs COMMAND on the namespace that has HOST's address,
# under that host's name.
cat > "$tmp/agent" <<AGENT
#!/bin/sh
while [ \$# -gt 0 ]; do case \$1 in -*) shift ;; *) break ;; esac; done
host=\$1
shift
case \$host in
    $net.1) ns=$ns1 name=$host1 ;;
    $net.2) ns=$ns2 name=$host2 ;;
    *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts sh -c 'hostname "\$0" && exec sh -c "\$1"' "\$name" "\$*"
AGENT
chmod +x "$tmp/agent"
printf '%s slots=2\n%s slots=2\n' "$net.1" "$net.2" > "$tmp/hostfile"

MPI_NET="--mca
btl
self,tcp
--mca
btl_tcp_if_include
$net.0/30
--mca
oob_tcp_if_include
$net.0/30
--mca
plm_rsh_agent
$tmp/agent
--hostfile
$tmp/hostfile"
MPI_PREFIX="ip
netns
exec
$ns1
unshare
--uts
sh
-c
hostname \"\$0\" && exec \"\$@\"
$host1"

mkdir -p "$tmp/scratch"
mpi_run "$job" 4 "$LUAMP_MPI" "$top_srcdir/tests/cluster/hosts.lua" "$tmp/scratch" \
    "$host1=0,1" "$host2=2,3"
tap_relay "two hosts" "$job" "$?"
check_gone "two hosts" "$job"
done_testing
