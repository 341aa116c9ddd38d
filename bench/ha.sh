#!/usr/bin/env bash
# bench/ha.sh — what the HA profile costs a send, all in this one run: the
# profile of scripts/run-ha.sh (monitor, primary, synchronous standby) in a
# scratch directory, and four gateways on it, sending POST /v1/messages:
#
#   sync  token     the profile as it runs: commits wait for the standby,
#                   every write request's reply recorded under its token
#   sync  plain     --recover-wait 0: no request token
#   local token     synchronous_commit = local for the gateway's sessions
#                   (commits wait for the local flush only)
#   local plain
#
# 32 connections each (wrk), the demo sandbox key, interleaved rounds
# (BENCH_ROUNDS, default 3) so that a slow minute of the machine hits all
# four alike; each figure is the median of its rounds. Prints requests/s,
# p99 and the ratios token/plain and sync/local.
# Usage: bench/ha.sh [seconds per run, default 10]
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

SECONDS_PER_RUN=${1:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENTS=32
BASE=${ENVOISMS_BENCH_PGPORT:-55495}
HTTP_BASE=${ENVOISMS_BENCH_HTTP_PORT:-18095}
GATEWAY=${ENVOISMS_GATEWAY:-$ENVOISMS_ROOT/src/gateway/envoisms-gateway}
[ -x "$GATEWAY" ] || GATEWAY=$($PG_CONFIG --bindir)/envoisms-gateway
command -v wrk >/dev/null || die "wrk is missing (apt-get install wrk)"
ensure_server_user

dir=$(mktemp -d /tmp/envoisms-bench-ha.XXXXXX)
chown "$ENVOISMS_USER" "$dir"
export ENVOISMS_HA_DIR=$dir/ha ENVOISMS_HA_PORT=$BASE ENVOISMS_HA_GATEWAY=0 ENVOISMS_HA_NO_BUILD=1
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    "$ENVOISMS_ROOT/scripts/run-ha.sh" --stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

say "the HA profile in $dir (ports $BASE-$((BASE + 2)))"
key=$("$ENVOISMS_ROOT/scripts/run-ha.sh" | sed -n 's/^key: //p')
[ -n "$key" ] || die "run-ha.sh gave no key"
db="host=127.0.0.1,127.0.0.1 port=$((BASE + 1)),$((BASE + 2)) dbname=envoisms user=$ENVOISMS_USER target_session_attrs=read-write"

configs=(sync-token sync-plain local-token local-plain)
declare -A port
i=0
for c in "${configs[@]}"; do
    port[$c]=$((HTTP_BASE + i))
    i=$((i + 1))
    args=()
    case $c in *plain) args+=(--recover-wait 0) ;; esac
    conninfo=$db
    case $c in local*) conninfo="$db options='-c synchronous_commit=local'" ;; esac
    as_server_user "$GATEWAY" --listen "127.0.0.1:${port[$c]}" --db "$conninfo" "${args[@]}" \
        > "$dir/gateway-$c.log" 2>&1 &
    pids+=($!)
done
for c in "${configs[@]}"; do
    for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:${port[$c]}/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
done

cat > "$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"to": "+212612345678", "message": "Votre code est 849204"}'
wrk.headers["Authorization"] = "Bearer $key"
wrk.headers["Content-Type"] = "application/json"
LUA

# wrk_run NAME PORT: prints "rps p99_ms non2xx"
wrk_run() {
    local name=$1 p=$2
    wrk -t2 -c"$CLIENTS" -d"${SECONDS_PER_RUN}s" --latency -s "$dir/post.lua" "http://127.0.0.1:$p/v1/messages" \
        > "$dir/$name.out" 2>&1 || { cat "$dir/$name.out"; die "wrk $name failed"; }
    local rps p99 bad
    rps=$(sed -nE 's/^Requests\/sec: *([0-9.]+).*/\1/p' "$dir/$name.out")
    p99=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } printf "%.2f", v }' "$dir/$name.out")
    bad=$(sed -nE 's/^ *Non-2xx or 3xx responses: *([0-9]+).*/\1/p' "$dir/$name.out")
    echo "$rps $p99 ${bad:-0}"
}

for r in $(seq 1 "$ROUNDS"); do
    say "round $r/$ROUNDS: ${configs[*]} (${SECONDS_PER_RUN}s each)"
    for c in "${configs[@]}"; do
        read -r rps p99 bad < <(wrk_run "$c-$r" "${port[$c]}")
        [ "$bad" = 0 ] || die "$c: $bad requests were not 2xx (see $dir/$c-$r.out)"
        echo "$rps $p99" >> "$dir/$c.rounds"
        printf '  %-12s %8.0f req/s  p99 %7.2f ms\n' "$c" "$rps" "$p99"
    done
done

median() { sort -n -k1,1 "$1" | awk '{ v[NR] = $0 } END { print v[int((NR + 1) / 2)] }'; }
declare -A rps p99
for c in "${configs[@]}"; do read -r rps[$c] p99[$c] < <(median "$dir/$c.rounds"); done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo
echo "POST /v1/messages through the gateway, $CLIENTS connections, median of $ROUNDS rounds:"
for c in "${configs[@]}"; do printf '  %-12s %8.0f req/s  p99 %7.2f ms\n' "$c" "${rps[$c]}" "${p99[$c]}"; done
echo "  request token, synchronous standby : token/plain = $(ratio "${rps[sync-token]}" "${rps[sync-plain]}")"
echo "  request token, local commit        : token/plain = $(ratio "${rps[local-token]}" "${rps[local-plain]}")"
echo "  synchronous standby, with token    : sync/local  = $(ratio "${rps[sync-token]}" "${rps[local-token]}")"
echo "  synchronous standby, without token : sync/local  = $(ratio "${rps[sync-plain]}" "${rps[local-plain]}")"
