#!/usr/bin/env bash
# A multi-node Ray cluster on this machine: one head node and N worker nodes on 127.0.0.1.
#
#   cluster/local-cluster.sh start  [--workers N] [--dir DIR] [--head-cpus C] [--head-gpus G]
#                                   [--worker-cpus C] [--worker-gpus G] [--object-store-mb M]
#                                   [--timeout S]
#   cluster/local-cluster.sh status [--dir DIR]
#   cluster/local-cluster.sh stop   [--dir DIR] [--timeout S]
#
# DIR defaults to $DCN_RAY_CLUSTER_DIR, else /tmp/dcn-ray-cluster-$UID; one cluster per DIR.
#
# Every node is one `ray start --block` process in its own session (setsid); its pid is recorded
# in DIR/pids. `stop` sends SIGTERM to exactly those pids (a `ray start --block` process tears down
# the Ray processes it started when terminated) and waits until nothing of those sessions is left.
# GPUs are logical: `--worker-gpus 1` lets Ray schedule GPU trials on a machine without a GPU.
#
# Token authentication is on: `start` writes a fresh token to DIR/auth_token and every node and
# client must see RAY_AUTH_MODE=token and the token. Clients: `source DIR/env.sh` first.
#
# Files in DIR: address, dashboard_url, pids ("name pid" lines), auth_token, env.sh, ray_temp_dir,
# logs/<node>.log (the output of each `ray start`).
set -euo pipefail

PYTHON=${PYTHON:-python3}
RAY=${RAY:-ray}

dir=${DCN_RAY_CLUSTER_DIR:-/tmp/dcn-ray-cluster-$(id -u)}
workers=2
head_cpus=1
head_gpus=0
worker_cpus=1
worker_gpus=1
object_store_mb=256
timeout_s=120

die() { echo "local-cluster.sh: $*" >&2; exit 2; }

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

is_int() { [[ $1 =~ ^[0-9]+$ ]]; }

# A `ray start` launcher we recorded is still alive (and the pid was not reused by something else).
launcher_alive() {
    local args
    args=$(ps -ww -o args= -p "$1" 2>/dev/null) || return 1
    [[ $args == *"ray start"* ]]
}

# Pids of the live Ray processes in the session of launcher pid $1 (the launcher and all it
# started; zombies, already dead, are left out).
session_pids() { ps -ww -eo pid=,sid=,stat=,args= | awk -v s="$1" '$2 == s && $3 !~ /^Z/ && /ray/ { print $1 }'; }

# Print N ports that are free on all interfaces right now (held open together so they differ).
free_ports() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Start one `ray start --block` in its own session; its pid goes to $pid_file.
launch() {
    local name=$1 pid_file=$2
    shift 2
    # From DIR, so that no node imports code from the caller's working directory. The subshell
    # execs, so nothing keeps this script's stdout open (a caller reading it would never see EOF).
    (
        cd "$dir" || exit 1
        exec setsid nohup bash -c 'echo $$ > "$0"; exec "$@"' "$pid_file" "$RAY" start "$@" \
            --disable-usage-stats --block >"$dir/logs/$name.log" 2>&1 </dev/null
    ) &
}

# Wait until node $1 logged that it started; fail with the end of its log if it exits or times out.
wait_started() {
    local name=$1 pid_file="$dir/.$1.pid" log="$dir/logs/$1.log" deadline=$((SECONDS + timeout_s))
    while ! grep -q "Ray runtime started" "$log" 2>/dev/null; do
        if [[ -s $pid_file ]] && ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
            tail -n 20 "$log" >&2
            echo "local-cluster.sh: node $name exited while starting (log: $log)" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "local-cluster.sh: node $name did not start within ${timeout_s}s (log: $log)" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "$name $(cat "$pid_file")" >>"$dir/pids"
    rm -f "$pid_file"
}

# `start` failed: stop every node launched so far (runs as the EXIT trap of `start`).
cleanup_failed_start() {
    local rc=$?
    ((rc != 0)) || return 0
    echo "local-cluster.sh: start failed; stopping the nodes it started" >&2
    cmd_stop >&2 || true
    exit "$rc"
}

