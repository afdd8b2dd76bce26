#!/usr/bin/env bash
# tern vs coturn vs a plain batched UDP forwarder, on loopback, in one run.
#
#   bash bench/compare.sh [--rounds 3] [--duration 10s] [--out DIR] [--quiet-wait 60]
#                         [--scenarios S1,S2,S3,S5] [--servers tern,coturn,forwarder] [--no-build]
#                         [--workers 1] [--tern-base BIN] [--coturn417 BIN]
#
# Servers: tern (target/release/tern); tern-base (another tern binary, --tern-base,
# e.g. one built from an earlier commit, for before/after rows); coturn (the
# turnserver on PATH: Debian's 4.6.1); coturn417 and coturn417-mux (coturn 4.17.1
# built by ../shared/peers/build-coturn.sh, --coturn417, default
# target/coturn-4.17.1/bin/turnserver: its default configuration, and its fastest,
# --multiplex-peer --udp-gso); forwarder (examples/forwarder.rs); tern-admin (tern
# with its admin API on, polled during each run as a dashboard does, status and the
# ten busiest allocations every second, while another client lists every allocation
# in a loop: the API's cost to the relay, against tern).
#
# Brings target/release/tern and the forwarder example up to date first
# (`cargo build --release --bins --examples`; --no-build skips that). Then
# starts the servers once, each with --workers workers / relay threads (default
# 1) and 2 MiB listen-socket buffers (coturn's built-in size), and runs the same
# `tern load` scenarios against each, interleaved (S1 tern, S1 coturn,
# S1 forwarder, S2 tern, ...) and repeated --rounds times, with --server-pid
# so every run reports packets (or allocations) per second of server CPU.
# Before each run it waits up to --quiet-wait seconds for the host to be idle
# (0 skips the wait), and it records the CPU time the host spent on anything
# but the server and the load generator during the run.
#
# Raw JSON reports, server logs and the exact commands go to --out (default:
# a new temporary directory); bench/summarize.py prints the table of medians
# and ratios at the end and can be run again on that directory. A run that
# fails or times out is recorded and left out of the medians: timing never
# fails the script. See BENCHMARKS.md.
set -euo pipefail

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; }

rounds=3
duration=10s
out=""
scenarios=S1,S2,S3,S5
servers=tern,coturn,forwarder
quiet_wait=60
build=yes
workers=1
tern_base=""
coturn417=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --workers) workers=$2; shift 2 ;;
        --tern-base) tern_base=$2; shift 2 ;;
        --coturn417) coturn417=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --scenarios) scenarios=$2; shift 2 ;;
        --servers) servers=$2; shift 2 ;;
        --quiet-wait) quiet_wait=$2; shift 2 ;;
        --no-build) build=no; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --rounds takes a positive number" >&2; exit 2; }
[[ $quiet_wait =~ ^[0-9]+$ ]] || { echo "compare.sh: --quiet-wait takes whole seconds" >&2; exit 2; }
[[ $workers =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --workers takes a positive number" >&2; exit 2; }

# The scenarios of issue 4, as `tern load` arguments.
scenario_args() {
    case $1 in
        S1) echo "--allocations 1 --window 32 --size 1200" ;;
        S2) echo "--allocations 64 --window 4 --size 100" ;;
        S3) echo "--allocations 1000 --rate 50 --size 100" ;;
        S5) echo "--mode alloc --concurrency 32" ;;
        *) return 1 ;;
    esac
}
for scenario in ${scenarios//,/ }; do
    scenario_args "$scenario" >/dev/null || { echo "compare.sh: unknown scenario $scenario (S1, S2, S3, S5)" >&2; exit 2; }
done
for name in ${servers//,/ }; do
    [[ $name =~ ^(tern|tern-base|tern-admin|coturn|coturn417|coturn417-mux|forwarder)$ ]] || {
        echo "compare.sh: unknown server $name (tern, tern-base, tern-admin, coturn, coturn417, coturn417-mux," \
            "forwarder)" >&2
        exit 2
    }
done

root=$(cd "$(dirname "$0")/.." && pwd)
if [[ $build == yes ]]; then
    (cd "$root" && cargo build --release --bins --examples --quiet)
fi
tern=$root/target/release/tern
forwarder=$root/target/release/examples/forwarder
for binary in "$tern" "$forwarder"; do
    [[ -x $binary ]] || { echo "compare.sh: $binary missing; run: cargo build --release --bins --examples" >&2; exit 1; }
done
if [[ ,$servers, == *,coturn,* ]] && ! command -v turnserver >/dev/null; then
    echo "compare.sh: turnserver (coturn) not found; install it or pass --servers tern,forwarder" >&2
    exit 1
fi
if [[ ,$servers, == *,tern-base,* ]] && [[ ! -x $tern_base ]]; then
    echo "compare.sh: tern-base needs --tern-base BIN, an executable tern" >&2
    exit 1
fi
coturn417=${coturn417:-$root/target/coturn-4.17.1/bin/turnserver}
if [[ ,$servers, == *,coturn417* ]] && [[ ! -x $coturn417 ]]; then
    echo "compare.sh: $coturn417 missing; run: bash ../shared/peers/build-coturn.sh (or pass --coturn417 BIN)" >&2
    exit 1
fi

# Whole seconds in a duration such as 10s, 500ms or 1m (rounded up).
seconds_of() {
    [[ $1 =~ ^([0-9]+)(ms|s|m)$ ]] || { echo "compare.sh: --duration takes e.g. 10s, 500ms or 1m" >&2; return 1; }
    case ${BASH_REMATCH[2]} in
        ms) echo $(((BASH_REMATCH[1] + 999) / 1000)) ;;
        s) echo "${BASH_REMATCH[1]}" ;;
        m) echo $((BASH_REMATCH[1] * 60)) ;;
    esac
}
# A run gets its duration plus a minute for setup, drain and teardown, then is killed.
duration_secs=$(seconds_of "$duration")
run_budget=$((duration_secs + 60))

