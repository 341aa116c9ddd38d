#!/usr/bin/env bash
# scripts/deps.sh — install, from Debian's packages, whatever of the build
# and test dependencies is missing. Idempotent: a second run installs nothing.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(
    build-essential pkg-config rsync sudo curl ca-certificates
    postgresql-15 postgresql-client-15 postgresql-server-dev-15
    postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl postgresql-15-cron
    postgresql-15-auto-failover
    libpq-dev libssl-dev libcurl4-openssl-dev libmicrohttpd-dev
    libphonenumber-dev libprotobuf-dev libicu-dev libboost-dev libsmpp34-dev
    libipc-run-perl libnet-smpp-perl libjson-pp-perl libdigest-sha-perl libyaml-libyaml-perl
    wrk nodejs
    # the search for security bugs (docs/testing.md): libFuzzer and the
    # sanitizer runtimes of clang 14, llvm-symbolizer for their stacks, the
    # OpenAPI-driven API fuzzer, sqlsmith
    clang libclang-rt-14-dev llvm-14
    python3-hypothesis python3-yaml python3-psycopg2 sqlsmith
    # building the vendored Citus for the cluster suite (scripts/citus.sh)
    liblz4-dev libzstd-dev libkrb5-dev
    # the console's browser test (test/tap/410_console_browser.pl): Debian's
    # Chromium, headless, and a font for its pages
    chromium fonts-dejavu-core
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's postgresql package may create and start a "main" cluster on 5432;
# envoisms runs its own clusters and leaves that one alone.
[ -x "$PG_CONFIG" ] || die "PostgreSQL 15 is missing after install ($PG_CONFIG)"

# The OpenAPI linter of test/tap/003_openapi_lint.pl, from npm into the
# tree's .cache/ (scripts/openapi-lint.sh); Debian's nodejs comes without
# npm. Not installed here, that test says why instead of failing silently.
command -v npm >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends npm >/dev/null || true
"$ENVOISMS_ROOT/scripts/openapi-lint.sh" --install || say "the OpenAPI linter is not installed; test/tap/003_openapi_lint.pl will say why"
# playwright-core for the console's browser test, pinned, into .cache/
# (scripts/browser-deps.sh); without it that test says why and skips.
"$ENVOISMS_ROOT/scripts/browser-deps.sh" --install || say "playwright-core is not installed; test/tap/410_console_browser.pl will say why"