cmd_start() {
    if [[ -s $dir/pids ]]; then
        local name pid
        while read -r name pid; do
            if launcher_alive "$pid"; then die "a cluster is already running from $dir ($name pid $pid); stop it first"; fi
        done <"$dir/pids"
    fi
    mkdir -p "$dir/logs"
    dir=$(cd "$dir" && pwd)
    rm -f "$dir/pids" "$dir/address" "$dir/dashboard_url" "$dir"/.*.pid
    trap cleanup_failed_start EXIT

    # Ray's unix socket paths must stay short (about 107 bytes): long DIRs get a temp dir in /tmp.
    local ray_tmp="$dir/ray"
    if ((${#ray_tmp} > 36)); then ray_tmp=$(mktemp -d /tmp/dcnray.XXXXXX); fi
    mkdir -p "$ray_tmp"
    echo "$ray_tmp" >"$dir/ray_temp_dir"

    (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$dir/auth_token")
    cat >"$dir/env.sh" <<EOF
# Source this file before talking to the local cluster (ray.init, dcn-ray sweep/submit, ray job ...).
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$dir/auth_token
EOF
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$dir/auth_token"
    unset RAY_ADDRESS RAY_AUTH_TOKEN
    # On SIGTERM a node waits for its running tasks up to this long (Ray's default: 30 s).
    export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-5}

    # Ports: GCS, dashboard, and one dashboard-agent port per node (Ray's default is one fixed port,
    # which several nodes on one machine cannot share).
    local ports gcs_port dash_port
    read -r -a ports <<<"$(free_ports $((workers + 4)))"
    gcs_port=${ports[0]}
    dash_port=${ports[1]}
    # Each node has its own temp dir, as on separate machines: nodes sharing one would share their
    # runtime_resources, and one node's runtime-env garbage collection would delete another's
    # unpacked working_dir (the cwd of a `dcn-ray submit` driver).
    local common=(--object-store-memory $((object_store_mb * 1024 * 1024)))
    local client=()
    # Ray Client (ray://) needs ray[client]; its default port 10001 would clash between clusters.
    if "$PYTHON" -c 'import grpc' 2>/dev/null; then client=(--ray-client-server-port "${ports[2]}"); fi

    launch head "$dir/.head.pid" --head --node-ip-address=127.0.0.1 --port="$gcs_port" \
        --num-cpus "$head_cpus" --num-gpus "$head_gpus" \
        --dashboard-host 127.0.0.1 --dashboard-port "$dash_port" \
        --dashboard-agent-listen-port "${ports[3]}" "${client[@]}" --temp-dir "$ray_tmp" "${common[@]}"
    wait_started head

    # One at a time, so each node's start is checked before the next.
    local i
    for ((i = 1; i <= workers; i++)); do
        launch "worker-$i" "$dir/.worker-$i.pid" --address "127.0.0.1:$gcs_port" \
            --node-ip-address=127.0.0.1 --num-cpus "$worker_cpus" --num-gpus "$worker_gpus" \
            --dashboard-agent-listen-port "${ports[$((i + 3))]}" --temp-dir "$ray_tmp/w$i" "${common[@]}"
        wait_started "worker-$i"
    done

    echo "127.0.0.1:$gcs_port" >"$dir/address"
    # The dashboard, and with it the Jobs API (`dcn-ray submit`), needs ray[default].
    if "$PYTHON" -c 'import ray.dashboard.optional_deps' 2>/dev/null; then
        echo "http://127.0.0.1:$dash_port" >"$dir/dashboard_url"
    else
        echo "local-cluster.sh: no dashboard or Jobs API: install ray[default] for \`dcn-ray submit\`" >&2
    fi
    trap - EXIT
    cmd_status
}

cmd_status() {
    [[ -s $dir/pids ]] || { echo "no local cluster running from $dir"; return 1; }
    local running=0 total=0 name pid
    while read -r name pid; do
        total=$((total + 1))
        if launcher_alive "$pid"; then
            running=$((running + 1))
            echo "node $name: running (pid $pid)"
        else
            echo "node $name: stopped (pid $pid)"
        fi
    done <"$dir/pids"
    echo "address:    $(cat "$dir/address" 2>/dev/null)"
    echo "dashboard:  $(cat "$dir/dashboard_url" 2>/dev/null || echo "none (needs ray[default])")"
    echo "ray logs:   $(cat "$dir/ray_temp_dir" 2>/dev/null)/session_latest/logs"
    echo "Before any client command, load the token:  source $dir/env.sh"
    echo "  dcn-ray sweep JOB.yaml --address $(cat "$dir/address" 2>/dev/null)"
    if [[ -s $dir/dashboard_url ]]; then
        echo "  dcn-ray submit JOB.yaml --address $(cat "$dir/dashboard_url")"
    fi
    ((running == total))
}

# SIGTERM the given launchers and wait until their sessions are empty. Leftovers (Ray agents can
# outlive their raylet) get SIGKILL 10 s after the last launcher exited, or at the timeout.
stop_nodes() {
    local pid left launchers deadline=$((SECONDS + timeout_s)) orphans_deadline=
    for pid; do if launcher_alive "$pid"; then kill -TERM "$pid"; fi; done
    while :; do
        left=() launchers=0
        for pid; do
            left+=($(session_pids "$pid"))
            if launcher_alive "$pid"; then launchers=$((launchers + 1)); fi
        done
        ((${#left[@]} == 0)) && return 0
        ((launchers > 0)) || orphans_deadline=${orphans_deadline:-$((SECONDS + 10))}
        if ((SECONDS >= deadline)) || { [[ -n $orphans_deadline ]] && ((SECONDS >= orphans_deadline)); }; then
            echo "local-cluster.sh: ${#left[@]} process(es) left; sending SIGKILL to ${left[*]}" >&2
            kill -KILL "${left[@]}" 2>/dev/null || true
            sleep 1
            return 0
        fi
        sleep 0.5
    done
}

cmd_stop() {
    # Nodes whose start was cut short still have their .NAME.pid file: stop them too.
    local f
    for f in "$dir"/.*.pid; do
        if [[ -s $f ]]; then echo "$(basename "$f" .pid | cut -c2-) $(cat "$f")" >>"$dir/pids"; fi
        rm -f "$f"
    done
    [[ -s $dir/pids ]] || { echo "no local cluster running from $dir"; return 0; }
    local names=() heads=() workers=() name pid
    while read -r name pid; do
        names+=("$name")
        if [[ $name == head ]]; then heads+=("$pid"); else workers+=("$pid"); fi
    done <"$dir/pids"
    # Workers first, while the head is still there to accept their drain requests.
    if ((${#workers[@]})); then stop_nodes "${workers[@]}"; fi
    if ((${#heads[@]})); then stop_nodes "${heads[@]}"; fi
    rm -f "$dir/pids" "$dir/address" "$dir/dashboard_url"
    echo "stopped ${#names[@]} node(s): ${names[*]}"
}

main() {
    local cmd=${1:-}
    [[ -n $cmd ]] || { usage >&2; exit 2; }
    shift
    while (($#)); do
        [[ $# -ge 2 ]] || die "missing value for option $1"
        case $1 in
        --workers) workers=$2 ;;
        --dir) dir=$2 ;;
        --head-cpus) head_cpus=$2 ;;
        --head-gpus) head_gpus=$2 ;;
        --worker-cpus) worker_cpus=$2 ;;
        --worker-gpus) worker_gpus=$2 ;;
        --object-store-mb) object_store_mb=$2 ;;
        --timeout) timeout_s=$2 ;;
        *) die "unknown option $1" ;;
        esac
        shift 2
    done
    local n
    for n in "$workers" "$head_cpus" "$head_gpus" "$worker_cpus" "$worker_gpus" "$object_store_mb" "$timeout_s"; do
        is_int "$n" || die "expected a whole number, got '$n'"
    done
    case $cmd in
    start) cmd_start ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
    -h | --help | help) usage ;;
    *) die "unknown command '$cmd' (expected start, stop or status)" ;;
    esac
}

main "$@"
