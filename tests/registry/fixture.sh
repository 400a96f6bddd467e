#!/usr/bin/env bash
# ctest fixture: a real OCI registry (Debian's docker-registry, Distribution 2.8) on a free
# loopback port, with signed plugins pushed by `keel push`.
#
#   fixture.sh start WORK KEEL_CLI FIXTURE_DIR   start it, publish the echo fixture (Keel
#                                                manifest) and the legacy fixture (ThemisDB
#                                                plugin.json), both signed with a new key;
#                                                write WORK/registry.env (key=value lines)
#   fixture.sh stop WORK                         kill it and remove WORK
#
# registry.env: addr (127.0.0.1:PORT), echo_ref, echo_digest, legacy_ref, legacy_digest,
# trust (a trust store trusting the signing key).
set -euo pipefail

cmd=${1:?start|stop}
work=${2:?work directory}

registry_binary() {
  local b
  b=$(dpkg -L docker-registry 2>/dev/null | grep '/bin/docker-registry$' | head -n1 || true)
  [ -n "$b" ] && [ -x "$b" ] && { echo "$b"; return; }
  [ -x /usr/bin/docker-registry ] && { echo /usr/bin/docker-registry; return; }
  echo "the docker-registry Debian package is required (.ci/run installs it)" >&2
  exit 1
}

# GET /v2/ answered with 200 (bash's /dev/tcp: no curl needed).
ready() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
    IFS= read -r -t 2 line <&3 || exit 1
    [[ "$line" == HTTP/1.?\ 200* ]]
  ) 2>/dev/null
}

case "$cmd" in
start)
  keel=${3:?keel CLI}
  fixtures=${4:?fixture dir}
  [ -f "$work/pid" ] && kill "$(cat "$work/pid")" 2>/dev/null || true
  rm -rf "$work"
  mkdir -p "$work/storage"
  bin=$(registry_binary)
  started=""
  for _attempt in 1 2 3 4 5 6 7 8; do
    port=$(( 20000 + RANDOM % 40000 ))
    cat > "$work/config.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
YAML
    setsid "$bin" serve "$work/config.yml" </dev/null >/dev/null 2>>"$work/registry.log" &
    echo $! > "$work/pid"
    for _i in $(seq 1 200); do
      if ready "$port"; then started=1; break; fi
      kill -0 "$(cat "$work/pid")" 2>/dev/null || break
      sleep 0.05
    done
    [ -n "$started" ] && break
    kill "$(cat "$work/pid")" 2>/dev/null || true
  done
  [ -n "$started" ] || { echo "docker-registry did not start; see $work/registry.log" >&2; exit 1; }

  # Sign copies of the fixtures with a key of this run, publish them.
  "$keel" trust init "$work/trust.json" --key "$work/fleet" >/dev/null
  # (`keel push` publishes a folder's keel.json or ThemisDB plugin.json.)
  mkdir "$work/echo"
  cp "$fixtures/echo/libecho.so" "$work/echo/"
  cp "$fixtures/echo/echo.json" "$work/echo/keel.json"
  cp -r "$fixtures/legacy" "$work/legacy"
  "$keel" sign --key "$work/fleet.key" "$work/echo/keel.json" >/dev/null
  "$keel" sign --key "$work/fleet.key" "$work/legacy/plugin.json" >/dev/null
  echo_digest=$("$keel" push "$work/echo" "127.0.0.1:$port/plugins/echo:1.0.0")
  legacy_digest=$("$keel" push "$work/legacy" "127.0.0.1:$port/themis/legacy:1.0.0")
  cat > "$work/registry.env" <<ENV
addr=127.0.0.1:$port
echo_ref=127.0.0.1:$port/plugins/echo:1.0.0
echo_digest=$echo_digest
legacy_ref=127.0.0.1:$port/themis/legacy:1.0.0
legacy_digest=$legacy_digest
trust=$work/trust.json
ENV
  echo "registry on 127.0.0.1:$port (pid $(cat "$work/pid")); echo $echo_digest; legacy $legacy_digest"
  ;;
stop)
  if [ -f "$work/pid" ]; then
    pid=$(cat "$work/pid")
    kill "$pid" 2>/dev/null || true
    for _i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  ;;
*)
  echo "usage: $0 start WORK KEEL_CLI FIXTURE_DIR | stop WORK" >&2
  exit 2
  ;;
esac
