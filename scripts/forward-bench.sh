#!/usr/bin/env bash
# Benchmarks of forwards on loopback, each against a baseline measured in the same run:
#
#   1. Relay forwarding: encrypted overlay datagrams of 1,200 bytes from a sending node to a
#      sink node (examples/overlay_load), blocked from each other by nftables, through a hopwise
#      relay, against the same ends with examples/raw_forwarder (the same batching, nothing
#      decrypted or routed) in the middle. Reports what each middle forwarded (Gbit/s, and per
#      CPU second of its process) and what the sink received.
#   2. iperf3 TCP through a TCP forward against `ssh -L` (OpenSSH, default cipher) to the same
#      iperf3 server: on the direct path, and through one relay (R for hopwise, a jump through
#      an sshd on R, as `ssh -J`); a socat chain over the same hops is the unencrypted ceiling.
#   3. A UDP forward's added round trip: a request/response client through the forward on A
#      against the overlay's own round trip from A to C (hopwise ping), on the direct path.
#
# MTU (default 1500) is the --mtu of nodes A, R and C, the path MTU the overlay sizes its
# datagrams for: loopback carries 65,536 bytes (what ssh's and socat's TCP use), so 9000 (jumbo
# frames, the most hopwise takes) is as fair a setting for the TCP races as the default.
#
# Needs root (nftables), iperf3, openssh-server, openssh-client, socat, nftables, python3.
# Not part of CI. Usage: sudo [ROUNDS=3] scripts/forward-bench.sh [seconds per iperf3 run, default 10] [MTU]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10}
mtu=${2:-1500}
for tool in iperf3 socat ssh ssh-keygen python3 nft; do
    command -v "$tool" >/dev/null || { echo "forward-bench needs $tool" >&2; exit 1; }
