# scripts/services.d/postgres.sh: PostgreSQL (sourced by scripts/services).
# shellcheck shell=bash

# --------------------------------------------------------------- postgres ---

# Directory holding initdb/pg_ctl/postgres. Installs PostgreSQL from Debian's
# packages if it is missing (fresh machine).
find_pg_bin() {
  local dir="/usr/lib/postgresql/$PG_MAJOR/bin"
  if [[ ! -x "$dir/pg_ctl" ]]; then
    [[ $EUID -eq 0 ]] || die "PostgreSQL $PG_MAJOR not found in $dir; install it: apt-get install -y postgresql-$PG_MAJOR"
    log "postgres: $dir missing, installing postgresql-$PG_MAJOR from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null >/dev/null
    apt-get install -y -qq "postgresql-$PG_MAJOR" </dev/null >/dev/null \
      || apt-get install -y -qq postgresql </dev/null >/dev/null \
      || die "could not install PostgreSQL with apt-get"
    # The package may create and start its own 'main' cluster on 5432;
    # stop it so that ours can have the port.
    if command -v pg_ctlcluster >/dev/null 2>&1; then
      pg_ctlcluster --force "$PG_MAJOR" main stop >/dev/null 2>&1 || true
    fi
    if [[ ! -x "$dir/pg_ctl" ]]; then
      # Fall back to whatever major version the 'postgresql' package brought.
      # shellcheck disable=SC2012  # ls on a fixed install path is fine
      dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
      [[ -x "$dir/pg_ctl" ]] || die "PostgreSQL installed but no pg_ctl under /usr/lib/postgresql"
      log "postgres: using $dir instead of version $PG_MAJOR"
    fi
  fi
  PG_BIN="$dir"
}

