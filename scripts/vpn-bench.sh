#!/usr/bin/env bash
# Races the hopwise VPN against wireguard-go between network namespaces on this machine, in
# one run, and prints throughput (iperf3 TCP), CPU seconds per GB and ping latency:
#
#   1. hopwise, direct path: two nodes, A and B.
#   2. hopwise through one relay: A, R and B, with A and B blocked from each other (nftables).
#   3. wireguard-go (Debian's package, configured with wg) between A and B.
#
# Needs root, iperf3, nftables, wireguard-go and wireguard-tools. Not part of CI.
# Usage: sudo scripts/vpn-bench.sh [seconds per iperf3 run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10}
cargo build --release -q -p hopwise
hopwise=$PWD/target/release/hopwise
work=$(mktemp -d /tmp/hopwise-vpn-bench.XXXXXX)
tag=hb$(($$ % 100000))
hub=${tag}hub
names=(a b r)
declare -A address=([a]=10.55.0.1 [b]=10.55.0.2 [r]=10.55.0.3)
pids=()

cleanup() {
    local status=$?
    if ((status != 0)); then
        for log in "$work"/*.log; do echo "--- $log"; grep -v "^ *[0-9]*: \|^ *at " "$log" | tail -n 12; done
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # A daemonised iperf3 server outlives its namespace's deletion.
    [[ -f $work/iperf3.pid ]] && kill "$(cat "$work/iperf3.pid")" 2>/dev/null
    sleep 0.5
    for n in "${names[@]}"; do ip netns del "$tag$n" 2>/dev/null || true; done
    ip netns del "$hub" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

inside() { local n=$1; shift; ip netns exec "$tag$n" "$@"; }

ip netns add "$hub"
ip -n "$hub" link add br0 type bridge
ip -n "$hub" link set br0 up
for n in "${names[@]}"; do
    ip netns add "$tag$n"
    ip link add "${tag}i$n" type veth peer name "${tag}o$n"
    ip link set "${tag}i$n" netns "$tag$n"
    ip link set "${tag}o$n" netns "$hub"
    ip -n "$hub" link set "${tag}o$n" master br0 up
    ip -n "$tag$n" addr add "${address[$n]}/24" dev "${tag}i$n"
    ip -n "$tag$n" link set "${tag}i$n" up
    ip -n "$tag$n" link set lo up
done

"$hopwise" keygen --network --out "$work/network.key" >/dev/null
for n in "${names[@]}"; do "$hopwise" keygen --out "$work/$n.key" >/dev/null; done

# CPU seconds (user + system) of these processes so far.
cpu_seconds() {
    local ticks=0 pid
    for pid in "$@"; do
        read -r -a stat <"/proc/$pid/stat"
        ticks=$((ticks + stat[13] + stat[14]))
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}

# iperf3 TCP from namespace $1 to address $2, with the CPU of processes $3...; prints
# "Gbit/s CPU-s/GB".
race() {
    local from=$1 to=$2; shift 2
    local before after json
    before=$(cpu_seconds "$@")
    json=$(inside "$from" iperf3 -c "$to" -t "$duration" -J)
    after=$(cpu_seconds "$@")
    python3 - "$json" "$before" "$after" <<'EOF'
import json, sys
result = json.loads(sys.argv[1])["end"]["sum_received"]
gigabytes = result["bytes"] / 1e9
cpu = float(sys.argv[3]) - float(sys.argv[2])
print(f"{result['bits_per_second'] / 1e9:.3f} {cpu / gigabytes:.2f}")
EOF
}

start_node() {
    local n=$1; shift
    # Not through `inside`: a function in the background is a subshell, and $! would be its pid.
    ip netns exec "$tag$n" "$hopwise" node --listen "${address[$n]}:4000" --key "$work/$n.key" \
        --network-key-file "$work/network.key" --vpn --alias "node-$n" "$@" \
        >"$work/$n.log" 2>&1 &
    pids+=($!)
    eval "pid_$n=$!"
}

vpn_ipv4() { inside "$1" "$hopwise" status --json | python3 -c 'import json,sys; print((json.load(sys.stdin).get("vpn") or {}).get("ipv4") or "")'; }

wait_ipv4() {
    local n=$1 ip=""
    for _ in $(seq 100); do
        ip=$(vpn_ipv4 "$n" 2>/dev/null || true)
        [[ -n $ip ]] && { echo "$ip"; return; }
        sleep 0.3
    done
    echo "node $n claimed no IPv4 address" >&2
    exit 1
}

stop_nodes() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

# Median of the overlay RTT (hopwise ping) and of ICMP pings over the VPN, in ms.
latency() {
    local from=$1 node=$2 ip=$3 overlay icmp
    overlay=$(for _ in $(seq 50); do
        inside "$from" "$hopwise" ping "$node" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rtt_ms"])'
    done | python3 -c 'import sys,statistics; print(statistics.median(float(l) for l in sys.stdin))')
    icmp=$(inside "$from" ping -n -q -c 200 -i 0.01 "$ip" >/dev/null; inside "$from" ping -n -c 200 -i 0.01 "$ip" |
        python3 -c 'import re,sys,statistics; print(statistics.median(float(m) for m in re.findall(r"time=([0-9.]+)", sys.stdin.read())))')
    echo "$overlay $icmp"
}

echo "== hopwise, direct path (iperf3 -t $duration)"
start_node a
start_node b --seed "${address[a]}:4000"
ip_b=$(wait_ipv4 b)
wait_ipv4 a >/dev/null
inside b iperf3 -s -D -I "$work/iperf3.pid" -B "$ip_b" >/dev/null
sleep 1
read -r direct_gbps direct_cpu < <(race a "$ip_b" "$pid_a" "$pid_b")
read -r overlay_ms icmp_ms < <(latency a node-b "$ip_b")
stop_nodes
kill "$(cat "$work/iperf3.pid")" && rm -f "$work/iperf3.pid"

echo "== hopwise, through a relay"
inside a nft -f - <<EOF
table inet hopwise_bench {
    chain input { type filter hook input priority 0; ip saddr ${address[b]} drop; }
    chain output { type filter hook output priority 0; ip daddr ${address[b]} drop; }
}
EOF
start_node a
start_node r --seed "${address[a]}:4000"
start_node b --seed "${address[r]}:4000"
ip_b=$(wait_ipv4 b)
wait_ipv4 a >/dev/null
for _ in $(seq 60); do
    hops=$(inside a "$hopwise" ping node-b --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["outbound"]))' 2>/dev/null || echo 0)
    [[ $hops == 3 ]] && break
    sleep 0.5
done
inside b iperf3 -s -D -I "$work/iperf3.pid" -B "$ip_b" >/dev/null
sleep 1
read -r relay_gbps relay_cpu < <(race a "$ip_b" "$pid_a" "$pid_r" "$pid_b")
stop_nodes
kill "$(cat "$work/iperf3.pid")" && rm -f "$work/iperf3.pid"
inside a nft delete table inet hopwise_bench

echo "== wireguard-go, direct path"
for n in a b; do
    (umask 077; wg genkey >"$work/$n.wg")
    wg pubkey <"$work/$n.wg" >"$work/$n.wgpub"
    ip netns exec "$tag$n" env WG_PROCESS_FOREGROUND=1 wireguard-go "wg$n" >"$work/$n.wg.log" 2>&1 &
    pids+=($!)
    eval "wgpid_$n=$!"
done
sleep 1
declare -A wg_ip=([a]=10.66.0.1 [b]=10.66.0.2)
for n in a b; do
    peer=$([[ $n == a ]] && echo b || echo a)
    # Each its own name: wireguard-go's control sockets share one directory across namespaces.
    inside "$n" wg set "wg$n" listen-port 51820 private-key "$work/$n.wg" \
        peer "$(cat "$work/$peer.wgpub")" endpoint "${address[$peer]}:51820" allowed-ips "${wg_ip[$peer]}/32"
    inside "$n" ip addr add "${wg_ip[$n]}/24" dev "wg$n"
    inside "$n" ip link set "wg$n" up
done
inside b iperf3 -s -D -I "$work/iperf3.pid" -B "${wg_ip[b]}" >/dev/null
sleep 1
read -r wg_gbps wg_cpu < <(race a "${wg_ip[b]}" "$wgpid_a" "$wgpid_b")
wg_icmp=$(inside a ping -n -c 200 -i 0.01 "${wg_ip[b]}" |
    python3 -c 'import re,sys,statistics; print(statistics.median(float(m) for m in re.findall(r"time=([0-9.]+)", sys.stdin.read())))')
kill "$(cat "$work/iperf3.pid")" && rm -f "$work/iperf3.pid"

echo
printf '%-28s %10s %12s\n' "" "Gbit/s" "CPU s/GB"
printf '%-28s %10s %12s\n' "hopwise direct" "$direct_gbps" "$direct_cpu"
printf '%-28s %10s %12s\n' "hopwise through a relay" "$relay_gbps" "$relay_cpu"
printf '%-28s %10s %12s\n' "wireguard-go direct" "$wg_gbps" "$wg_cpu"
echo
python3 - "$direct_gbps" "$relay_gbps" "$wg_gbps" "$overlay_ms" "$icmp_ms" "$wg_icmp" <<'EOF'
import sys
direct, relay, wg, overlay, icmp, wg_icmp = map(float, sys.argv[1:])
print(f"hopwise / wireguard-go (direct): {direct / wg:.2f}")
print(f"relay / direct (hopwise):        {relay / direct:.2f}")
print(f"median RTT: overlay {overlay:.3f} ms, ping over the VPN {icmp:.3f} ms "
      f"(+{icmp - overlay:.3f} ms); ping over wireguard-go {wg_icmp:.3f} ms")
EOF
