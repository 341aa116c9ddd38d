#!/usr/bin/env bash
# scripts/browser-deps.sh — what the console's browser test needs
# (test/tap/410_console_browser.pl): playwright-core from npm at one exact
# version, in .cache/playwright/ of this tree (git ignores .cache/), driving
# Debian's Chromium (/usr/bin/chromium, installed by scripts/deps.sh).
# playwright-core never downloads a browser.
#
#   scripts/browser-deps.sh --install   install it unless that version is there
#   scripts/browser-deps.sh --dir       print the node_modules directory
#
# Exit status 3 when it cannot be installed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PLAYWRIGHT_CORE_VERSION=1.64.1
dir=${ENVOISMS_PLAYWRIGHT_DIR:-$ENVOISMS_ROOT/.cache/playwright}

installed_version() {
    node -e 'try { console.log(require(process.argv[1]).version) } catch (e) {}' \
        "$dir/node_modules/playwright-core/package.json" 2>/dev/null || true
}

install() {
    [ "$(installed_version)" = "$PLAYWRIGHT_CORE_VERSION" ] && return 0
    command -v npm >/dev/null || { echo "browser-deps: npm is not installed" >&2; return 3; }
    say "installing playwright-core@$PLAYWRIGHT_CORE_VERSION into $dir"
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
    # no browser download (playwright-core has none; the variable makes sure),
    # the npm cache in the tree: the test user may have no home
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$dir" --cache "$dir/npm-cache" --no-audit --no-fund \
        --fetch-retry-maxtimeout=10000 --ignore-scripts --save-exact --loglevel=error \
        "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2 || return 3
    rm -rf "$dir/npm-cache"
    [ "$(installed_version)" = "$PLAYWRIGHT_CORE_VERSION" ] || { echo "browser-deps: the install left no playwright-core $PLAYWRIGHT_CORE_VERSION" >&2; return 3; }
}

case "${1:-}" in
    --install) install ;;
    --dir) echo "$dir/node_modules" ;;
    *) echo "usage: browser-deps.sh --install | --dir" >&2; exit 2 ;;
esac
