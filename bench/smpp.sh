#!/usr/bin/env bash
# bench/smpp.sh — submit_sm per second through the SMPP bind worker to the
# local SMSC simulator (test/peers/smsc.pl) with window 1, 10 and 50, beside
# the simulator's own ceiling measured with a direct Net::SMPP client (window
# 50) in the same run. Not a test: it prints a table.
#
#   bench/smpp.sh [messages per window, default 3000]
#
# Starts a scratch cluster (PostgreSQL 15 defaults, fsync on) and the
# simulator (receipts off, no PDU recording) as the server user; the
# extension must be installed (make install). For each window the bind is
# restarted with it, then the messages are queued in one transaction (all due
# at its commit) and the rate is the count over the span between the first
# and the last sent_at. (Queueing them while the carrier is disabled would
# measure something else: the dispatcher parks unroutable messages 30 s.) BENCH_CONF adds
# postgresql.conf lines (e.g. "envoisms.dispatch_workers = 0").
set -euo pipefail

N=${1:-3000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USER_NAME=${ENVOISMS_USER:-envoisms}
BINDIR=$(pg_config --bindir)
if [ "$(id -un)" != "$USER_NAME" ] && [ "$(id -u)" -eq 0 ]; then
    exec runuser -u "$USER_NAME" -- env PATH="$BINDIR:$PATH" bash "$0" "$@"
fi
export PATH="$BINDIR:$PATH"
ulimit -n 65536 2>/dev/null || true

tmp=$(mktemp -d /tmp/envoisms-bench-smpp.XXXXXX)
pgport=$((20000 + RANDOM % 10000))
smport=$((pgport + 1))
smpid=
cleanup() {
    [ -n "$smpid" ] && kill "$smpid" 2>/dev/null && wait "$smpid" 2>/dev/null || true
    pg_ctl -D "$tmp/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

initdb -D "$tmp/data" -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >> "$tmp/data/postgresql.conf" <<EOF
port = $pgport
listen_addresses = ''
unix_socket_directories = '$tmp'
shared_preload_libraries = 'envoisms'
envoisms.database = 'envoisms'
envoisms.smpp_supervisor_naptime = '200ms'
${BENCH_CONF:-}
EOF
pg_ctl -D "$tmp/data" -l "$tmp/server.log" -w start >/dev/null
psql() { command psql -h "$tmp" -p "$pgport" -d envoisms -qXAt -v ON_ERROR_STOP=1 "$@"; }
createdb -h "$tmp" -p "$pgport" envoisms
psql -c 'CREATE EXTENSION envoisms'

perl "$ROOT/test/peers/smsc.pl" --port "$smport" --receipts none >"$tmp/smsc.log" 2>&1 &
smpid=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$smport") 2>/dev/null && break
    sleep 0.1
done

account=$(psql -c "SELECT envoisms.account_create('bench', 1000000)")
psql -c "INSERT INTO envoisms.carriers (carrier_id, kind, enabled, config)
         VALUES ('bench', 'smpp', true, '{\"host\": \"127.0.0.1\", \"port\": $smport, \"system_id\": \"bench\"}');
         INSERT INTO envoisms.routes (channel, prefix, carrier_id) VALUES ('sms', '', 'bench');"

# The simulator's ceiling: a direct Net::SMPP client, window 50.
direct=$(perl -MNet::SMPP -MTime::HiRes=time -e '
    my ($port, $n, $window) = @ARGV;
    my $c = Net::SMPP->new_transceiver("127.0.0.1", port => $port, system_id => "direct",
                                       smpp_version => 0x34) or die "bind: $!";
    my ($sent, $acked, $t0) = (0, 0, time);
    while ($acked < $n) {
        while ($sent < $n && $sent - $acked < $window) {
            $c->submit_sm(destination_addr => "212600000000", short_message => "bench", async => 1);
            $sent++;
        }
        my $pdu = $c->read_pdu() or die "read: $!";
        $acked++ if $pdu->{cmd} == 0x80000004;
    }
    printf "%.0f", $n / (time - $t0);
    $c->unbind();' "$smport" "$N" 50)

run_window() {    # run_window WINDOW -> submit_sm/s through the worker
    local w=$1 rate old
    old=$(psql -c "SELECT coalesce(max(pid), 0) FROM envoisms.smpp_binds()")
    psql -c "UPDATE envoisms.carriers SET enabled = true,
                    config = config || jsonb_build_object('window', $w) WHERE carrier_id = 'bench'"
    # the bind restarts with the new window: wait for the new one to be bound
    for _ in $(seq 300); do
        [ "$(psql -c "SELECT count(*) FROM envoisms.smpp_binds() WHERE state = 'bound' AND pid <> $old")" = 1 ] && break
        sleep 0.1
    done
    # one transaction: every message becomes due at once, at its commit
    psql -c "SELECT count(*) FROM (SELECT envoisms.message_send('$account', '+2126' || lpad(i::text, 8, '0'), 'bench $w')
                                      FROM generate_series(1, $N) i) s" >/dev/null
    for _ in $(seq 1200); do
        [ "$(psql -c "SELECT count(*) FROM envoisms.messages WHERE status = 'queued'")" = 0 ] && break
        sleep 0.1
    done
    rate=$(psql -c "SELECT round(count(*) / greatest(extract(epoch FROM max(sent_at) - min(sent_at)), 0.001))
                      FROM envoisms.messages WHERE status = 'sent' AND body = 'bench $w'")
    echo "$rate"
}

r1=$(run_window 1)
r10=$(run_window 10)
r50=$(run_window 50)

pct() { awk -v a="$1" -v b="$direct" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }
echo "SMPP submit_sm/s, $N single-segment messages per run ($(nproc) cores, fsync on)"
printf '%-44s %10s %8s\n' 'path' 'submit/s' 'vs direct'
printf '%-44s %10s %8s\n' 'direct Net::SMPP client -> simulator (w=50)' "$direct" '100%'
printf '%-44s %10s %8s\n' 'envoisms bind worker, window 1' "$r1" "$(pct "$r1")"
printf '%-44s %10s %8s\n' 'envoisms bind worker, window 10' "$r10" "$(pct "$r10")"
printf '%-44s %10s %8s\n' 'envoisms bind worker, window 50' "$r50" "$(pct "$r50")"
psql -c "SELECT 'bind counters: submitted=' || submitted || ' accepted=' || accepted || ' timeouts=' || timeouts
           FROM envoisms.smpp_binds() WHERE carrier_id = 'bench'"