out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/tern-compare.XXXXXX")}
mkdir -p "$out/runs" "$out/logs"
out=$(cd "$out" && pwd)

# ---------------------------------------------------------------------------
# Processes: every one started here is stopped by PID on exit.
# ---------------------------------------------------------------------------

pids=()
load_pid=""

alive() {
    local state
    state=$(sed -E 's/.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

stop() {
    local pid=$1
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            echo "compare.sh: PID $pid ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in $load_pid "${pids[@]}"; do
        stop "$pid"
    done
    load_pid=""
    pids=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, each usable for both UDP and TCP.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
wanted, held, ports = int(sys.argv[1]), [], []
for _ in range(100):
    if len(ports) == wanted:
        break
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        tcp.bind(("127.0.0.1", port))
    except OSError:
        udp.close()
        continue
    held += [udp, tcp]
    ports.append(port)
if len(ports) < wanted:
    sys.exit("no free ports")
print(*ports)
EOF
}

# Waits up to 10 s for PID to have a UDP socket bound to 127.0.0.1:PORT.
wait_listening() {
    local pid=$1 port=$2 name=$3 hex
    hex=$(printf '0100007F:%04X' "$port")
    for _ in $(seq 100); do
        alive "$pid" || { echo "compare.sh: $name exited at start; see $out/logs/$name.log" >&2; return 1; }
        awk -v local="$hex" '$2 == local { found = 1 } END { exit !found }' /proc/net/udp && return 0
        sleep 0.1
    done
    echo "compare.sh: $name is not listening on 127.0.0.1:$port after 10 s; see $out/logs/$name.log" >&2
    return 1
}

# Relay port ranges: disjoint, and below the ephemeral range the load
# generator's own sockets come from: 12000-31999, split between the servers.
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range
if ((ephemeral_low < 32000)); then
    echo "compare.sh: the ephemeral port range starts at $ephemeral_low; the relay ranges 12000-31999 need it above" >&2
    exit 1
fi
udp_buffer=$((2 * 1024 * 1024)) # coturn's fixed listen-socket buffer (UR_SERVER_SOCK_BUF_SIZE)
server_list=(${servers//,/ })
read -r -a ports <<<"$(free_ports $((${#server_list[@]} + 3)))"
peer_port=${ports[0]}
mux_peer_port=${ports[1]}
admin_port=${ports[$((${#server_list[@]} + 2))]}
admin_token=$out/logs/admin.token
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$admin_token"
range_size=$((20000 / ${#server_list[@]}))

declare -A server_pid server_addr
start_server() {
    local name=$1
    shift
    echo "$*" >>"$out/commands.txt"
    "$@" >"$out/logs/$name.log" 2>&1 &
    server_pid[$name]=$!
    pids+=("$!")
}

# coturn with the options both versions share; $1 is the binary, the rest
# is added.
start_coturn() {
    local name=$1 binary=$2 port=$3 low=$4 high=$5
    shift 5
    start_server "$name" "$binary" -c /dev/null -n --listening-ip 127.0.0.1 --listening-port "$port" \
        --relay-ip 127.0.0.1 --min-port "$low" --max-port "$high" --relay-threads "$workers" --lt-cred-mech \
        --user alice:pw --realm tern.test --allow-loopback-peers --no-cli --no-tls --no-dtls \
        --no-software-attribute --log-file stdout --simple-log --pidfile "$out/logs/$name.pid" "$@"
}

: >"$out/commands.txt"
for i in "${!server_list[@]}"; do
    name=${server_list[$i]}
    port=${ports[$((i + 2))]}
    low=$((12000 + i * range_size))
    high=$((low + range_size - 1))
    server_addr[$name]=127.0.0.1:$port
    case $name in
        tern | tern-base | tern-admin)
            binary=$tern
            [[ $name == tern-base ]] && binary=$tern_base
            admin=()
            [[ $name == tern-admin ]] && admin=(--admin-listen "127.0.0.1:$admin_port" --admin-token-file "$admin_token")
            start_server "$name" "$binary" serve --listen "127.0.0.1:$port" --workers "$workers" --user alice:pw \
                --realm tern.test --allow-peer 127.0.0.0/8 --user-quota 0 --relay-ports "$low-$high" \
                --udp-buffer "$udp_buffer" --rate-limit 0 "${admin[@]}"
            ;;
        coturn) start_coturn coturn turnserver "$port" "$low" "$high" ;;
        coturn417) start_coturn coturn417 "$coturn417" "$port" "$low" "$high" ;;
        coturn417-mux)
            start_coturn coturn417-mux "$coturn417" "$port" "$low" "$high" --multiplex-peer \
                --multiplex-peer-port "$mux_peer_port" --udp-gso
            ;;
        forwarder)
            start_server forwarder "$forwarder" --listen "127.0.0.1:$port" \
                --peer "127.0.0.1:$peer_port" --threads "$workers" --udp-buffer "$udp_buffer"
            ;;
    esac
done
# A server that does not come up is left out, and so is one that dies
# during a run: the others are still measured.
declare -A dead
for name in ${servers//,/ }; do
    wait_listening "${server_pid[$name]}" "${server_addr[$name]##*:}" "$name" || dead[$name]=1
done

# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

# Counters read around every run, so the summary can say what else the
# machine was doing: host-wide UDP buffer drops, and CPU seconds of the whole
# host, of the server, and of the load generator (this shell's reaped
# children).
clock_ticks=$(getconf CLK_TCK)
udp_errors() { awk '/^Udp:/ && $2 ~ /^[0-9]+$/ { print $6, $7 }' /proc/net/snmp; }
host_cpu() { awk -v hz="$clock_ticks" '/^cpu / { print ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat; }
process_cpu() { sed -E 's/.*\) //' "/proc/$1/stat" | awk -v hz="$clock_ticks" '{ print ($12 + $13) / hz }'; }
# `times` must run in this shell, not in a $(...) subshell, which has no
# reaped children: save_times writes it down, children_cpu reads it back.
save_times() { times >"$out/.times"; }
children_cpu() {
    awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } print s }' "$out/.times"
}
now() { date +%s.%N; }
difference() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a - b }'; }

# For tern-admin: for SECONDS, what a dashboard asks every second (status and
# the ten busiest allocations) and, from a second client, every allocation
# page after page, again and again. Stops by itself.
admin_poller() {
    python3 - "$admin_port" "$admin_token" "$1" <<'EOF'
import json, sys, threading, time, urllib.request
port, token_file, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
token = open(token_file).read().strip()
base, stop_at = f"http://127.0.0.1:{port}/api/v1", time.monotonic() + seconds
def get(path):
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)
def dashboard():
    while time.monotonic() < stop_at:
        get("/status"), get("/allocations?order=traffic&limit=10")
        time.sleep(1)
def lister():
    while time.monotonic() < stop_at:
        after = ""
        for _ in range(1000):
            page = get(f"/allocations?limit=1000{after}")
            if page["next"] is None:
                break
            after = f"&after={page['next']}"
threads = [threading.Thread(target=dashboard), threading.Thread(target=lister)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
EOF
}

# Waits up to --quiet-wait seconds for the host to fall idle (under 0.3 of a
# core busy over half a second), so that another workload is less likely to
# share the run. Returns 1 if it never did; the run goes ahead either way.
wait_quiet() {
    local before busy
    for _ in $(seq $((quiet_wait * 2))); do
        before=$(host_cpu)
        sleep 0.5
        busy=$(difference "$(host_cpu)" "$before")
        awk -v busy="$busy" 'BEGIN { exit !(busy < 0.15) }' && return 0
    done
    return 1
}

COTURN417=$coturn417 WORKERS=$workers python3 - "$out/meta.json" "$rounds" "$duration" "$scenarios" "$servers" "$root" <<'EOF'
import json, os, platform, subprocess, sys
path, rounds, duration, scenarios, servers, root = sys.argv[1:]
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({
    "rounds": int(rounds), "duration": duration, "scenarios": scenarios.split(","), "servers": servers.split(","),
    "commit": run("git", "-C", root, "describe", "--always", "--dirty"),
    "nproc": os.cpu_count(), "kernel": platform.release(), "cpu": model,
    "rmem_max": open("/proc/sys/net/core/rmem_max").read().strip(),
    "wmem_max": open("/proc/sys/net/core/wmem_max").read().strip(),
    "coturn": run("turnserver", "--version"),
    "coturn417": run(os.environ.get("COTURN417", "false"), "--version"),
    "workers": int(os.environ.get("WORKERS", "1")),
    "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
}, open(path, "w"), indent=2)
EOF

tab=$'\t'
columns=(scenario server round status report quiet wall_s host_cpu_s server_cpu_s client_cpu_s rcvbuf_errors
    sndbuf_errors)
(IFS=$tab; echo "${columns[*]}") >"$out/runs.tsv"
echo "compare.sh: results in $out (servers: $servers; $rounds round(s) of $duration)"
for round in $(seq "$rounds"); do
    for scenario in ${scenarios//,/ }; do
        for name in ${servers//,/ }; do
            [[ $scenario == S5 && $name == forwarder ]] && continue
            [[ -n ${dead[$name]:-} ]] && continue
            read -r -a load <<<"$(scenario_args "$scenario")"
            if [[ $name == forwarder ]]; then
                load+=(--raw --peer-listen "127.0.0.1:$peer_port")
            fi
            report=runs/$scenario-$name-r$round.json
            command=("$tern" load "${server_addr[$name]}" -u alice -p pw "${load[@]}" --duration "$duration"
                --server-pid "${server_pid[$name]}" --json)
            echo "${command[*]}" >>"$out/commands.txt"
            if ((quiet_wait == 0)); then
                quiet=unchecked
            elif wait_quiet; then
                quiet=yes
            else
                quiet=no
            fi
            read -r rcv_before snd_before <<<"$(udp_errors)"
            host_before=$(host_cpu)
            server_before=$(process_cpu "${server_pid[$name]}")
            save_times
            client_before=$(children_cpu)
            wall_before=$(now)
            poller_pid=""
            if [[ $name == tern-admin ]]; then
                admin_poller "$duration_secs" >"$out/logs/poller-$scenario-r$round.log" 2>&1 &
                poller_pid=$!
                pids+=("$poller_pid")
            fi
            timeout -k 5 "$run_budget" "${command[@]}" >"$out/$report" 2>"$out/${report%.json}.err" &
            load_pid=$!
            status=0
            wait "$load_pid" || status=$?
            load_pid=""
            if [[ -n $poller_pid ]]; then
                stop "$poller_pid"
            fi
            wall_after=$(now)
            save_times
            client_after=$(children_cpu)
            server_after=$(process_cpu "${server_pid[$name]}" 2>/dev/null || echo "$server_before")
            host_after=$(host_cpu)
            read -r rcv_after snd_after <<<"$(udp_errors)"
            row=("$scenario" "$name" "$round" "$status" "$report" "$quiet" "$(difference "$wall_after" "$wall_before")"
                "$(difference "$host_after" "$host_before")" "$(difference "$server_after" "$server_before")"
                "$(difference "$client_after" "$client_before")" $((rcv_after - rcv_before)) $((snd_after - snd_before)))
            (IFS=$tab; echo "${row[*]}") >>"$out/runs.tsv"
            result=$(python3 "$root/bench/summarize.py" --one "$out/$report" 2>/dev/null || echo "no report")
            echo "  round $round $scenario $name: $result (exit $status; host idle before: $quiet)"
            if ! alive "${server_pid[$name]}"; then
                echo "compare.sh: $name died during $scenario round $round; see $out/logs/$name.log" >&2
                dead[$name]=1
            fi
        done
    done
done

cleanup
python3 "$root/bench/summarize.py" "$out"
echo "compare.sh: raw JSON reports, server logs and commands are in $out"