done
[[ -x /usr/sbin/sshd ]] || { echo "forward-bench needs openssh-server (/usr/sbin/sshd)" >&2; exit 1; }
cargo build --release -q -p hopwise --bin hopwise --example raw_forwarder --example overlay_load
hopwise=$PWD/target/release/hopwise
raw_forwarder=$PWD/target/release/examples/raw_forwarder
overlay_load=$PWD/target/release/examples/overlay_load
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
        --listen "${address[$n]}:4000" --api "$(api "$n")" --alias "bench-$n" --mtu "$mtu" "${seed[@]}" \
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
iperf_tcp() { iperf3 -J -t "$duration" -c "$1" -p 5201 | gbits; }
# ROUNDS rounds (default 3) of hopwise, ssh and socat in turn, so that all three see the same
# machine: the median of each, and the median of the rounds' hopwise / ssh ratios.
rounds=${ROUNDS:-3}
race() { # hopwise-address ssh-address socat-address ssh-label socat-label
    local results=()
    for _ in $(seq "$rounds"); do
        results+=("$(iperf_tcp "$1") $(iperf_tcp "$2") $(iperf_tcp "$3")")
    done
    python3 - "$4" "$5" "${results[@]}" <<'EOF'
import statistics, sys
ssh, socat = sys.argv[1:3]
rounds = [tuple(map(float, r.split())) for r in sys.argv[3:]]
median = lambda i: statistics.median(r[i] for r in rounds)
ratios = [r[0] / r[1] for r in rounds]
print(f"hopwise forward {median(0):.3f} Gbit/s · {ssh} {median(1):.3f} · {socat} "
      f"{median(2):.3f} (medians of {len(rounds)} rounds) · hopwise / ssh "
      f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
EOF
}

echo "== iperf3 TCP, direct path, ${duration} s each, hopwise nodes at --mtu $mtu"
background ssh "${ssh_options[@]}" -L 127.13.8.2:5201:"${address[c]}":5201 -p 2222 "root@${address[c]}"
background socat TCP-LISTEN:5201,bind=127.13.8.3,fork,reuseaddr TCP:"${address[c]}":5201
sleep 1
race 127.13.8.1 127.13.8.2 127.13.8.3 "ssh -L" socat

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
# As `ssh -J`, with the jump taking the same options (a plain -J would check its host key).
jump="ssh -i $work/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes"
jump+=" -o LogLevel=ERROR -W %h:%p -p 2222 root@${address[r]}"
background ssh "${ssh_options[@]}" -o ProxyCommand="$jump" \
    -L 127.13.8.4:5201:"${address[c]}":5201 -p 2222 "root@${address[c]}"
background socat TCP-LISTEN:6201,bind="${address[r]}",fork,reuseaddr TCP:"${address[c]}":5201
background socat TCP-LISTEN:5201,bind=127.13.8.5,fork,reuseaddr TCP:"${address[r]}":6201
sleep 1.5
race 127.13.8.1 127.13.8.4 127.13.8.5 "ssh -J -L" "socat chain"

echo "== relay forwarding: overlay datagrams of 1,200 bytes through a relay, ${duration} s each"
# The same two ends (examples/overlay_load: a node sending to a sink node's port as fast as it
# takes datagrams, and the sink) twice, blocked from each other: once through a hopwise relay
# (in a network of its own, so the route is through it), once through the raw forwarder, which
# carries the same encrypted datagrams between them as if they were one direct link.
address+=([relay]=127.13.0.6 [sink]=127.13.0.7 [sender]=127.13.0.8
    [raw]=127.13.0.9 [raw-sink]=127.13.0.10 [raw-sender]=127.13.0.11)
for pair in "sender sink" "raw-sender raw-sink"; do
    read -r one other <<<"$pair"
    for way in "$one $other" "$other $one"; do
        read -r from to <<<"$way"
        nft add rule inet "$table" output ip saddr "${address[$from]}" ip daddr "${address[$to]}" drop
    done
done
start_sink() { # network-key sink [node options]
    background "$overlay_load" sink --network-key-file "$1" --listen "${address[$2]}:4000" \
        --api "$(api "$2")" --alias "load-$2" "${@:3}" >"$work/$2.out" 2>"$work/$2.log"
}
send_load() { # network-key sender sink seed
    "$overlay_load" send "load-$3" --seconds "$duration" --size 1113 --network-key-file "$1" \
        --listen "${address[$2]}:4000" --api "$(api "$2")" --seed "$4" \
        >"$work/$2.out" 2>"$work/$2.log"
}
"$hopwise" keygen --network --out "$work/load.key" >/dev/null
"$hopwise" keygen --network --out "$work/raw.key" >/dev/null
background "$hopwise" node --network-key-file "$work/load.key" --listen "${address[relay]}:4000" \
    --api "$(api relay)" >"$work/relay.log" 2>&1
relay_pid=$!
sleep 0.3
start_sink "$work/load.key" sink --seed "${address[relay]}:4000"
background "$raw_forwarder" "${address[raw]}:4000" "${address[raw-sink]}:4000" >"$work/raw.out"
raw_pid=$!
start_sink "$work/raw.key" raw-sink
sleep 0.5
relayed() {
    hw relay status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["data_relayed"])'
}
forwarded() { # the raw forwarder's last report
    tail -n 1 "$work/raw.out" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read() or "{\"forwarded\": 0}")["forwarded"])'
}
# One run through a middle: "datagrams it forwarded, its CPU seconds, payload Gbit/s the sink got".
through() { # relay|raw
    local count=relayed pid=$relay_pid key=$work/load.key sender=sender sink=sink
    local seed=${address[relay]}:4000
    if [[ $1 == raw ]]; then
        count=forwarded pid=$raw_pid key=$work/raw.key sender=raw-sender sink=raw-sink
        seed=${address[raw]}:4000
    fi
    local n0 n1 c0 c1
    n0=$($count) c0=$(cpu_seconds "$pid")
    send_load "$key" "$sender" "$sink" "$seed"
    c1=$(cpu_seconds "$pid")
    sleep 1.5 # a second without datagrams ends the sink's run; the forwarder reports each second
    n1=$($count)
    python3 -c 'import json,sys; run = json.loads(open(sys.argv[4]).read().split()[-1])
print(int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]), run["bytes"] * 8 / max(run["seconds"], 1e-9) / 1e9)' \
        "$((n1 - n0))" "$c0" "$c1" "$work/$sink.out"
}
results=()
for _ in $(seq "$rounds"); do
    results+=("$(through relay) $(through raw)")
done
python3 - "$duration" "${results[@]}" <<'EOF'
import statistics, sys
duration = float(sys.argv[1])
rounds = [tuple(map(float, r.split())) for r in sys.argv[2:]]
size = 1200  # 1,113 payload bytes, 62 of end-to-end session and overlay header, 25 hop by hop
def figures(datagrams, cpu, delivered):
    gbit = datagrams * size * 8 / 1e9
    return gbit / duration, gbit / max(cpu, 1e-9), delivered
relay = [figures(*r[:3]) for r in rounds]
raw = [figures(*r[3:]) for r in rounds]
median = lambda runs, i: statistics.median(run[i] for run in runs)
for name, runs in (("hopwise relay", relay), ("raw forwarder", raw)):
    print(f"{name}: {median(runs, 0):.3f} Gbit/s through it, {median(runs, 1):.3f} Gbit/s per "
          f"core; the sink got {median(runs, 2):.3f} Gbit/s of payload (medians of {len(runs)})")
for label, i in (("through the middle", 0), ("per core", 1), ("delivered", 2)):
    ratios = [h[i] / r[i] for h, r in zip(relay, raw)]
    print(f"ratio hopwise / raw, {label}: {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
EOF
