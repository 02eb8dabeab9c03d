#!/usr/bin/env bash
# Benchmarks of forwards on loopback, each against a baseline measured in the same run:
#
#   1. Relay forwarding: iperf3 UDP through a UDP forward from node A to node C across relay R
#      (A and C blocked from each other by nftables), against examples/raw_forwarder (the same
#      batching, no encryption) between the same iperf3 ends. Reports the relay's throughput,
#      its overlay datagram size, and Gbit/s per CPU second of the relay process.
#   2. iperf3 TCP through a TCP forward against `ssh -L` (OpenSSH, default cipher) to the same
#      iperf3 server: on the direct path, and through one relay (R for hopwise, a jump through
#      an sshd on R, as `ssh -J`); a socat chain over the same hops is the unencrypted ceiling.
#   3. A UDP forward's added round trip: a request/response client through the forward on A
#      against the overlay's own round trip from A to C (hopwise ping), on the direct path.
#
# Needs root (nftables), iperf3, openssh-server, openssh-client, socat, nftables, python3.
# Not part of CI. Usage: sudo scripts/forward-bench.sh [seconds per iperf3 run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10}
for tool in iperf3 socat ssh ssh-keygen python3 nft; do
    command -v "$tool" >/dev/null || { echo "forward-bench needs $tool" >&2; exit 1; }
done
[[ -x /usr/sbin/sshd ]] || { echo "forward-bench needs openssh-server (/usr/sbin/sshd)" >&2; exit 1; }
cargo build --release -q -p hopwise --bin hopwise --example raw_forwarder
hopwise=$PWD/target/release/hopwise
raw_forwarder=$PWD/target/release/examples/raw_forwarder
work=$(mktemp -d /tmp/hopwise-forward-bench.XXXXXX)
table=hopwise_forward_bench
declare -A address=([a]=127.13.0.1 [r]=127.13.0.2 [c]=127.13.0.3)
pids=()

