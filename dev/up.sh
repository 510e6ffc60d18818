#!/usr/bin/env bash
# Runs the whole system on loopback: infrastructure plus the five services (Procfile,
# run by honcho in the background; each under dev/keep_running.py, which restarts it if it
# exits). `up` waits until every health check passes.
# Internal gRPC is mutual TLS: the certificates are made once in $GRPC_TLS_DIR (dev/certs.py).
#
#   dev/up.sh up | down | logs | status
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=dev/defaults.env
source "$ROOT/dev/defaults.env"
RUN="${RUN_DIR:-$ROOT/.run}"
PIDFILE="$RUN/honcho.pid"
LOG="$RUN/services.log"
mkdir -p "$RUN"
log() { printf '[up] %s\n' "$*" >&2; }
alive() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# Worker health endpoints (Kubernetes probes use the same ones).
export CONVERTER_HEALTH_PORT="${CONVERTER_HEALTH_PORT:-8081}"
export NOTIFIER_HEALTH_PORT="${NOTIFIER_HEALTH_PORT:-8082}"

up() {
  bash "$ROOT/dev/bootstrap.sh"
  INFRA_STARTED_LOG="$RUN/infra-started" bash "$ROOT/dev/infra.sh" up
  export PATH="$ROOT/.venv/bin:$PATH" PYTHONPATH="$ROOT:$ROOT/gen"
  "$PYTHON" "$ROOT/dev/certs.py" "$GRPC_TLS_DIR"
  if alive; then
    log "already running (pid $(cat "$PIDFILE")); 'make down' stops it"
  else
    # A local signing secret, made once and kept with the local state (never in the repo).
    if [[ -z "${JWT_SECRET:-}" ]]; then
      if [[ ! -s "$INFRA_DIR/jwt_secret" ]]; then
        (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))' >"$INFRA_DIR/jwt_secret")
      fi
      JWT_SECRET="$(cat "$INFRA_DIR/jwt_secret")"
      export JWT_SECRET
    fi
    export BIND_HOST=127.0.0.1
    log "starting the services (logs: $LOG)"
    cd "$ROOT"
    setsid "$ROOT/.venv/bin/honcho" start -f "$ROOT/Procfile" </dev/null >>"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
  fi
  "$PYTHON" "$ROOT/dev/wait_healthy.py" --timeout 120 || { log "not healthy; last log lines:"; tail -n 40 "$LOG" >&2; exit 1; }
  cat <<INFO

  video2mp3 is up.
    gateway       $PUBLIC_BASE_URL   (try: curl $PUBLIC_BASE_URL/healthz)
    auth (gRPC)   $AUTH_SVC_ADDRESS  (mutual TLS; as the operator:
                  .venv/bin/grpcurl -cacert $GRPC_TLS_DIR/ca.crt -cert $GRPC_TLS_DIR/operator.crt \\
                    -key $GRPC_TLS_DIR/operator.key $AUTH_SVC_ADDRESS list)
    storage(gRPC) $STORAGE_SVC_ADDRESS
    emails        every message the system sends is a file in $SMTP_SINK_DIR
                  (newest: ls -t $SMTP_SINK_DIR/*.eml | head -1)
    logs          make logs        stop: make down

INFO
}

down() {
  if alive; then
    local pid; pid="$(cat "$PIDFILE")"
    log "stopping the services (honcho pid $pid)"
    kill -TERM "$pid"
    local i; for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  # Only the servers `make up` itself started; ones that were already running stay up.
  if [[ -s "$RUN/infra-started" ]]; then
    # shellcheck disable=SC2046
    bash "$ROOT/dev/infra.sh" down $(sort -u "$RUN/infra-started")
    rm -f "$RUN/infra-started"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  logs) exec tail -n 100 -F "$LOG" ;;
  status) alive && echo "services running (honcho pid $(cat "$PIDFILE"))" || echo "services not running"; bash "$ROOT/dev/infra.sh" status ;;
  *) echo "usage: $0 up|down|logs|status" >&2; exit 2 ;;
esac
