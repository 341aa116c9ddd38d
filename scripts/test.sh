#!/usr/bin/env bash
# scripts/test.sh — the README's test command: install what is missing,
# build, then run every suite (pg_regress, isolation, pgTAP, TAP) against
# real servers run by an unprivileged user. Prints one summary line
# "N passed, N failed" and exits non-zero on any failure.
#
# ENVOISMS_SANITIZE=1 builds and installs the extension and the gateway
# with AddressSanitizer and UndefinedBehaviorSanitizer, runs every suite
# against them and fuzzes each libFuzzer harness (docs/testing.md); the next
# run without it rebuilds and reinstalls the normal build.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$ENVOISMS_ROOT/scripts/deps.sh"
ensure_server_user
build_and_install
# Citus for the cluster suites (test/tap/4*): installed, or built from the
# vendored source beside the tree, else those suites skip and say why
"$ENVOISMS_ROOT/scripts/citus.sh" || say "Citus is not available: the cluster suites (test/tap/4*) will be skipped"

# The suites write results next to their inputs, and the server user must be
# able to do that: run them in a copy of the tree owned by that user.
if [ "$(id -un)" = "$ENVOISMS_USER" ]; then
    workdir=$ENVOISMS_ROOT
else
    workdir=$(as_root mktemp -d /var/tmp/envoisms-test.XXXXXX)
    as_root rsync -a --exclude .git --exclude '*.o' --exclude '*.so' --exclude /fuzz/build --exclude /.cache/citus \
        "$ENVOISMS_ROOT/" "$workdir/"
    as_root chown -R "$ENVOISMS_USER:" "$workdir"
    trap 'as_root rm -rf "$workdir"' EXIT
fi

# What narrows or tunes the run travels with it (sudo and runuser drop the environment).
pass=()
for name in ENVOISMS_TEST_ONLY ENVOISMS_TAP ENVOISMS_TEST_PORT ENVOISMS_SANITIZE ENVOISMS_PGBIN \
            ENVOISMS_FUZZ_SECONDS ENVOISMS_API_FUZZ_SECONDS ENVOISMS_API_FUZZ_REQUESTS ENVOISMS_SQLSMITH_SECONDS; do
    if [ -n "${!name:-}" ]; then pass+=("$name=${!name}"); fi
done
as_server_user env "${pass[@]}" bash "$workdir/scripts/test-suites.sh"
