#!/usr/bin/env bash
# The deployment run for real, on loopback only (ctest label `deploy`; root,
# podman, docker-registry):
#   1. deploy/build-image builds the image (tag localhost/hotboot:deploy-test)
#   2. Debian's docker-registry serves on 127.0.0.1:<free port>
#   3. hotboot keygen makes a signing key
#   4. deploy/snapshot-job runs INSIDE the image (preset tiny) with exactly the
#      capabilities deploy/k8s/deployment.yaml gives the replicas: build, sign,
#      verify, push to the registry
#   5. `hotboot inspect --json` of the snapshot it built shows the canary,
#      which must equal the job's summary
#   6. `podman kube play` of deploy/k8s/deployment.yaml, rendered for this
#      test (below), with the two ConfigMaps and the registry Secret
#   7. the replica must answer /readyz 200 within a deadline, and POST
#      /v1/generate with the canary's prompt must return the canary's tokens
#   7b. GET /metrics on the metrics port (the supervisor's): outcome ready, replica up, phases
#   8. no zombie in the container; `podman stop` of the replica's container: hotboot restore (PID 1)
#      forwards SIGTERM, the replica ends, the container exits well before the
#      stop timeout
#   9. `podman kube down`: no pod, no container of this test, nothing on its
#      port is left
# Every exit path removes what the test made (trap). Each step prints its time.
#
# The rendering of deployment.yaml, the only changes made to it:
#   - replicas 2 -> 1; the Deployment's name gets a per-run suffix
#   - hostNetwork: true (the pod reaches the loopback registry), and so no
#     `ports:` list (podman refuses port mappings on the host network); the
#     probes' port 8080 and --port 8080 -> a free port, --metrics-port 9400
#     -> another
#   - $(HOTBOOT_SNAPSHOT) -> the pushed reference (podman 4.3 does not expand
#     $(VAR) in a command; Kubernetes does, from the same ConfigMap key)
#   - --plain-http (the test registry has no TLS)
#   - the image -> the test's tag; the node cache and weights hostPaths ->
#     directories of this run; the registry Secret -> a per-run podman secret,
#     the trust ConfigMap -> a per-run name (podman keeps its volume after
#     kube down: the test removes it)
# podman runs no probes without systemd: the test polls /readyz itself.
#
# Usage: kube_play_test.sh [--build-dir DIR] [--keep]
# Exit 0 passed, 1 failed, 77 skipped (not root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build_dir=$repo/build keep=0
while (($#)); do
  case $1 in
    --build-dir) build_dir=$(cd "$2" && pwd); shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "kube_play_test: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

t_start=$SECONDS
log() { printf 'deploy-test: %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
timings=()
timed() {  # timed LABEL CMD...
  local label=$1 t0=$SECONDS rc=0; shift
  "$@" || rc=$?
  timings+=("$(printf '%-28s %4d s' "$label" $((SECONDS - t0)))")
  log "$label: $((SECONDS - t0)) s$( ((rc)) && echo " (exit $rc)")"
  return $rc
}

if [[ $(id -u) -ne 0 ]]; then
  log "SKIPPED: needs root (podman storage, CRIU in the containers)"; exit 77
fi
for tool in podman docker-registry python3 curl; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (tools/install-deps installs it)"
done
hotboot=$build_dir/bin/hotboot
[[ -x $hotboot ]] || fail "$hotboot is missing: build first"

image=localhost/hotboot:deploy-test
run_id=$$
name=hotboot-replica-t$run_id
secret=hotboot-registry-auth-t$run_id
trust_cm=hotboot-trust-t$run_id
dir=$(mktemp -d /var/tmp/hotboot-deploy-test.XXXXXX)
chmod 755 "$dir"
registry_pid=""
played=""
cleanup() {
  local rc=$?
  set +e
  if [[ -n $played ]]; then
    podman kube down "$played" >/dev/null 2>&1
  fi
  # Whatever a failed step left: this run's containers and pod, by name.
  podman rm -f -t 0 "$name-job" >/dev/null 2>&1
  podman pod rm -f -t 0 "$name-pod-0" >/dev/null 2>&1
  podman secret rm "$secret" >/dev/null 2>&1
  # kube down leaves the volume that a ConfigMap volume became.
  podman volume rm -f "$trust_cm" >/dev/null 2>&1
  if [[ -n $registry_pid ]]; then
    kill "$registry_pid" 2>/dev/null
    wait "$registry_pid" 2>/dev/null
  fi
  if ((keep)) || ((rc != 0 && rc != 77)); then
    log "left $dir to look at"
  else
    rm -rf --one-file-system "$dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_for SECONDS CMD...: polls CMD every 0.2 s until it succeeds or the deadline passes.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
json_get() {  # json_get FILE PYTHON-EXPR-ON-j
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(json.dumps(eval(sys.argv[2])))' "$1" "$2"
}
# podman's default nofile/nproc limits can exceed this host's (runc then
# fails "error setting rlimits"): the containers get this shell's hard limits.
nofile=$(ulimit -Hn); [[ $nofile == unlimited || $nofile -gt 1048576 ]] && nofile=1048576
nproc=$(ulimit -Hu); [[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
ulimits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' \
  "$nofile" "$nofile" "$nproc" "$nproc" >"$dir/containers.conf"

# The capability list of the replicas, read from the manifest: the job must
# run with the same (CRIU restores the capability sets of the build).
manifest=$repo/deploy/k8s/deployment.yaml
caps=$(sed -n 's/^ *add: \[\(.*\)\]$/\1/p' "$manifest" | head -1 | tr -d ' "')
[[ -n $caps ]] || fail "no capabilities.add list in $manifest"
log "capabilities (from deployment.yaml): $caps; seccomp unconfined"

# 1. The image.
timed "build image" "$repo/deploy/build-image" --tag "$image" --build-dir "$build_dir" ||
  fail "deploy/build-image failed"

# 2. The registry, on loopback.
start_registry() {
  local port
  port=$(free_port)
  mkdir -p "$dir/registry"
  cat >"$dir/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/registry/storage
http:
  addr: 127.0.0.1:$port
  secret: hotboot-deploy-test
EOF
  docker-registry serve "$dir/registry/config.yml" >"$dir/registry/log" 2>&1 &
  registry_pid=$!
  registry_port=$port
  wait_for 20 curl -sf -o /dev/null "http://127.0.0.1:$port/v2/"
}
for attempt in 1 2 3; do
  start_registry && break
  kill "$registry_pid" 2>/dev/null; wait "$registry_pid" 2>/dev/null || true; registry_pid=""
  ((attempt < 3)) || { cat "$dir/registry/log" >&2; fail "docker-registry did not start"; }
done
ref=oci://127.0.0.1:$registry_port/hotboot/tiny:deploy-test
log "registry on 127.0.0.1:$registry_port"

# 3. The signing key.
"$hotboot" keygen --out "$dir/key" >/dev/null || fail "hotboot keygen failed"

# 4. The snapshot job, inside the image.
mkdir -p "$dir/out" "$dir/keys"
cp "$dir/key" "$dir/keys/snapshot-signing"
cp "$dir/key.pub" "$dir/keys/snapshot-signing.pub"
run_job() {
  podman run --rm --name "$name-job" --runtime runc --network host "${ulimits[@]}" \
    --cap-drop ALL --cap-add "$caps" --security-opt seccomp=unconfined --shm-size 512m \
    -v "$dir/keys:/etc/hotboot/signing:ro" -v "$dir/out:/out" \
    -e HOTBOOT_SNAPSHOT_REF="$ref" -e HOTBOOT_PRESET=tiny \
    -e HOTBOOT_SIGNING_KEY=/etc/hotboot/signing/snapshot-signing \
    -e HOTBOOT_PUSH_FLAGS=--plain-http -e HOTBOOT_SNAPSHOT_OUT=/out/snapshot.hbsnap \
    "$image" /usr/local/share/hotboot/snapshot-job --json >"$dir/job.json" 2>"$dir/job.log"
}
timed "snapshot job (in image)" run_job || { tail -30 "$dir/job.log" >&2; fail "snapshot-job failed"; }
[[ $(json_get "$dir/job.json" 'j["ok"]') == true ]] || fail "snapshot-job summary: $(cat "$dir/job.json")"
job_tokens=$(json_get "$dir/job.json" 'j["canary_tokens"]')
log "job: $(json_get "$dir/job.json" 'j["pushed"]'), signed by $(json_get "$dir/job.json" 'j["signed_by"]')"

# 5. The canary, as the snapshot records it.
"$hotboot" inspect --json "$dir/out/snapshot.hbsnap" >"$dir/inspect.json" || fail "hotboot inspect failed"
canary_tokens=$(json_get "$dir/inspect.json" 'j["manifest"]["warm"]["canary"]["tokens"]')
prompt=$(json_get "$dir/inspect.json" 'j["manifest"]["warm"]["canary"]["prompt"]')
max_tokens=$(json_get "$dir/inspect.json" 'j["manifest"]["warm"]["canary"]["max_tokens"]')
[[ $canary_tokens == "$job_tokens" ]] ||
  fail "the job's canary tokens $job_tokens differ from hotboot inspect's $canary_tokens"
log "canary: $prompt -> $canary_tokens"

# 6. The Deployment's pod under podman kube play.
port=$(free_port)
metrics_port=$(free_port)
mkdir -p "$dir/node/cache" "$dir/node/weights"
chmod 755 "$dir/node" "$dir/node/cache" "$dir/node/weights"
played=$dir/deployment.yaml
sed -e "s|^  name: hotboot-replica$|  name: $name|" \
    -e 's|^  replicas: 2$|  replicas: 1|' \
    -e 's|^      automountServiceAccountToken: false$|&\n      hostNetwork: true|' \
    -e '/^          ports:$/,/^              protocol: TCP$/d' \
    -e '/^            - name: metrics$/,/^              protocol: TCP$/d' \
    -e "s|^            - \"8080\"$|            - \"$port\"|" \
    -e "s|^            - \"9400\"$|            - \"$metrics_port\"|" \
    -e "s|^        prometheus.io/port: \"9400\"$|        prometheus.io/port: \"$metrics_port\"|" \
    -e "s|^              port: 8080$|              port: $port|" \
    -e "s|^            - \$(HOTBOOT_SNAPSHOT)$|            - $ref\n            - --plain-http|" \
    -e "s|^          image: localhost/hotboot:latest$|          image: $image|" \
    -e "s|^            path: /var/lib/hotboot/cache$|            path: $dir/node/cache|" \
    -e "s|^            path: /var/lib/hotboot/weights$|            path: $dir/node/weights|" \
    -e "s|^            secretName: hotboot-registry-auth$|            secretName: $secret|" \
    -e "s|^            name: hotboot-trust$|            name: $trust_cm|" \
    "$manifest" >"$played"
# The Service is not a kind podman kube play runs.
sed -i '/^---$/,$d' "$played"
for want in "name: $name" "replicas: 1" "hostNetwork: true" "- \"$port\"" "port: $port" "- \"$metrics_port\"" "- $ref" \
            "- --plain-http" "image: $image" "path: $dir/node/cache" "path: $dir/node/weights" "secretName: $secret" "name: $trust_cm"; do
  grep -qF -- "$want" "$played" || fail "rendering deployment.yaml: '$want' is missing (did the manifest change?)"
done
if grep -q -e 'containerPort' -e '8080' -e '"9400"' -e 'HOTBOOT_SNAPSHOT)' "$played"; then
  fail "rendering deployment.yaml left a port 8080 or 9400 or \$(HOTBOOT_SNAPSHOT)"
fi
cat >"$dir/cm-snapshot.yaml" <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: hotboot-snapshot
data:
  HOTBOOT_SNAPSHOT: $ref
EOF
{
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\ndata:\n  snapshot-signing.pub: |\n' "$trust_cm"
  sed 's/^/    /' "$dir/key.pub"
} >"$dir/cm-trust.yaml"
cat >"$dir/secret.yaml" <<'EOF'
apiVersion: v1
kind: Secret
metadata:
  name: hotboot-registry-auth
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{"auths": {}}'
EOF
podman secret create "$secret" "$dir/secret.yaml" >/dev/null || fail "podman secret create failed"

ctr=$name-pod-0-replica
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]]; }
play() {
  CONTAINERS_CONF=$dir/containers.conf podman kube play --configmap "$dir/cm-snapshot.yaml" \
    --configmap "$dir/cm-trust.yaml" "$played" >"$dir/play.log" 2>&1 || return 1
  wait_for 90 ready
}
if ! timed "kube play to /readyz 200" play; then
  cat "$dir/play.log" >&2
  podman logs "$ctr" 2>&1 | tail -40 >&2 || true
  fail "the replica was not ready on 127.0.0.1:$port/readyz within 90 s"
fi
podman logs "$ctr" >"$dir/replica.log" 2>&1 || true
grep -q 'trusted by the policy' "$dir/replica.log" ||
  fail "the replica's log does not say the snapshot's signature was trusted (trust policy not in force?)"
restarts=$(podman inspect --format '{{.RestartCount}}' "$ctr")
[[ $restarts == 0 ]] || fail "the replica's container restarted $restarts times before it was ready"

# 7. The canary request answers as at build.
curl -sf -X POST "http://127.0.0.1:$port/v1/generate" -H 'Content-Type: application/json' \
  -d "{\"prompt\":$prompt,\"max_tokens\":$max_tokens}" >"$dir/answer.json" || fail "POST /v1/generate failed"
answer_tokens=$(json_get "$dir/answer.json" 'j["tokens"]')
[[ $answer_tokens == "$canary_tokens" ]] ||
  fail "the replica answered $answer_tokens, the build's canary is $canary_tokens"
log "the replica answers the canary: $answer_tokens"

# 7b. What operators watch: the supervisor's metrics on their own port.
curl -sf "http://127.0.0.1:$metrics_port/metrics" >"$dir/metrics.txt" || fail "GET /metrics on the metrics port failed"
for want in 'hotboot_restore_outcome{outcome="ready"} 1' 'hotboot_replica_up{port="'"$port"'"} 1' \
            'hotboot_restore_time_to_ready_seconds ' 'hotboot_restore_phase_seconds{phase="criu_restore"}'; do
  grep -qF -- "$want" "$dir/metrics.txt" || fail "/metrics lacks '$want': $(head -c 2000 "$dir/metrics.txt")"
done
log "metrics: $(grep '^hotboot_restore_time_to_ready_seconds ' "$dir/metrics.txt")"

# 8. SIGTERM reaches the replica through hotboot restore (PID 1), and PID 1
# has left no zombie behind.
pid1=$(podman exec "$ctr" cat /proc/1/cmdline | tr '\0' ' ')
[[ $pid1 == "hotboot restore "* ]] || fail "PID 1 of the container is '$pid1', not hotboot restore"
zombies=$(podman exec "$ctr" bash -c 'for s in /proc/[0-9]*/status; do
  grep -q "^State:.*Z" "$s" 2>/dev/null && grep "^Name:" "$s"; done; true')
[[ -z $zombies ]] || fail "zombies in the replica's container: $zombies"
stop_t0=$SECONDS
podman stop --time 20 "$ctr" >/dev/null 2>>"$dir/podman.log" || fail "podman stop failed"
stop_s=$((SECONDS - stop_t0))
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$ctr")
((stop_s < 15)) || fail "the container took ${stop_s} s to stop on SIGTERM (killed at the timeout?)"
[[ $exit_code != 137 ]] || fail "the container was killed (exit 137), SIGTERM was not handled"
log "SIGTERM: the container stopped in ${stop_s} s, exit $exit_code"
! ready || fail "the replica still answers after its container stopped"

# 9. Down, and nothing left.
timed "kube down" podman kube down "$played" >/dev/null 2>>"$dir/podman.log" || fail "podman kube down failed"
played=""
left=$(podman ps -a --filter "name=$name" --format '{{.Names}}')
[[ -z $left ]] || fail "containers left after kube down: $left"
podman volume rm "$trust_cm" >/dev/null || fail "could not remove the ConfigMap's volume $trust_cm"
! podman pod exists "$name-pod-0" || fail "pod $name-pod-0 left after kube down"
! curl -s -o /dev/null "http://127.0.0.1:$port/livez" || fail "something still answers on port $port"

size=$(podman image inspect --format '{{.Size}}' "$image")
timings+=("$(printf '%-28s %4d s' total $((SECONDS - t_start)))")
log "PASSED (image $image, $((size / 1000000)) MB)"
printf '  %s\n' "${timings[@]}" >&2
