#!/usr/bin/env bash
# scripts/openapi-lint.sh — lint docs/openapi.yaml with Redocly's OpenAPI
# linter (its "recommended" rules), installed from npm at one exact version
# into .cache/openapi-lint/ of this tree (git ignores .cache/).
#
#   scripts/openapi-lint.sh --install    install it unless that version is there
#   scripts/openapi-lint.sh [ARGS]       lint (installing first if needed);
#                                        ARGS go to "redocly lint", e.g. --format=json
#
# Exit status: redocly's (non-zero when a rule at error severity is broken),
# 3 when the linter cannot be installed. test/tap/003_openapi_lint.pl runs
# it; scripts/deps.sh installs it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# One bundled package without dependencies: this pin fixes every byte run.
REDOCLY_CLI_VERSION=2.77.0
dir=${ENVOISMS_LINT_DIR:-$ENVOISMS_ROOT/.cache/openapi-lint}
bin=$dir/node_modules/.bin/redocly

# No telemetry, no update check: the lint reads one local file and nothing else.
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true NO_UPDATE_NOTIFIER=1

installed_version() {
    node -e 'try { console.log(require(process.argv[1]).version) } catch (e) {}' \
        "$dir/node_modules/@redocly/cli/package.json" 2>/dev/null || true
}

lint_install() {
    [ "$(installed_version)" = "$REDOCLY_CLI_VERSION" ] && [ -x "$bin" ] && return 0
    command -v npm >/dev/null || { echo "openapi-lint: npm is not installed" >&2; return 3; }
    say "installing @redocly/cli@$REDOCLY_CLI_VERSION into $dir"
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
    # the npm cache stays in the tree too: the test user may have no home
    npm install --prefix "$dir" --cache "$dir/npm-cache" --no-audit --no-fund --fetch-retry-maxtimeout=10000 \
        --ignore-scripts --save-exact --loglevel=error "@redocly/cli@$REDOCLY_CLI_VERSION" >&2 || return 3
    rm -rf "$dir/npm-cache"
    [ "$(installed_version)" = "$REDOCLY_CLI_VERSION" ] || { echo "openapi-lint: the install left no @redocly/cli $REDOCLY_CLI_VERSION" >&2; return 3; }
}

if [ "${1:-}" = "--install" ]; then
    lint_install
    exit
fi
lint_install || exit 3
cd "$ENVOISMS_ROOT"
exec "$bin" lint --extends=recommended --max-problems=10000 "$@" docs/openapi.yaml
