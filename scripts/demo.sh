#!/usr/bin/env bash
# The local demo: test IdP on :9000, echo upstream on :9100, and on :8080
# the gate: the filter inside Envoy (default) or inside nginx with
# ngx_wasm_module (`nginx`), or the sidecar on :4180 behind stock nginx
# (`nginx-sidecar`), Caddy (`caddy`) or Traefik (`traefik`); or a fleet
# (`fleet`): two sidecars on :4180 and :4181 sharing Redis on :6390, behind
# one stock nginx (round robin), with a short tour. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
proxy=${1:-envoy}
case "$proxy" in envoy|nginx|nginx-sidecar|caddy|traefik|fleet) ;; *) echo "usage: $0 [envoy|nginx|nginx-sidecar|caddy|traefik|fleet]" >&2; exit 2 ;; esac
./scripts/setup.sh
case "$proxy" in
  nginx) module=$(./scripts/build-ngx-wasm.sh | tail -n 1) ;;
  nginx-sidecar|caddy|traefik|fleet) cargo build --release -q -p oidc-edge-sidecar ;;
  *) ;;
esac

mkdir -p .run
# Run as root, nginx would start its workers as `nobody`, which cannot read a
# checkout in a directory only root may enter: keep them the invoking user.
nginx_globals='daemon off;'
[ "$(id -u)" -eq 0 ] && nginx_globals='daemon off; user root;'
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ports="8080 9000 9100"
[ "$proxy" = envoy ] && ports="$ports 9901"
case "$proxy" in nginx-sidecar|caddy|traefik) ports="$ports 4180" ;; fleet) ports="$ports 4180 4181 6390" ;; *) ;; esac
for port in $ports; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is already in use; stop whatever listens there first" >&2
    exit 1
  fi
done

export OIDC_EDGE_CLIENT_SECRET=demo-secret
export OIDC_EDGE_COOKIE_SECRET="${OIDC_EDGE_COOKIE_SECRET:-$(head -c 32 /dev/urandom | base64)}"
export DEMO_API_KEY=demo-api-key-123

node tests/idp/idp.mjs --port 9000 >.run/demo-idp.log 2>&1 & pids+=($!)
.venv/bin/python tests/upstream/echo.py 9100 >.run/demo-echo.log 2>&1 & pids+=($!)
case "$proxy" in
nginx-sidecar|caddy|traefik)
  target/release/oidc-edge serve --config sidecar/demo.yaml >.run/demo-sidecar.log 2>&1 & pids+=($!)
  ;;
fleet)
  redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no >.run/demo-redis.log 2>&1 & pids+=($!)
  # The demo's sidecar config twice, on two ports, with the store, decisions
  # logged, and a one-minute refresh interval to watch refreshes happen.
  for instance in a b; do
    port=4180; [ "$instance" = b ] && port=4181
    sed -e "s|listen: 127.0.0.1:4180|listen: 127.0.0.1:$port|" -e "s|log_level: info|log_level: debug|" \
        -e "s|^  lifetime: 12h|  lifetime: 12h\n  refresh_interval: 1m|" sidecar/demo.yaml >".run/fleet-$instance.yaml"
    printf 'store:\n  url: redis://127.0.0.1:6390/0\n' >>".run/fleet-$instance.yaml"
    target/release/oidc-edge serve --config ".run/fleet-$instance.yaml" >".run/demo-sidecar-$instance.log" 2>&1 & pids+=($!)
  done
  ;;
*) ;;
esac
case "$proxy" in
envoy)
  .venv/bin/envoy -c envoy/demo/envoy.yaml --concurrency 2 --log-level warn --component-log-level wasm:info \
    >.run/demo-envoy.log 2>&1 & pids+=($!)
  ;;
nginx)
  prefix="$PWD/.run/demo-nginx"
  mkdir -p "$prefix/tmp"
  sed -e "s|{{MODULE}}|$module|" -e "s|{{PREFIX}}|$prefix|g" \
      -e "s|{{DEMO_WASM}}|$PWD/nginx/demo-wasm|g" nginx/demo.conf >"$prefix/nginx.conf"
  /usr/sbin/nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" -g "$nginx_globals" \
    >.run/demo-nginx.log 2>&1 & pids+=($!)
  ;;
