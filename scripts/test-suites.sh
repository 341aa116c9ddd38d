#!/usr/bin/env bash
# scripts/test-suites.sh — runs as the unprivileged server user, in a tree it
# may write to. Starts one scratch cluster for pg_regress, isolation and
# pgTAP; the TAP tests start their own clusters and peers.
# ENVOISMS_TEST_ONLY=regress|isolation|pgtap|tap (comma separated) narrows it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ENVOISMS_ROOT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

only=${ENVOISMS_TEST_ONLY:-regress,isolation,pgtap,tap}
want() { [[ ",$only," == *",$1,"* ]]; }

passed=0
failed=0
failures=()
record() {   # record NAME STATUS
    if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$1"); fi
}

tmp=$(mktemp -d /tmp/envoisms-suites.XXXXXX)
export PGHOST=$tmp PGPORT=${ENVOISMS_TEST_PORT:-54329} PGUSER=$(id -un)
cleanup() { pg_ctl -D "$tmp/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT

if want regress || want isolation || want pgtap; then
    initdb -D "$tmp/data" -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    {
        server_settings contrib_regression
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$tmp'"
        echo "port = $PGPORT"
        echo "fsync = off"
        echo "max_prepared_transactions = 10"
        echo "envoisms.webhook_allow_private = on"
    } >> "$tmp/data/postgresql.conf"
    pg_ctl -D "$tmp/data" -l "$tmp/server.log" -w start >/dev/null
fi

# pg_regress and isolation: one result per test, read from pg_regress' lines;
# a run that fails without naming a failed test (a missing expected file, a
# crash, a spec that does not parse) is a failure of its own.
run_pg_regress() {   # run_pg_regress KIND make-args...
    local kind=$1; shift
    local out="$tmp/$kind.out" rc=0 failed_before=$failed
    make -s installcheck PG_CONFIG="$PG_CONFIG" "$@" > "$out" 2>&1 || rc=$?
    cat "$out"
    while read -r name status; do
        record "$kind/$name" "$status"
    done < <(sed -nE 's/^(test|ok|not ok) +[0-9]* *-? *([a-z0-9_]+) +\.\.\. +(ok|FAILED|failed).*/\2 \3/p; s/^ +([a-z0-9_]+) +\.\.\. +(ok|FAILED|failed).*/\1 \2/p' "$out" |
             awk '{ print $1, ($2 == "ok") ? 0 : 1 }')
    if [ "$rc" -ne 0 ] && [ "$failed" -eq "$failed_before" ]; then
        record "$kind (make installcheck exited $rc)" 1
    fi
}

if want regress && ls sql/*.sql >/dev/null 2>&1; then
    say "pg_regress suites"
    run_pg_regress regress ISOLATION=
fi
if want isolation && ls test/isolation/specs/*.spec >/dev/null 2>&1; then
    say "isolation specs"
    run_pg_regress isolation REGRESS=
fi

if want pgtap && ls test/pgtap/*.sql >/dev/null 2>&1; then
    say "pgTAP suites"
    createdb envoisms_pgtap
    psql -qX -d envoisms_pgtap -c 'CREATE EXTENSION pgtap; CREATE EXTENSION envoisms;' >/dev/null
    for f in test/pgtap/*.sql; do
        if pg_prove -d envoisms_pgtap "$f"; then record "pgtap/$(basename "$f")" 0; else record "pgtap/$(basename "$f")" 1; fi
    done
fi

if [ -d "$tmp/data" ]; then pg_ctl -D "$tmp/data" -m fast stop >/dev/null; fi

if want tap && ls test/tap/*.pl >/dev/null 2>&1; then
    say "TAP suites (real clusters, real peers)"
    export PERL5LIB="$ENVOISMS_ROOT/test/tap/lib:$($PG_CONFIG --pgxs | xargs dirname | xargs dirname)/test/perl${PERL5LIB:+:$PERL5LIB}"
    export PG_REGRESS="$($PG_CONFIG --pgxs | xargs dirname | xargs dirname)/test/regress/pg_regress"
    export TESTDIR="$tmp/tap" ENVOISMS_ROOT
    mkdir -p "$TESTDIR"
    for f in test/tap/${ENVOISMS_TAP:-*}.pl; do
        if prove -v "$f"; then record "tap/$(basename "$f")" 0; else record "tap/$(basename "$f")" 1; fi
    done
fi

echo
if [ ${#failures[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${failures[@]}"
    for d in regression.diffs test/isolation/results/regression.diffs; do
        [ -f "$d" ] && { echo "---- $d"; head -200 "$d"; }
    done
fi
echo "test: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
