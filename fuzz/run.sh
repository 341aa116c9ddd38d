#!/usr/bin/env bash
# fuzz/run.sh [SECONDS | --regress] — builds every libFuzzer harness and runs
# each one: for SECONDS (default 60) of new fuzzing, or with --regress over
# its corpus only (fuzz/corpus/<harness>, every past crash included), which
# takes a few seconds. Prints one line per harness,
#   fuzz <harness>: ok|FAILED  <executions> execs in <s> s, <n> corpus inputs
# and exits non-zero when any failed. A crash's input is copied into
# fuzz/corpus/<harness>/ (as crash-<sha1>) so that --regress keeps checking
# it; its report is printed.
#
# Environment: FUZZ_TARGETS="json_body phone ..." narrows the run;
# FUZZ_WORK=dir keeps the work files (new inputs, logs) there;
# FUZZ_MERGE=1 merges the inputs that found new coverage into fuzz/corpus.
#
# The backend harnesses run inside a single-user postgres (never as root:
# as the server user when started by root), with the ASan runtime preloaded;
# see backend/driver.c.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

FUZZ=$ENVOISMS_ROOT/fuzz
BUILD=$FUZZ/build
BACKEND_TARGETS=(json_body phone segments smpp_pdu smpp_receipt request_text)
GATEWAY_TARGETS=(gateway_clientip gateway_head gateway_text gateway_static)

mode=fuzz
seconds=60
case "${1:-}" in
    --regress) mode=regress ;;
    '') ;;
    *[!0-9]*) die "usage: fuzz/run.sh [SECONDS | --regress]" ;;
    *) seconds=$1 ;;
esac
targets=(${FUZZ_TARGETS:-${BACKEND_TARGETS[*]} ${GATEWAY_TARGETS[*]}})

say "building the fuzz harnesses"
make -C "$FUZZ" -s -j"$(nproc)" PG_CONFIG="$PG_CONFIG" >/dev/null

work=${FUZZ_WORK:-$(mktemp -d /tmp/envoisms-fuzz.XXXXXX)}
mkdir -p "$work"
[ -n "${FUZZ_WORK:-}" ] || trap 'as_root rm -rf "$work" 2>/dev/null || rm -rf "$work"' EXIT
if [ "$(id -u)" -eq 0 ]; then chown "$ENVOISMS_USER:" "$work"; fi
run_in_work() { if [ "$(id -u)" -eq 0 ]; then as_server_user "$@"; else "$@"; fi; }

asan_runtime=$(clang -print-file-name=libclang_rt.asan-x86_64.so)
export ASAN_SYMBOLIZER_PATH
ASAN_SYMBOLIZER_PATH=$(dirname "$(readlink -f "$(command -v clang)")")/llvm-symbolizer
# Sanitizer findings abort, so that libFuzzer records the input. Leaks are
# only looked for in the gateway: postgres frees at exit by design.
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
gateway_asan=abort_on_error=1:detect_leaks=1:symbolize=1
backend_asan=abort_on_error=1:detect_leaks=0:symbolize=1:handle_segv=1

backend_ready=
backend_setup() {
    [ -n "$backend_ready" ] && return
    run_in_work initdb -D "$work/data" -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    # (declaring a C function loads its library, hence the preload)
    run_in_work env LD_PRELOAD="$asan_runtime $BUILD/asan_preload.so" ASAN_OPTIONS=$backend_asan \
        postgres --single -j -D "$work/data" postgres < "$BUILD/envoisms_fuzz.sql" > "$work/setup.log" 2>&1 ||
        { cat "$work/setup.log"; die "declaring the fuzz functions failed"; }
    grep -q ERROR "$work/setup.log" && { cat "$work/setup.log"; die "declaring the fuzz functions failed"; }
    backend_ready=1
}

failed=0
for t in "${targets[@]}"; do
    corpus=$FUZZ/corpus/$t
    mkdir -p "$corpus"
    run_in_work mkdir -p "$work/new/$t" "$work/artifacts/$t"
    args=(-print_final_stats=1 -timeout=25 -rss_limit_mb=4096 "-artifact_prefix=$work/artifacts/$t/")
    [ -f "$FUZZ/dict/$t.dict" ] && args+=("-dict=$FUZZ/dict/$t.dict")
    if [ "$mode" = regress ]; then
        args+=(-runs=0)
    else
        args+=("-max_total_time=$seconds")
    fi
    args+=("$work/new/$t" "$corpus")
    log=$work/$t.log
    rc=0
    start=$(date +%s)
    if [[ " ${GATEWAY_TARGETS[*]} " == *" $t "* ]]; then
        run_in_work env ASAN_OPTIONS=$gateway_asan "$BUILD/$t" "${args[@]}" > "$log" 2>&1 || rc=$?
    else
        backend_setup
        sql_args=$(printf "'%s'," "${args[@]}")
        echo "SELECT fuzz_main('$t', ARRAY[${sql_args%,}]);" |
            run_in_work env LD_PRELOAD="$asan_runtime $BUILD/asan_preload.so" ASAN_OPTIONS=$backend_asan \
                postgres --single -D "$work/data" postgres > "$log" 2>&1 || rc=$?
    fi
    elapsed=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    # libFuzzer exits 0 only after printing its final stats: no stats, no pass
    [ -n "$execs" ] || [ "$rc" -ne 0 ] || rc=1
    if [ "$rc" -ne 0 ]; then
        failed=$((failed + 1))
        for crash in "$work/artifacts/$t"/*; do
            [ -f "$crash" ] && [ "$mode" = fuzz ] || continue
            cp "$crash" "$corpus/crash-$(sha1sum < "$crash" | cut -c1-40)" 2>/dev/null || true
            echo "---- $t: input kept as fuzz/corpus/$t/crash-$(sha1sum < "$crash" | cut -c1-40)"
        done
        # the report: from its first line to the stack's end (no shadow-byte map)
        echo "---- $t: exit status $rc; the report:"
        awk '/==fuzz==|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|CHECK failed/ { on = 1 }
             /^Shadow bytes around|^SUMMARY/ { if (on) print; on = 0 }
             on && n < 60 { print; n++ }' "$log"
        grep -E '^(Base64: |artifact_prefix=)' "$log" || true
    elif [ "$mode" = fuzz ] && [ "${FUZZ_MERGE:-0}" = 1 ]; then
        # into a copy of the corpus (the server user may not write the tree), then back
        run_in_work cp -r "$corpus" "$work/merged-$t"
        if [[ " ${GATEWAY_TARGETS[*]} " == *" $t "* ]]; then
            run_in_work "$BUILD/$t" -merge=1 "$work/merged-$t" "$work/new/$t" > "$log.merge" 2>&1 || true
        else
            echo "SELECT fuzz_main('$t', ARRAY['-merge=1', '$work/merged-$t', '$work/new/$t']);" |
                run_in_work env LD_PRELOAD="$asan_runtime $BUILD/asan_preload.so" ASAN_OPTIONS=$backend_asan \
                    postgres --single -D "$work/data" postgres > "$log.merge" 2>&1 || true
        fi
        cp -n "$work/merged-$t"/* "$corpus"/ 2>/dev/null || true
    fi
    printf 'fuzz %s: %s  %s execs in %s s, %s corpus inputs\n' "$t" \
        "$([ "$rc" -eq 0 ] && echo ok || echo FAILED)" "${execs:-?}" "$elapsed" \
        "$(find "$corpus" "$work/new/$t" -type f 2>/dev/null | wc -l)"
done
[ "$failed" -eq 0 ]
