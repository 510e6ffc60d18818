#!/usr/bin/env bash
# Local infrastructure for development and tests: RabbitMQ and MariaDB from Debian's
# packages, an embedded FerretDB (MongoDB wire protocol) and an SMTP sink, all on loopback.
#
#   dev/infra.sh up       install what is missing, start what is not running (idempotent)
#   dev/infra.sh down     stop what this script started
#   dev/infra.sh status   one line per server
#
# Everything is configured by environment variables (see dev/defaults.env).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=dev/defaults.env
source "$ROOT/dev/defaults.env"

STATE="$INFRA_DIR"
LOGS="$STATE/logs"
mkdir -p "$STATE" "$LOGS"
chmod 755 "$STATE"

log() { printf '[infra] %s\n' "$*" >&2; }
# When INFRA_STARTED_LOG names a file, each server this run starts is recorded there, so
# the caller (make up / make down) can stop exactly what it started.
started() { [[ -n "${INFRA_STARTED_LOG:-}" ]] && echo "$1" >>"$INFRA_STARTED_LOG"; return 0; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_port() { # host port name seconds
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    port_open "$1" "$2" && return 0
    sleep 0.1
  done
  log "$3 did not open $1:$2 within $4 s; see $LOGS"
  return 1
}
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# shellcheck source=dev/apt.sh
source "$ROOT/dev/apt.sh"

# ---------------------------------------------------------------- MariaDB
mariadb_sock="$STATE/mariadb/mysqld.sock"
# The client reads MYSQL_HOST from the environment and would then use TCP, where root has no access.
root_sql() { env -u MYSQL_HOST -u MYSQL_PWD mariadb --protocol=socket --socket="$mariadb_sock" -uroot "$@"; }
mariadb_up() {
  if port_open "$MYSQL_HOST" "$MYSQL_PORT" && [[ ! -f "$STATE/mariadb/mysqld.pid" ]]; then
    log "something already listens on $MYSQL_HOST:$MYSQL_PORT; using it as MySQL"
    return 0
  fi
  apt_install mariadb-server mariadb-client
  local data="$STATE/mariadb/data"
  if [[ ! -d "$data/mysql" ]]; then
    log "initialising MariaDB data directory $data"
    mkdir -p "$data"
    chown -R mysql:mysql "$STATE/mariadb"
    mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
      --skip-test-db >"$LOGS/mariadb-install.log" 2>&1
  fi
  if ! alive "$STATE/mariadb/mysqld.pid"; then
    log "starting MariaDB on $MYSQL_HOST:$MYSQL_PORT"
    started mariadb
    chown -R mysql:mysql "$STATE/mariadb"
    setsid mariadbd --no-defaults --user=mysql --datadir="$data" --bind-address="$MYSQL_HOST" \
      --port="$MYSQL_PORT" --socket="$mariadb_sock" --pid-file="$STATE/mariadb/mysqld.pid" \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
      --max-connections=500 --innodb-buffer-pool-size=64M --log-error="$STATE/mariadb/mariadb.log" \
      </dev/null >/dev/null 2>&1 &
    wait_port "$MYSQL_HOST" "$MYSQL_PORT" MariaDB 60
  fi
  local i
  for ((i = 0; i < 300; i++)); do
    root_sql -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  # The application user may create the databases named video2mp3* (tests make one each).
  root_sql <<SQL
CREATE DATABASE IF NOT EXISTS \`$MYSQL_DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'127.0.0.1' IDENTIFIED BY '$MYSQL_PASSWORD';
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'localhost' IDENTIFIED BY '$MYSQL_PASSWORD';
GRANT ALL PRIVILEGES ON \`video2mp3%\`.* TO '$MYSQL_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`video2mp3%\`.* TO '$MYSQL_USER'@'localhost';
SQL
}
mariadb_down() {
  if alive "$STATE/mariadb/mysqld.pid"; then
    log "stopping MariaDB"
    kill "$(cat "$STATE/mariadb/mysqld.pid")"
    local i; for ((i = 0; i < 300; i++)); do alive "$STATE/mariadb/mysqld.pid" || break; sleep 0.1; done
  fi
}

# ---------------------------------------------------------------- RabbitMQ
rabbit_env() {
  export RABBITMQ_NODE_IP_ADDRESS="$RABBITMQ_HOST" RABBITMQ_NODE_PORT="$RABBITMQ_PORT"
  export RABBITMQ_NODENAME="$RABBITMQ_NODENAME" RABBITMQ_DIST_PORT="$RABBITMQ_DIST_PORT"
  export ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_LOG_BASE="$STATE/rabbitmq-logs"
  export RABBITMQ_MNESIA_BASE="$STATE/rabbitmq-data" RABBITMQ_PID_FILE="$STATE/rabbitmq-data/rabbit.pid"
  # Local only: no management plugin, nothing listens beyond loopback.
  export RABBITMQ_ENABLED_PLUGINS_FILE="$STATE/rabbitmq-enabled-plugins"
  [[ -f "$RABBITMQ_ENABLED_PLUGINS_FILE" ]] || echo "[]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  mkdir -p "$RABBITMQ_LOG_BASE" "$RABBITMQ_MNESIA_BASE"
  chown -R rabbitmq:rabbitmq "$RABBITMQ_LOG_BASE" "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_ENABLED_PLUGINS_FILE"
}
rabbitmqctl_() { rabbit_env; rabbitmqctl -q -n "$RABBITMQ_NODENAME" "$@"; }
rabbitmq_up() {
  apt_install rabbitmq-server
  rabbit_env
  if ! rabbitmqctl -q -n "$RABBITMQ_NODENAME" status >/dev/null 2>&1; then
    if port_open "$RABBITMQ_HOST" "$RABBITMQ_PORT"; then
      log "something else listens on $RABBITMQ_HOST:$RABBITMQ_PORT; using it as RabbitMQ"
      return 0
    fi
    log "starting RabbitMQ on $RABBITMQ_HOST:$RABBITMQ_PORT"
    started rabbitmq
    rabbitmq-server -detached >"$LOGS/rabbitmq-start.log" 2>&1
  fi
  # -detached returns before the node registers; wait for it to answer, then for full start.
  local i
  for ((i = 0; i < 120; i++)); do
    rabbitmqctl -q -n "$RABBITMQ_NODENAME" ping >/dev/null 2>&1 && break
    sleep 0.5
  done
  rabbitmqctl -q -n "$RABBITMQ_NODENAME" await_startup --timeout 120 >/dev/null
  if ! rabbitmqctl -q -n "$RABBITMQ_NODENAME" list_users | grep -q "^$RABBITMQ_USER\b"; then
    rabbitmqctl -q -n "$RABBITMQ_NODENAME" add_user "$RABBITMQ_USER" "$RABBITMQ_PASSWORD" >/dev/null
    rabbitmqctl -q -n "$RABBITMQ_NODENAME" set_user_tags "$RABBITMQ_USER" administrator >/dev/null
  fi
  rabbitmqctl -q -n "$RABBITMQ_NODENAME" set_permissions -p "$RABBITMQ_VHOST" "$RABBITMQ_USER" '.*' '.*' '.*' >/dev/null
}
rabbitmq_down() {
  rabbit_env
  if rabbitmqctl -q -n "$RABBITMQ_NODENAME" status >/dev/null 2>&1; then
    log "stopping RabbitMQ"
    rabbitmqctl -q -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------- FerretDB (MongoDB wire protocol)
ferret_bin="$STATE/bin/ferretdb-local"
# Returns 0 when the binary is current, 1 when it was (re)built just now.
ferret_build() {
  local stamp="$STATE/bin/ferretdb-local.src"
  local want
  want="$(cat "$ROOT/dev/ferretdb/go.mod" "$ROOT/dev/ferretdb/go.sum" "$ROOT/dev/ferretdb/main.go" \
    "$ROOT"/dev/ferretdb/patches/*.patch | sha256sum | cut -c1-16)"
  if [[ -x "$ferret_bin" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then return 0; fi
  log "building the embedded FerretDB server (first time only, about 2 minutes)"
  mkdir -p "$STATE/bin"
  # FerretDB is vendored into a scratch copy so that dev/ferretdb/patches/ can be applied.
  local build
  build="$(mktemp -d)"
  cp "$ROOT/dev/ferretdb/go.mod" "$ROOT/dev/ferretdb/go.sum" "$ROOT/dev/ferretdb/main.go" "$build/"
  # (set -e does not act inside a subshell followed by ||: every step says `|| exit 1`.
  # git apply runs outside any repository, even if TMPDIR lies inside one, and applies a
  # patch whole or not at all: one that no longer applies stops the build.)
  (
    cd "$build" || exit 1
    GOFLAGS=-mod=mod go mod vendor || exit 1
    export GIT_CEILING_DIRECTORIES="${build%/*}"
    for patch in "$ROOT"/dev/ferretdb/patches/*.patch; do git apply "$patch" || exit 1; done
    go build -mod=vendor -trimpath -o "$ferret_bin.tmp" . || exit 1
  ) || { rm -rf "$build"; log "building FerretDB failed"; exit 1; }
  rm -rf "$build"
  mv "$ferret_bin.tmp" "$ferret_bin"
  echo "$want" >"$stamp"
  return 1
}
mongo_up() {
  if [[ "${MONGO_URI:-}" != "" && "${MONGO_URI}" != "$DEFAULT_MONGO_URI" ]]; then
    log "MONGO_URI points elsewhere ($MONGO_HOST_SHOWN); starting no MongoDB-compatible server"
    return 0
  fi
  if ! ferret_build && alive "$STATE/ferretdb.pid"; then
    log "restarting FerretDB with the new build"
    mongo_down
  fi
  if alive "$STATE/ferretdb.pid"; then return 0; fi
  if port_open "$MONGO_HOST" "$MONGO_PORT"; then
    log "something already listens on $MONGO_HOST:$MONGO_PORT; using it as MongoDB"
    return 0
  fi
  log "starting FerretDB on $MONGO_HOST:$MONGO_PORT"
  started mongodb
  setsid "$ferret_bin" -listen "$MONGO_HOST:$MONGO_PORT" -data-dir "$STATE/ferretdb-data" \
    </dev/null >>"$LOGS/ferretdb.log" 2>&1 &
  echo $! >"$STATE/ferretdb.pid"
  wait_port "$MONGO_HOST" "$MONGO_PORT" FerretDB 30
}
mongo_down() {
  if alive "$STATE/ferretdb.pid"; then
    log "stopping FerretDB"
    kill "$(cat "$STATE/ferretdb.pid")"
    local i
    for ((i = 0; i < 100; i++)); do alive "$STATE/ferretdb.pid" || break; sleep 0.1; done
  fi
  rm -f "$STATE/ferretdb.pid"
}

# ---------------------------------------------------------------- SMTP sink
smtp_up() {
  if alive "$STATE/smtp-sink.pid"; then return 0; fi
  if port_open "$SMTP_HOST" "$SMTP_PORT"; then
    log "something already listens on $SMTP_HOST:$SMTP_PORT; using it as the SMTP server"
    return 0
  fi
  started smtp
  log "starting the SMTP sink on $SMTP_HOST:$SMTP_PORT (mail lands in $SMTP_SINK_DIR)"
  setsid "$PYTHON" "$ROOT/dev/smtp_sink.py" --host "$SMTP_HOST" --port "$SMTP_PORT" --maildir "$SMTP_SINK_DIR" \
    </dev/null >>"$LOGS/smtp-sink.log" 2>&1 &
  echo $! >"$STATE/smtp-sink.pid"
  wait_port "$SMTP_HOST" "$SMTP_PORT" "SMTP sink" 30
}
smtp_down() {
  if alive "$STATE/smtp-sink.pid"; then
    log "stopping the SMTP sink"
    kill "$(cat "$STATE/smtp-sink.pid")"
  fi
  rm -f "$STATE/smtp-sink.pid"
}

status_line() { # name host port
  if port_open "$2" "$3"; then printf '%-10s up    %s:%s\n' "$1" "$2" "$3"; else printf '%-10s down  %s:%s\n' "$1" "$2" "$3"; fi
}

case "${1:-}" in
  up)
    mariadb_up
    rabbitmq_up
    mongo_up
    smtp_up
    log "infrastructure is up (state in $STATE)"
    ;;
  down)
    # With names (mariadb rabbitmq mongodb smtp) only those; without, all of them.
    shift
    want=" ${*:-mariadb rabbitmq mongodb smtp} "
    [[ "$want" == *" smtp "* ]] && smtp_down
    [[ "$want" == *" mongodb "* ]] && mongo_down
    [[ "$want" == *" rabbitmq "* ]] && rabbitmq_down
    [[ "$want" == *" mariadb "* ]] && mariadb_down
    true
    ;;
  status)
    status_line mariadb "$MYSQL_HOST" "$MYSQL_PORT"
    status_line rabbitmq "$RABBITMQ_HOST" "$RABBITMQ_PORT"
    status_line mongodb "$MONGO_HOST" "$MONGO_PORT"
    status_line smtp "$SMTP_HOST" "$SMTP_PORT"
    ;;
  rabbitmqctl)
    shift
    rabbitmqctl_ "$@"
    ;;
  *)
    echo "usage: $0 up|down [NAME...]|status|rabbitmqctl ARGS" >&2
    exit 2
    ;;
esac
