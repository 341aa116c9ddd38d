#!/usr/bin/env bash
# scripts/test-suites.sh — runs as the unprivileged server user, in a tree it
# may write to. Starts one scratch cluster for pg_regress, isolation and
# pgTAP; the TAP tests start their own clusters and peers; then the
# libFuzzer harnesses (fuzz/run.sh): over their corpus only, or, in
# sanitizer mode, fuzzing each for ENVOISMS_FUZZ_SECONDS (default 60).
# ENVOISMS_TEST_ONLY=regress|isolation|pgtap|tap|fuzz (comma separated)
# narrows it; ENVOISMS_TEST_PORT moves the scratch cluster off 54329.
#
# ENVOISMS_SANITIZE=1 (the build is ASan + UBSan, scripts/test.sh): every
# server started here or by the TAP tests (through pg_ctl) preloads the ASan
# runtime, sanitizer reports go to files under the scratch directory, and
# any such file fails the run as "sanitizer reports".
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ENVOISMS_ROOT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

only=${ENVOISMS_TEST_ONLY:-regress,isolation,pgtap,tap,fuzz}
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

# ---- sanitizer mode: postgres is not instrumented, so it preloads the ASan
# runtime (and fuzz/asan_preload.c, without which it hangs at start); a pg_ctl
# first in PATH does it for every cluster, PostgreSQL::Test::Cluster's too.
# ASan's and UBSan's reports go to files; detect_leaks=0 because postgres
# leaves its memory to process exit by design.
sanitize=${ENVOISMS_SANITIZE:-0}
if [ "$sanitize" = 1 ]; then
    san=$tmp/sanitizer
    mkdir -p "$san/bin" "$san/reports"
    gcc -shared -fPIC -O2 -o "$san/asan_preload.so" fuzz/asan_preload.c
    preload="$(gcc -print-file-name=libasan.so) $san/asan_preload.so"
    [ -f "${preload%% *}" ] || die "the ASan runtime of gcc is missing (libasan8)"
    for tool in pg_ctl postgres; do
        printf '#!/bin/sh\nLD_PRELOAD="%s" exec %s/%s "$@"\n' "$preload" "$PGBIN" "$tool" > "$san/bin/$tool"
        chmod +x "$san/bin/$tool"
    done
    export PATH="$san/bin:$PATH"
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:disable_coredump=1:log_path=$san/reports/asan"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$san/reports/ubsan"
fi

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

# ---- libFuzzer harnesses: one result per harness
if want fuzz; then
    if [ "$sanitize" = 1 ]; then
        say "fuzzing each harness for ${ENVOISMS_FUZZ_SECONDS:-60} s"
        fuzz_args=("${ENVOISMS_FUZZ_SECONDS:-60}")
    else
        say "fuzz harnesses over their corpus (regression inputs)"
        fuzz_args=(--regress)
    fi
    if ! command -v clang >/dev/null; then
        record "fuzz (clang is missing: run scripts/deps.sh)" 1
    else
        # the harnesses bring their own sanitizer runtime and options
        out=$tmp/fuzz.out
        fuzz_path=$PATH
        [ "$sanitize" = 1 ] && fuzz_path=${PATH#"$san/bin:"}
        env -u ASAN_OPTIONS -u UBSAN_OPTIONS PATH="$fuzz_path" FUZZ_WORK="$tmp/fuzz" \
            bash fuzz/run.sh "${fuzz_args[@]}" 2>&1 | tee "$out" || true
        n=0
        while read -r name status; do
            record "fuzz/$name" "$([ "$status" = ok ] && echo 0 || echo 1)"
            n=$((n + 1))
        done < <(sed -nE 's/^fuzz ([a-z0-9_]+): (ok|FAILED) .*/\1 \2/p' "$out")
        [ "$n" -gt 0 ] || record "fuzz (fuzz/run.sh ran no harness)" 1
    fi
fi

if [ "$sanitize" = 1 ]; then
    reports=("$san"/reports/*)
    if [ -e "${reports[0]}" ]; then
        record "sanitizer reports" 1
        for r in "${reports[@]}"; do echo "---- $r"; head -80 "$r"; done
    else
        record "sanitizer reports (none)" 0
    fi
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
