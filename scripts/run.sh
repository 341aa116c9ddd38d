#!/usr/bin/env bash
# scripts/run.sh — the README's run command. Installs what is missing, builds,
# starts a local PostgreSQL 15 cluster with envoisms preloaded (its workers
# start with it), starts envoisms-gateway on 127.0.0.1:8080, creates a demo
# account with a sandbox key, and prints a working example. Idempotent: a
# second run reuses the cluster, the account and the key.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=${ENVOISMS_STATE:-/var/lib/$ENVOISMS_USER}
DATA=$STATE/data
SOCK=$STATE/run
PORT=${ENVOISMS_PGPORT:-5488}
DB=${ENVOISMS_DB:-envoisms}
LISTEN=${ENVOISMS_LISTEN:-127.0.0.1:8080}

"$ENVOISMS_ROOT/scripts/deps.sh"
ensure_server_user
build_and_install

as_root install -d -o "$ENVOISMS_USER" -g "$(id -gn "$ENVOISMS_USER")" -m 0755 "$STATE" "$SOCK" "$STATE/log"

if ! as_server_user test -f "$DATA/PG_VERSION"; then
    say "creating the cluster in $DATA"
    as_server_user initdb -D "$DATA" -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    # peer auth, with root and the invoking sudo user allowed to act as the
    # server user (the socket is only reachable on this machine).
    as_server_user bash -c "cat >> '$DATA/pg_ident.conf'" <<IDENT
envoisms  $ENVOISMS_USER  $ENVOISMS_USER
envoisms  root            $ENVOISMS_USER
envoisms  ${SUDO_USER:-root}  $ENVOISMS_USER
IDENT
    as_server_user sed -i 's/^\(local *all *all *\)peer$/\1peer map=envoisms/' "$DATA/pg_hba.conf"
    as_server_user bash -c "cat >> '$DATA/postgresql.conf'" <<CONF
$(server_settings "$DB")
listen_addresses = 'localhost'
port = $PORT
unix_socket_directories = '$SOCK'
logging_collector = off
CONF
fi

if ! as_server_user pg_ctl -D "$DATA" status >/dev/null 2>&1; then
    say "starting PostgreSQL on port $PORT (socket $SOCK)"
    # The workers hold many sockets: raise the open-file limit for the server.
    as_server_user bash -c "ulimit -n 65536 2>/dev/null || ulimit -n \$(ulimit -Hn); pg_ctl -D '$DATA' -l '$STATE/log/postgresql.log' -w start" >/dev/null
else
    # Pick up a newly installed library.
    say "restarting PostgreSQL to load the freshly built library"
    as_server_user bash -c "ulimit -n 65536 2>/dev/null || ulimit -n \$(ulimit -Hn); pg_ctl -D '$DATA' -l '$STATE/log/postgresql.log' -m fast -w restart" >/dev/null
fi

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U "$ENVOISMS_USER")
if ! as_server_user "${PSQL[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    as_server_user "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB"
fi
as_server_user "${PSQL[@]}" -d "$DB" -c "CREATE EXTENSION IF NOT EXISTS envoisms; ALTER EXTENSION envoisms UPDATE;" 2>&1 | grep -v 'already' || true

# The demo account and its sandbox key. The key is shown once by the API, so
# it is kept in a file readable only by its owner and reused on later runs.
KEYFILE=$STATE/demo-sandbox-key
key=$(as_root cat "$KEYFILE" 2>/dev/null || true)
valid=0
if [ -n "$key" ]; then
    valid=$(as_server_user "${PSQL[@]}" -d "$DB" -tAc "SELECT count(*) FROM envoisms.api_keys WHERE key_hash = envoisms.sha256_hex('$key') AND active AND revoked_at IS NULL")
fi
if [ "$valid" != "1" ]; then
    say "creating the demo account (1000 MAD) and its sandbox key"
    key=$(as_server_user "${PSQL[@]}" -d "$DB" -tAc "
        SELECT envoisms.api_key_create(envoisms.account_create('Demo', 1000, 'starter'),
                                       'Demo sandbox key', live => false, rate_limit => 1000)->>'api_key'")
    printf '%s\n' "$key" | as_root tee "$KEYFILE" >/dev/null
    as_root chmod 0600 "$KEYFILE"
fi

# The demo sign-in of the console: the owner of the demo account (with the
# operator flag, so the operator area shows too), two-factor off. The
# password is made on the first run and kept beside the key; the database
# holds only its scrypt hash. A lost or changed password is made again.
DEMO_EMAIL=demo@envoisms.local
PASSFILE=$STATE/demo-console-password
password=$(as_root cat "$PASSFILE" 2>/dev/null || true)
known=f
if [ -n "$password" ]; then
    known=$(as_server_user "${PSQL[@]}" -d "$DB" -tAc "SELECT coalesce(bool_or(envoisms.password_verify('$password', password_hash)), false)
                                                        FROM envoisms.console_users WHERE email = '$DEMO_EMAIL'")
fi
if [ "$known" != "t" ]; then
    say "creating the demo console sign-in ($DEMO_EMAIL)"
    password=$(as_server_user "${PSQL[@]}" -d "$DB" -tAc "SELECT envoisms.random_bytes_hex(8)")
    as_server_user "${PSQL[@]}" -d "$DB" -v ON_ERROR_STOP=1 -qtAc "
        UPDATE envoisms.console_users SET password_hash = envoisms.password_hash('$password') WHERE email = '$DEMO_EMAIL';
        SELECT envoisms.console_user_create(k.account_id, '$DEMO_EMAIL', '$password', 'owner', 'Démo', NULL, true)
          FROM envoisms.api_keys k
         WHERE k.key_hash = envoisms.sha256_hex('$key')
           AND NOT EXISTS (SELECT 1 FROM envoisms.console_users WHERE email = '$DEMO_EMAIL');" >/dev/null
    printf '%s\n' "$password" | as_root tee "$PASSFILE" >/dev/null
    as_root chmod 0600 "$PASSFILE"
fi

GATEWAY=$($PG_CONFIG --bindir)/envoisms-gateway
if [ -x "$GATEWAY" ]; then
    say "starting envoisms-gateway on $LISTEN"
    gateway_restart "$LISTEN" "host=$SOCK port=$PORT dbname=$DB user=$ENVOISMS_USER" \
        "$STATE/run/gateway.pid" "$STATE/log/gateway.log"
    cat <<EXAMPLE

envoisms is running.
  database : psql -h $SOCK -p $PORT -U $ENVOISMS_USER $DB   (as root or $ENVOISMS_USER)
  gateway  : http://$LISTEN   (logs in $STATE/log)
  demo key : $key   (sandbox: never debits, never reaches a carrier)
  console  : http://$LISTEN/console/   sign in as $DEMO_EMAIL / $password
             (owner of the demo account and operator; two-factor off)

Send a message:

curl -X POST "http://$LISTEN/v1/messages" \\
  -H "Authorization: Bearer $key" \\
  -H "Content-Type: application/json" \\
  -d '{"to": "+212612345678", "message": "Votre code de validation est 849204", "from": "MaBoutique"}'
EXAMPLE
else
    cat <<EXAMPLE

envoisms is running (database only; the gateway is not built).
  demo key : $key
  console sign-in (with the gateway): $DEMO_EMAIL / $password

psql -h $SOCK -p $PORT -U $ENVOISMS_USER $DB -c "SELECT * FROM envoisms.api('POST', '/v1/messages', '', '{\"Authorization\": \"Bearer $key\"}', '{\"to\": \"+212612345678\", \"message\": \"Bonjour\"}')"
EXAMPLE
fi