# Run a command as the OS user that owns the cluster: `postgres` when we are
# root (PostgreSQL refuses to run as root), ourselves otherwise.
# Runs from / since our working directory may be unreadable to postgres.
as_pg() {
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# .services/postgres is normally a plain folder, but may be a symlink made by
# ensure_pg_user (see there); the server must be given the real path.
resolve_pg_dir() {
  if [[ -L "$SVC_DIR/postgres" ]]; then
    PG_DIR="$(readlink -f "$SVC_DIR/postgres")"
    PG_DATA="$PG_DIR/data"
    PG_LOG="$PG_DIR/postgres.log"
  fi
}

ensure_pg_user() {
  [[ $EUID -eq 0 ]] || return 0
  if ! id -u postgres >/dev/null 2>&1; then
    log "postgres: creating OS user 'postgres'"
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  mkdir -p "$PG_DIR"
  # A fresh clone, or a folder first made by root, is owned by root: hand
  # the cluster's folder to postgres (initdb insists on owning its data dir).
  chown -R postgres:postgres "$PG_DIR"
  if ! as_pg test -w "$PG_DIR"; then
    # The checkout sits below a folder the postgres user cannot enter (e.g.
    # under /root, mode 0700). Rather than loosen its permissions, keep the
    # cluster under /var/lib/postgresql and leave a symlink in .services/.
    [[ -f "$PG_DIR/data/PG_VERSION" ]] \
      && die "postgres: the OS user 'postgres' cannot reach $PG_DIR; make its parent folders searchable (chmod o+x)"
    local alt
    alt="/var/lib/postgresql/payhook-services-$(printf '%s' "$SVC_DIR" | sha256sum | cut -c1-12)"
    log "postgres: user 'postgres' cannot enter $ROOT; keeping the cluster in $alt (symlinked from $(rel "$SVC_DIR/postgres"))"
    mkdir -p "$alt"
    chown -R postgres:postgres "$alt"
    rm -rf "$PG_DIR"
    ln -s "$alt" "$SVC_DIR/postgres"
    resolve_pg_dir
    as_pg test -w "$PG_DIR" || die "postgres: the OS user 'postgres' cannot write to $PG_DIR"
  fi
}

pg_running() {
  [[ -f "$PG_DATA/PG_VERSION" ]] || return 1
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_pid() { head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null; }

# Does a PostgreSQL server on 127.0.0.1:5432 let superuser postgres in without
# a password (i.e. is it usable the way tests expect)?
pg_answers() {
  PGCONNECT_TIMEOUT=5 psql_cmd -d postgres -Atc 'select 1' >/dev/null 2>&1
}

psql_cmd() {
  local psql="psql"
  [[ -x "${PG_BIN:-}/psql" ]] && psql="$PG_BIN/psql"
  "$psql" -X -h "$PG_HOST" -p "$PG_PORT" -U postgres "$@" </dev/null
}

pg_init_once() {
  if [[ -f "$PG_DATA/PG_VERSION" ]]; then
    local have
    have="$(cat "$PG_DATA/PG_VERSION")"
    "$PG_BIN/postgres" --version | grep -q " $have\." \
      || die "postgres: $(rel "$PG_DATA") was made by PostgreSQL $have but $PG_BIN is $("$PG_BIN/postgres" --version); remove .services/postgres to start afresh"
    return 0
  fi
  log "postgres: initdb in $(rel "$PG_DATA")"
  # C locale: same collation everywhere, whatever locales the machine has.
  if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust \
      --encoding=UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1; then
    show_tail "$PG_DIR/initdb.log"
    die "postgres: initdb failed; see $(rel "$PG_DIR/initdb.log")"
  fi
  echo "include = 'payhook-services.conf'" >>"$PG_DATA/postgresql.conf"
}

# (Re)written on every start so edits here take effect on the next `up`.
pg_write_config() {
  as_pg tee "$PG_DATA/payhook-services.conf" >/dev/null <<EOF
# Generated by scripts/services on every start; edit the script, not this file.
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 300
shared_buffers = 256MB
# Durable commits stay on: tests measure real commit latency.
fsync = on
synchronous_commit = on
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
# TLS with a certificate from scripts/services.d/tls.sh (copied next to the
# data: the server insists on owning its key).
ssl = on
ssl_cert_file = 'server.pem'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.pem'
EOF
  local f
  for f in server.pem server.key ca.pem; do
    as_pg tee "$PG_DATA/$f" >/dev/null <"$TLS_DIR/$f"
  done
  as_pg chmod 600 "$PG_DATA/server.key"
  # Trust everyone connecting locally: a throwaway test database, no passwords.
  as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<'EOF'
# Generated by scripts/services on every start.
# TYPE     DATABASE  USER         ADDRESS       METHOD
local      all       all                        trust
# payhook_tls: over TLS with its password only (the sslmode tests).
hostnossl  all       payhook_tls  127.0.0.1/32  reject
hostssl    all       payhook_tls  127.0.0.1/32  scram-sha-256
host       all       all          127.0.0.1/32  trust
host       all       all          ::1/128       trust
EOF
}

pg_up() {
  find_pg_bin
  resolve_pg_dir
  ensure_pg_user
  if pg_running; then
    log "postgres: already running (pid $(pg_pid)) on $PG_HOST:$PG_PORT"
  elif port_open "$PG_HOST" "$PG_PORT"; then
    # Someone else's server (e.g. Debian's own 'main' cluster). Fine if it
    # lets us in as postgres without a password; otherwise say how to fix it.
    pg_answers || die "postgres: port $PG_PORT is taken by a server that does not accept 'psql -h $PG_HOST -U postgres' without a password; stop it first (e.g. pg_ctlcluster $PG_MAJOR main stop)"
    log "postgres: a server not started by this script already answers on $PG_HOST:$PG_PORT; using it"
  else
    pg_init_once
    pg_write_config
    mkdir -p "$PG_SOCKET_DIR"
    [[ $EUID -eq 0 ]] && chown postgres:postgres "$PG_SOCKET_DIR"
    log "postgres: starting PostgreSQL $(cat "$PG_DATA/PG_VERSION") on $PG_HOST:$PG_PORT"
    # -w: wait until the server accepts connections (or -t seconds pass).
    # 9>&-: the server must not inherit the lock's fd (see take_lock).
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_START_TIMEOUT" start >/dev/null 2>&1 9>&-; then
      show_tail "$PG_LOG"
      die "postgres: failed to start within ${PG_START_TIMEOUT}s; see $(rel "$PG_LOG")"
    fi
  fi

  # pg_ctl -w already waited; pg_isready double-checks the TCP listener that
  # tests use (pg_ctl may have checked through the unix socket).
  local deadline=$((SECONDS + PG_START_TIMEOUT))
  until "$PG_BIN/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT" -U postgres; do
    if ((SECONDS >= deadline)); then
      show_tail "$PG_LOG"
      die "postgres: not accepting connections on $PG_HOST:$PG_PORT after ${PG_START_TIMEOUT}s; see $(rel "$PG_LOG")"
    fi
    sleep 0.2
  done

  if [[ "$(psql_cmd -d postgres -Atc "select 1 from pg_database where datname = '$PG_DB'")" != 1 ]]; then
    log "postgres: creating database $PG_DB"
    psql_cmd -d postgres -qc "create database $PG_DB" >/dev/null
  fi
  # The TLS-only test role (may create the databases its tests use).
  psql_cmd -d postgres -qc "do \$\$ begin
      if not exists (select from pg_roles where rolname = '$PG_TLS_ROLE') then create role $PG_TLS_ROLE; end if;
    end \$\$; alter role $PG_TLS_ROLE login createdb password '$PG_TLS_PASSWORD'" >/dev/null
  log "postgres: ready at postgres://postgres@$PG_HOST:$PG_PORT/$PG_DB (TLS: $PG_TLS_ROLE, CA $(rel "$TLS_DIR/ca.pem"))"
}

pg_down() {
  find_pg_bin
  resolve_pg_dir
  if pg_running; then
    log "postgres: stopping (pid $(pg_pid))"
    # fast: roll back open transactions and disconnect clients, then a clean
    # shutdown checkpoint. (smart would wait for idle test pools forever.)
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
    log "postgres: stopped"
  elif port_open "$PG_HOST" "$PG_PORT"; then
    log "postgres: not started by this script, but something listens on $PG_HOST:$PG_PORT; leaving it alone"
  else
    log "postgres: not running"
  fi
}

pg_status() {
  # shellcheck disable=SC2012  # ls on a fixed install path is fine
  PG_BIN="$(ls -d "/usr/lib/postgresql/$PG_MAJOR/bin" /usr/lib/postgresql/*/bin 2>/dev/null | head -n1)"
  resolve_pg_dir
  if [[ -x "$PG_BIN/pg_ctl" ]] && pg_running; then
    printf 'postgres  running   pid %-7s postgres://postgres@%s:%s/%s, PostgreSQL %s, log %s\n' \
      "$(pg_pid)" "$PG_HOST" "$PG_PORT" "$PG_DB" "$(cat "$PG_DATA/PG_VERSION")" "$(rel "$PG_LOG")"
    return 0
  fi
  if port_open "$PG_HOST" "$PG_PORT"; then
    printf 'postgres  running   (not started by this script) something listens on %s:%s\n' "$PG_HOST" "$PG_PORT"
    return 0
  fi
  printf 'postgres  stopped\n'
  return 1
}