nginx-sidecar|fleet)
  prefix="$PWD/.run/demo-nginx-sidecar"
  mkdir -p "$prefix/tmp"
  cp -r nginx/oidc-edge "$prefix/"
  # Both instances behind the snippet's one upstream.
  [ "$proxy" = fleet ] && sed -i "s|server 127.0.0.1:4180;|server 127.0.0.1:4180;\n    server 127.0.0.1:4181;|" "$prefix/oidc-edge/http.conf"
  sed -e "s|{{PREFIX}}|$prefix|g" -e "s|{{SITE}}|$PWD/nginx/www|g" nginx/sidecar-demo.conf >"$prefix/nginx.conf"
  /usr/sbin/nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" -g "$nginx_globals" \
    >.run/demo-nginx.log 2>&1 & pids+=($!)
  ;;
caddy)
  .venv/bin/caddy run --config caddy/Caddyfile --adapter caddyfile >.run/demo-caddy.log 2>&1 & pids+=($!)
  ;;
traefik)
  # The file provider reads every file of its directory (as Go templates).
  mkdir -p .run/demo-traefik && rm -f .run/demo-traefik/*.yml
  cp traefik/demo.yml traefik/oidc-edge.yml .run/demo-traefik/
  .venv/bin/traefik --entryPoints.web.address=127.0.0.1:8080 --providers.file.directory=.run/demo-traefik \
    --providers.file.watch=false --log.level=ERROR --global.checkNewVersion=false \
    --global.sendAnonymousUsage=false >.run/demo-traefik.log 2>&1 & pids+=($!)
  ;;
esac

for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/oauth2/start || true)
  [ "$code" = 302 ] && break
  sleep 0.2
done
[ "${code:-}" = 302 ] || { echo "demo did not come up; see .run/demo-*.log" >&2; exit 1; }

case "$proxy" in
  envoy|nginx) gate="the filter runs inside $proxy" ;;
  nginx-sidecar) gate="stock nginx asks the sidecar through auth_request" ;;
  fleet) gate="stock nginx asks two sidecars on one Redis, round robin" ;;
  caddy) gate="Caddy asks the sidecar through forward_auth" ;;
  traefik) gate="Traefik asks the sidecar through forwardAuth" ;;
esac
cat <<MSG

  oidc-edge demo is up ($gate). Open in a browser:

    http://127.0.0.1:8080/public/     public: no login; the echo shows what the upstream got
    http://127.0.0.1:8080/            any signed-in user (choose alice, bob or carol at the IdP)
    http://127.0.0.1:8080/admin/      group "admins" only (alice)
    http://127.0.0.1:8080/media/      groups "users" or "admins" (alice, bob)
    http://127.0.0.1:8080/sonarr/     any user; the upstream also gets x-api-key
    http://127.0.0.1:8080/oauth2/sign_out   sign out here and at the IdP

  Try it with curl:  curl -i http://127.0.0.1:8080/api/   (401 JSON, not a redirect)
MSG
case "$proxy" in
envoy)
  echo "  Counters:          curl -s http://127.0.0.1:9901/stats | grep oidc_edge"
  echo "  Logs:              .run/demo-envoy.log, .run/demo-idp.log" ;;
nginx)
  echo "  Logs:              .run/demo-nginx/error.log, .run/demo-idp.log" ;;
fleet)
  echo "  Each sidecar:      curl -s http://127.0.0.1:4180/metrics, :4181/metrics; the IdP: curl -s http://127.0.0.1:9000/test/stats"
  echo "  Logs:              .run/demo-sidecar-a.log and -b.log (a JSON line per decision), .run/demo-idp.log"
  echo
  echo "  The tour (a burst on a session due for refresh):"
  .venv/bin/python scripts/fleet-tour.py || echo "  the tour failed; see the logs above" ;;
*)
  [ "$proxy" = nginx-sidecar ] && echo "  Static site:       http://127.0.0.1:8080/site/ (public), /site/private/ (signed in)"
  echo "  Counters:          curl -s http://127.0.0.1:4180/metrics"
  proxy_log=.run/demo-$proxy.log
  [ "$proxy" = nginx-sidecar ] && proxy_log=.run/demo-nginx-sidecar/error.log
  echo "  Logs:              .run/demo-sidecar.log (JSON lines), $proxy_log, .run/demo-idp.log" ;;
esac
printf '\n  Ctrl-C stops everything.\n'

wait -n "${pids[@]}"
echo "a demo process exited; see .run/demo-*.log" >&2