cleanup() {
    local status=$?
    if ((status != 0)); then
        for log in "$work"/*.log; do echo "--- $log"; tail -n 12 "$log"; done
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    nft delete table inet "$table" 2>/dev/null || true
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT

background() { "$@" & pids+=($!); }
api() { echo "${address[$1]}:4001"; }
hw() { local node=$1; shift; "$hopwise" "$@" --api "$(api "$node")"; }

# CPU seconds (user + system) of one process so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"
}

"$hopwise" keygen --network --out "$work/network.key" >/dev/null
declare -A node_pid
for n in r a c; do
    seed=()
    [[ $n != r ]] && seed=(--seed "${address[r]}:4000")
    background "$hopwise" node --network-key-file "$work/network.key" \
        --listen "${address[$n]}:4000" --api "$(api "$n")" --alias "bench-$n" "${seed[@]}" \
        >"$work/$n.log" 2>&1
    node_pid[$n]=$!
    sleep 0.3
done
wait_for_route() { # from to hops
    for _ in $(seq 100); do
        hops=$(hw "$1" trace "bench-$2" --json 2>/dev/null | python3 -c \
            'import json,sys; print(len(json.load(sys.stdin)["outbound"]) - 1)' 2>/dev/null || true)
        [[ $hops == "$3" ]] && return 0
        sleep 0.3
    done
    echo "no route of $3 hop(s) from $1 to $2" >&2
    exit 1
}
wait_for_route a c 1

# The targets on C's side: an iperf3 server (TCP and UDP) and a UDP echo server.
background iperf3 -s -B "${address[c]}" -p 5201 >"$work/iperf3.log" 2>&1
background python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7777))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
' "${address[c]}"
sleep 0.5
hw c expose tcp iperf "${address[c]}:5201" >/dev/null
hw c expose udp iperf-udp "${address[c]}:5201" >/dev/null
hw c expose udp echo "${address[c]}:7777" >/dev/null
hw a forward tcp 127.13.8.1:5201 bench-c/iperf >/dev/null
hw a forward udp 127.13.8.1:5201 bench-c/iperf-udp >/dev/null
hw a forward udp 127.13.8.1:7777 bench-c/echo >/dev/null

# sshd on R and on C, with throwaway keys.
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$work/host"
ssh-keygen -q -t ed25519 -N '' -f "$work/id"
cp "$work/id.pub" "$work/authorized_keys"
for n in r c; do
    cat >"$work/sshd-$n.conf" <<EOF
Port 2222
ListenAddress ${address[$n]}
HostKey $work/host
AuthorizedKeysFile $work/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $work/sshd-$n.pid
EOF
    background /usr/sbin/sshd -D -e -f "$work/sshd-$n.conf" 2>"$work/sshd-$n.log"
done
ssh_options=(-i "$work/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    -o BatchMode=yes -o ExitOnForwardFailure=yes -o LogLevel=ERROR -N)
sleep 0.5

gbits() { python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'; }
iperf_tcp() { iperf3 -J -t "$duration" -c "$1" -p "$2" | gbits; }
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }

echo "== iperf3 TCP, direct path, ${duration} s each"
hopwise_direct=$(iperf_tcp 127.13.8.1 5201)
background ssh "${ssh_options[@]}" -L 127.13.8.2:5201:"${address[c]}":5201 -p 2222 "root@${address[c]}"
sleep 1
ssh_direct=$(iperf_tcp 127.13.8.2 5201)
background socat TCP-LISTEN:5201,bind=127.13.8.3,fork,reuseaddr TCP:"${address[c]}":5201
sleep 0.3
socat_direct=$(iperf_tcp 127.13.8.3 5201)
echo "hopwise forward $hopwise_direct Gbit/s · ssh -L $ssh_direct · socat $socat_direct" \
    "· hopwise / ssh $(ratio "$hopwise_direct" "$ssh_direct")"

echo "== UDP forward round trip, direct path"
python3 - "$hopwise" "$(api a)" <<'EOF'
import json, socket, statistics, subprocess, sys, time
hopwise, api = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.connect(("127.13.8.1", 7777))
def through_forward(count):
    rtts = []
    for i in range(count):
        started = time.perf_counter()
        s.send(b"%08d" % i)
        while s.recv(64) != b"%08d" % i:
            pass
        rtts.append((time.perf_counter() - started) * 1e3)
    return rtts
def overlay(count):
    rtts = []
    for _ in range(count):
        out = subprocess.run([hopwise, "ping", "bench-c", "--json", "--api", api],
                             capture_output=True, text=True, check=True).stdout
        rtts.append(json.loads(out)["rtt_ms"])
    return rtts
through_forward(200)  # warm up the flow
forward, trace = [], []
for _ in range(5):  # interleaved, so both see the same load
    forward += through_forward(400)
    trace += overlay(40)
f, t = statistics.median(forward), statistics.median(trace)
print(f"through the UDP forward: median {f:.3f} ms over {len(forward)} requests; overlay "
      f"round trip (hopwise ping): median {t:.3f} ms over {len(trace)}; added {f - t:+.3f} ms")
EOF

echo "== relay: block A <-> C (nftables), wait for the route through R"
nft -f - <<EOF
table inet $table {
    chain output {
        type filter hook output priority 0;
        ip saddr ${address[a]} ip daddr ${address[c]} udp dport 4000 drop
        ip saddr ${address[c]} ip daddr ${address[a]} udp dport 4000 drop
    }
}
EOF
wait_for_route a c 2

echo "== iperf3 TCP through one relay, ${duration} s each"
hopwise_relay=$(iperf_tcp 127.13.8.1 5201)
# As `ssh -J`, with the jump taking the same options (a plain -J would check its host key).
jump="ssh -i $work/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes"
jump+=" -o LogLevel=ERROR -W %h:%p -p 2222 root@${address[r]}"
background ssh "${ssh_options[@]}" -o ProxyCommand="$jump" \
    -L 127.13.8.4:5201:"${address[c]}":5201 -p 2222 "root@${address[c]}"
sleep 1.5
ssh_relay=$(iperf_tcp 127.13.8.4 5201)
background socat TCP-LISTEN:6201,bind="${address[r]}",fork,reuseaddr TCP:"${address[c]}":5201
background socat TCP-LISTEN:5201,bind=127.13.8.5,fork,reuseaddr TCP:"${address[r]}":6201
sleep 0.3
socat_relay=$(iperf_tcp 127.13.8.5 5201)
echo "hopwise forward $hopwise_relay Gbit/s · ssh -J -L $ssh_relay · socat chain $socat_relay" \
    "· hopwise / ssh $(ratio "$hopwise_relay" "$ssh_relay")"

echo "== relay forwarding: iperf3 UDP through R, ${duration} s each"
relay_status() {
    hw r status --json | python3 -c \
        'import json,sys; s=json.load(sys.stdin); print(s["datagrams_received"], s["bytes_received"], s["data_relayed"])'
}
udp_run() { # host port length -> "datagrams received by the iperf3 server" "bytes"
    iperf3 -J -u -b 20G -l "$3" -t "$duration" -c "$1" -p "$2" | python3 -c '
import json, sys
end = json.load(sys.stdin)["end"]["sum"]
received = end["packets"] - end["lost_packets"]
print(received, end["lost_percent"])'
}
read -r d0 b0 relayed0 < <(relay_status)
cpu0=$(cpu_seconds "${node_pid[r]}")
read -r hw_received hw_lost < <(udp_run 127.13.8.1 5201 1100)
cpu1=$(cpu_seconds "${node_pid[r]}")
read -r d1 b1 relayed1 < <(relay_status)
background socat TCP-LISTEN:6300,bind="${address[r]}",fork,reuseaddr TCP:"${address[c]}":5201
background "$raw_forwarder" "${address[r]}:6300" "${address[c]}:5201"
raw_pid=$!
sleep 0.3
raw_cpu0=$(cpu_seconds "$raw_pid")
read -r raw_received raw_lost < <(udp_run "${address[r]}" 6300 1200)
raw_cpu1=$(cpu_seconds "$raw_pid")
python3 - "$duration" "$d0" "$b0" "$d1" "$b1" "$relayed0" "$relayed1" "$cpu0" "$cpu1" \
    "$hw_received" "$hw_lost" "$raw_received" "$raw_lost" "$raw_cpu0" "$raw_cpu1" <<'EOF'
import sys
(duration, d0, b0, d1, b1, r0, r1, c0, c1, hw_rx, hw_lost, raw_rx, raw_lost, rc0, rc1) = map(
    float, sys.argv[1:])
datagrams, bytes_in = d1 - d0, b1 - b0
size = bytes_in / max(datagrams, 1)
relay_gbit = bytes_in * 8 / duration / 1e9
relay_cpu = c1 - c0
per_core = bytes_in * 8 / max(relay_cpu, 1e-9) / 1e9
raw_bytes = raw_rx * 1200
raw_gbit = raw_bytes * 8 / duration / 1e9
raw_cpu = rc1 - rc0
raw_per_core = raw_bytes * 8 / max(raw_cpu, 1e-9) / 1e9
print(f"hopwise relay: {datagrams:.0f} datagrams of {size:.0f} bytes in {duration:.0f} s "
      f"({r1 - r0:.0f} relayed): {relay_gbit:.3f} Gbit/s in, {relay_cpu:.1f} CPU s -> "
      f"{per_core:.3f} Gbit/s per core; iperf3 got {hw_rx:.0f} datagrams, lost {hw_lost:.1f}%")
print(f"raw forwarder: {raw_rx:.0f} datagrams of 1200 bytes delivered: {raw_gbit:.3f} Gbit/s, "
      f"{raw_cpu:.1f} CPU s -> {raw_per_core:.3f} Gbit/s per core; lost {raw_lost:.1f}%")
print(f"ratio hopwise / raw: throughput {relay_gbit / raw_gbit:.2f}, per core "
      f"{per_core / raw_per_core:.2f}")
EOF
