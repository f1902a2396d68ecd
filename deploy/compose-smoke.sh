#!/usr/bin/env bash
# End-to-end smoke test of docker-compose.yml on a real Docker engine (not part of CI: `bash .ci/run`
# needs no Docker). It builds and starts the whole stack, waits for every service to be healthy and the
# migrate one-shot to have exited 0, checks the stack through its public faces, then removes it all
# (`down -v`). It prints each check and exits non-zero on the first failure.
#
#   deploy/compose-smoke.sh            # from the repository root; see docs/operations.md
#
# Images: the official ones when they are present or can be pulled. Where one cannot (no Docker Hub),
# a stand-in from deploy/local-images/ is built on a local Debian bookworm base (debian:bookworm if it
# can be pulled, else debootstrap from deb.debian.org, which needs root and debootstrap) and the
# compose file's COLDCHAIN_*_IMAGE variable is pointed at it. Nothing changes for a normal user.
#
# Environment: COLDCHAIN_SMOKE_PROJECT (compose project, default coldchain-smoke),
# COLDCHAIN_API_PORT / COLDCHAIN_MQTT_PORT (default 127.0.0.1:18000 / 127.0.0.1:11883, so a broker
# or API already on the host's 8000/1883 is left alone), COLDCHAIN_SMOKE_TIMEOUT (seconds to wait
# for health, default 600), COLDCHAIN_SMOKE_KEEP=1 (leave the stack running at the end),
# COLDCHAIN_SMOKE_OFFICIAL=1 (never build stand-ins: fail if an official image cannot be had),
# COLDCHAIN_SMOKE_REBUILD=1 (build the stand-ins again even if present).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export COMPOSE_PROJECT_NAME="${COLDCHAIN_SMOKE_PROJECT:-coldchain-smoke}"
export COLDCHAIN_API_PORT="${COLDCHAIN_API_PORT:-127.0.0.1:18000}"
export COLDCHAIN_MQTT_PORT="${COLDCHAIN_MQTT_PORT:-127.0.0.1:11883}"
export COLDCHAIN_SECRET_KEY="${COLDCHAIN_SECRET_KEY:-$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')}"
TIMEOUT="${COLDCHAIN_SMOKE_TIMEOUT:-600}"
API="http://${COLDCHAIN_API_PORT}"
[[ "$COLDCHAIN_API_PORT" == *:* ]] || API="http://127.0.0.1:${COLDCHAIN_API_PORT}"
SAMPLE="$ROOT/warehouses/sample/chengdu"
STARTED=$SECONDS
CHECKS=()

stamp() { printf '[%4ds]' $((SECONDS - STARTED)); }
say() { echo "$(stamp) $*"; }
ok() { CHECKS+=("ok   $*"); say "ok: $*"; }
die() { say "FAILED: $*" >&2; exit 1; }
json() {  # json EXPR: evaluate a Python expression over the JSON document on stdin (as d)
    python3 -c 'import json, sys; d = json.load(sys.stdin); r = eval(sys.argv[1]); print(r if isinstance(r, str) else json.dumps(r))' "$1"
}

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
dc() { "${COMPOSE[@]}" "$@"; }
command -v curl >/dev/null || die "curl is needed"
command -v python3 >/dev/null || die "python3 is needed (JSON parsing)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info)"

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        say "last logs of the stack:" >&2
        dc ps >&2 2>/dev/null || true
        dc logs --no-color --tail 30 >&2 2>/dev/null || true
    fi
    if [[ "${COLDCHAIN_SMOKE_KEEP:-0}" == 1 ]]; then
        say "COLDCHAIN_SMOKE_KEEP=1: the stack stays up (${COMPOSE[*]} -p $COMPOSE_PROJECT_NAME down -v)"
    else
        dc down -v --remove-orphans >/dev/null 2>&1 || true
        say "stack removed (down -v)"
    fi
    if [[ $rc -eq 0 ]]; then
        echo "---- compose smoke: all ${#CHECKS[@]} checks passed in $((SECONDS - STARTED)) s (load average $(cut -d' ' -f1-3 /proc/loadavg))"
        printf '  %s\n' "${CHECKS[@]}"
    else
        echo "---- compose smoke FAILED (exit $rc) after $((SECONDS - STARTED)) s; passed before it:" >&2
        printf '  %s\n' "${CHECKS[@]}" >&2
    fi
}
trap cleanup EXIT

# ---- images: official, or local stand-ins when Docker Hub cannot be reached --------------------------
have_or_pull() { docker image inspect "$1" >/dev/null 2>&1 || timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

BASE=coldchain-local/debian:bookworm
ensure_base() {
    docker image inspect "$BASE" >/dev/null 2>&1 && return
    if have_or_pull debian:bookworm; then docker tag debian:bookworm "$BASE"; return; fi
    command -v debootstrap >/dev/null || die "no debian:bookworm image and no debootstrap (apt-get install debootstrap)"
    [[ $(id -u) == 0 ]] || die "debootstrap needs root to build the local Debian base"
    local rootfs; rootfs="$(mktemp -d)"
    say "building $BASE with debootstrap (a few minutes)"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
    rm -rf "$rootfs"
}

# variable  official image  stand-in image  stand-in folder
IMAGES=("COLDCHAIN_PYTHON_IMAGE python:3.11-slim coldchain-local/python:3.11-slim python"
        "COLDCHAIN_POSTGRES_IMAGE postgres:15 coldchain-local/postgres:15 postgres"
        "COLDCHAIN_REDIS_IMAGE redis:7 coldchain-local/redis:7 redis"
        "COLDCHAIN_MOSQUITTO_IMAGE eclipse-mosquitto:2 coldchain-local/mosquitto:2 mosquitto")
for row in "${IMAGES[@]}"; do
    read -r var official standin folder <<<"$row"
    if [[ -n "${!var:-}" ]]; then
        say "$var=${!var} (given)"
    elif have_or_pull "$official"; then
        say "$official: official image"
    elif [[ "${COLDCHAIN_SMOKE_OFFICIAL:-0}" == 1 ]]; then
        die "$official cannot be pulled and COLDCHAIN_SMOKE_OFFICIAL=1"
    else
        if [[ "${COLDCHAIN_SMOKE_REBUILD:-0}" == 1 ]] || ! docker image inspect "$standin" >/dev/null 2>&1; then
            ensure_base
            say "$official cannot be pulled: building the stand-in $standin (deploy/local-images/$folder)"
            ctx="$(mktemp -d)"
            cp -r "deploy/local-images/$folder/." "$ctx/"
            # the host's own CAs (a TLS-intercepting proxy it trusts), for pip in builds FROM the stand-in
            [[ "$folder" != python ]] || cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
            docker build -q --build-arg "BASE=$BASE" -t "$standin" "$ctx" >/dev/null || die "building $standin"
            rm -rf "$ctx"
        fi
        export "$var=$standin"
        say "$official cannot be pulled: using the stand-in $standin"
    fi
done

# ---- up, and wait until every service is healthy (migrate: exited 0) ---------------------------------
dc down -v --remove-orphans >/dev/null 2>&1 || true
say "${COMPOSE[*]} up -d --build (project $COMPOSE_PROJECT_NAME, API $API, MQTT $COLDCHAIN_MQTT_PORT)"
t0=$SECONDS
dc up -d --build >/tmp/compose-smoke-up.$$.log 2>&1 || { tail -40 /tmp/compose-smoke-up.$$.log >&2; die "up failed"; }
rm -f /tmp/compose-smoke-up.$$.log
say "up returned after $((SECONDS - t0)) s"

mapfile -t SERVICES < <(dc config --services)
declare -A STATE
read_states() {  # STATE[service]="status health exitcode", all containers of the project in one docker call
    local ids service rest
    STATE=()
    ids="$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")"
    [[ -n "$ids" ]] || return 0
    # shellcheck disable=SC2086
    while read -r service rest; do STATE[$service]="$rest"; done < <(docker inspect -f \
        '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.State.ExitCode}}' $ids)
}
deadline=$((SECONDS + TIMEOUT))
while :; do
    pending=()
    read_states
    for s in "${SERVICES[@]}"; do
        read -r status health code <<<"${STATE[$s]:-missing - -}"
        if [[ "$s" == migrate ]]; then
            [[ "$status" == exited && "$code" != 0 ]] && die "migrate exited $code"
            [[ "$status" == exited ]] || pending+=("$s:$status")
        else
            [[ "$status" == exited || "$status" == dead ]] && die "$s $status (exit $code)"
            [[ "$health" == unhealthy ]] && die "$s is unhealthy"
            [[ "$status" == running && "$health" == healthy ]] || pending+=("$s:$status/$health")
        fi
    done
    [[ ${#pending[@]} -eq 0 ]] && break
    ((SECONDS < deadline)) || die "not healthy after ${TIMEOUT} s: ${pending[*]}"
    sleep 3
done
ok "all ${#SERVICES[@]} services up $((SECONDS - t0)) s after up: migrate exited 0, the other $((${#SERVICES[@]} - 1)) healthy"
for s in "${SERVICES[@]}"; do printf '       %-11s %s\n' "$s" "${STATE[$s]}"; done

# ---- the API ---------------------------------------------------------------------------------------
t1=$SECONDS
ready="$(curl -fsS "$API/api/v1/ready")" || die "GET /api/v1/ready did not answer 200"
say "   /ready answered in $((SECONDS - t1)) s"
[[ "$(json 'd["status"]' <<<"$ready")" == ready ]] || die "ready: $ready"
ok "GET /api/v1/ready: $ready"

PW="smoke-$(head -c 12 /dev/urandom | base64 | tr -d '\n/+=')"
dc exec -T api coldchain user add smoke-dispatcher --role dispatcher --password-stdin <<<"$PW" >/dev/null 2>&1 \
    || die "coldchain user add in the api container"
token="$(curl -fsS -X POST "$API/api/v1/auth/token" --data-urlencode username=smoke-dispatcher \
         --data-urlencode "password=$PW" | json 'd["access_token"]')" || die "login (POST /api/v1/auth/token)"
AUTH=(-H "Authorization: Bearer $token")
ok "login as a dispatcher created with coldchain user add (POST /api/v1/auth/token)"

get() { curl -fsS "${AUTH[@]}" "$API$1"; }
post_json() { curl -fsS "${AUTH[@]}" -H 'Content-Type: application/json' -X POST "$API$1" -d "$2"; }
SEEN="$(mktemp)"
wait_job() {  # wait_job HREF LABEL: poll a job to SUCCESS, print it; the states it went through go to $SEEN
    local href="$1" label="$2" out state seen="" until=$((SECONDS + 300))
    while :; do
        out="$(curl -fsS "${AUTH[@]}" "$href")" || die "$label: GET $href"
        state="$(json 'd["state"]' <<<"$out")"
        [[ "$state" == PROGRESS ]] && state="PROGRESS($(json 'd.get("progress")' <<<"$out"))"
        [[ "$seen" == *"$state"* ]] || seen="${seen:+$seen > }$state"
        case "$state" in
            SUCCESS) echo "$out"; echo "$seen" >"$SEEN"; return ;;
            FAILURE|REVOKED) die "$label: $state: $(json 'd.get("error")' <<<"$out")" ;;
        esac
        ((SECONDS < until)) || die "$label: still $state after 300 s"
        sleep 0.5
    done
}

files=(); for f in "$SAMPLE"/*.csv; do files+=(-F "files=@$f"); done
load="$(curl -fsS "${AUTH[@]}" -X POST "$API/api/v1/scenarios/load" "${files[@]}")" || die "POST /scenarios/load"
load_job="$(wait_job "$(json 'd["href"]' <<<"$load")" "scenario load")"
loaded="$(json '" ".join(f.split(".")[0] + "=" + str(c["inserted"]) for f, c in d["result"]["counts"].items())' <<<"$load_job")"
refused="$(json 'len(d["result"]["rejected"])' <<<"$load_job")"
[[ "$refused" == 0 && "$loaded" != *=0* ]] || die "scenario load: inserted $loaded, $refused refused: $(json 'd["result"]["rejected"][:3]' <<<"$load_job")"
ok "scenario load of the sample (upload, a Celery job on a worker): $(cat "$SEEN"); inserted $loaded"

DAY="$(awk -F, 'NR == 2 {print $2}' "$SAMPLE/orders.csv")"
alloc="$(post_json /api/v1/allocations "{\"date\": \"$DAY\"}")" || die "POST /allocations"
allocated="$(json 'd["allocated"]' <<<"$alloc")"
[[ "$allocated" -gt 0 ]] || die "allocated nothing on $DAY: $alloc"
ok "allocated $DAY: $allocated orders allocated, $(json 'len(d["unallocated"])' <<<"$alloc") not (no stock in reach, outside every service area)"

plan="$(post_json /api/v1/plans "{\"date\": \"$DAY\", \"time_limit\": 3}")" || die "POST /plans"
njobs="$(json 'len(d["jobs"])' <<<"$plan")"
t1=$SECONDS
for href in $(json '" ".join(j["href"] for j in d["jobs"])' <<<"$plan"); do
    result="$(wait_job "$href" "plan job")"
    say "   plan $(json 'd["params"]["depot"]' <<<"$result"): $(cat "$SEEN"); result $(json 'd["result"]' <<<"$result" | cut -c1-200)"
done
rm -f "$SEEN"
routes="$(get "/api/v1/plans?date=$DAY" | json 'sum(1 for r in d["routes"] if r.get("stops"))')" || die "GET /plans"
[[ "$routes" -gt 0 ]] || die "the plan of $DAY has no route with stops"
by_worker=""
for w in worker-a worker-b; do
    n="$(dc logs --no-color "$w" 2>/dev/null | grep -c 'plan_depot.*succeeded' || true)"
    by_worker="$by_worker $w=$n"
done
ok "planned $DAY through the API: $njobs depot jobs on the Celery workers done in $((SECONDS - t1)) s, $routes routes with stops (jobs per worker:$by_worker)"

# ---- telemetry through the compose Mosquitto --------------------------------------------------------
for s in ingestor-a ingestor-b; do
    dc logs --no-color "$s" 2>/dev/null | grep -q 'subscription granted: \$share/ingest/coldchain/v1/vehicles/+/telemetry' \
        || die "$s has no granted subscription on \$share/ingest/coldchain/v1/vehicles/+/telemetry"
done
ok "both ingestors subscribed on \$share/ingest/coldchain/v1/vehicles/+/telemetry"

mapfile -t VANS < <(awk -F, 'NR > 1 && $12 != "" {print $1 " " $12}' "$SAMPLE/vehicles.csv" | head -4)
SEQ0=$(( $(date +%s) * 10 ))
samples() {  # samples FIRST COUNT VAN DEVICE: one JSON sample a line, seconds apart, ending now
    python3 - "$@" <<'EOF'
import json, sys
from datetime import datetime, timedelta, timezone
first, count, _van, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
now = datetime.now(timezone.utc)
for k in range(count):
    ts = (now - timedelta(seconds=count - k)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    print(json.dumps({"device": device, "seq": first + k, "ts": ts, "temp_c": {"chilled": 3.5, "frozen": -19.0},
                      "door": {"chilled": "closed"}, "pos": [30.66, 104.07], "battery": 0.9}))
EOF
}
publish() {  # publish VAN < lines: one message per line, QoS 1, through the compose broker
    dc exec -T mosquitto mosquitto_pub -q 1 -t "coldchain/v1/vehicles/$1/telemetry" -l
}
stored() {  # stored DEVICE FIRST LAST: samples of that device and seq range in PostgreSQL
    dc exec -T postgres psql -U coldchain -d coldchain -Atc \
        "select count(*) from telemetry_samples where device = '$1' and seq between $2 and $3"
}
read -r van device <<<"${VANS[0]}"
samples "$SEQ0" 5 "$van" "$device" | publish "$van" || die "mosquitto_pub"
until=$((SECONDS + 60))
while [[ "$(stored "$device" "$SEQ0" $((SEQ0 + 4)))" != 5 ]]; do
    ((SECONDS < until)) || die "5 samples of $device published, $(stored "$device" "$SEQ0" $((SEQ0 + 4))) stored after 60 s"
    sleep 1
done
from="$(date -u -d '-10 min' +%Y-%m-%dT%H:%M:%SZ)"; to="$(date -u -d '+1 min' +%Y-%m-%dT%H:%M:%SZ)"
readings="$(get "/api/v1/telemetry/vehicles/$van/readings?from=$from&to=$to&limit=1000" \
    | json "len([r for r in d['items'] if $SEQ0 <= r['seq'] < $SEQ0 + 5])")" || die "GET readings of $van"
[[ "$readings" -ge 5 ]] || die "the API shows $readings readings of the 5 samples"
ok "5 samples of $van ($device) published to the compose Mosquitto: 5 stored (psql), $readings readings through GET /telemetry/vehicles/$van/readings"

BURST=400; total=5; per=$((BURST / ${#VANS[@]}))
t2=$SECONDS
for row in "${VANS[@]}"; do
    read -r van device <<<"$row"
    samples $((SEQ0 + 1000)) "$per" "$van" "$device" | publish "$van" || die "mosquitto_pub burst"
    total=$((total + per))
done
until=$((SECONDS + 120))
devices="$(for row in "${VANS[@]}"; do read -r _van device <<<"$row"; printf "'%s'," "$device"; done)"
count_burst() {
    dc exec -T postgres psql -U coldchain -d coldchain -Atc "select count(*) from telemetry_samples \
        where device in (${devices%,}) and seq between $((SEQ0 + 1000)) and $((SEQ0 + 1000 + per - 1))"
}
while [[ "$(count_burst)" != $((per * ${#VANS[@]})) ]]; do
    ((SECONDS < until)) || die "burst: $((per * ${#VANS[@]})) published, $(count_burst) stored after 120 s"
    sleep 1
done
ok "burst of $((per * ${#VANS[@]})) one-sample messages from ${#VANS[@]} vans: all stored once in $((SECONDS - t2)) s"

status_out="$(dc exec -T api coldchain status 2>&1)" && status_rc=0 || status_rc=$?
echo "$status_out" | sed 's/^/       /'
[[ $status_rc -le 1 ]] || die "coldchain status exited $status_rc"
grep -q "coldchain status" <<<"$status_out" || die "coldchain status printed no table"
ok "coldchain status in the api container (exit $status_rc: $([[ $status_rc == 0 ]] && echo healthy || echo 'a van on a route is stale'))"

# Each ingestor prints its counters when it stops: both must have had a share of the messages.
dc stop -t 20 ingestor-a ingestor-b >/dev/null 2>&1 || die "stopping the ingestors"
split=""
sum=0
for s in ingestor-a ingestor-b; do
    line="$(dc logs --no-color "$s" 2>/dev/null | grep -o "ingestor stopped: {.*}" | tail -1)"
    [[ -n "$line" ]] || die "$s printed no counters when stopped"
    n="$(python3 -c 'import ast, sys; print(ast.literal_eval(sys.argv[1].split(": ", 1)[1])["received"])' "$line")"
    [[ "$n" -gt 0 ]] || die "$s received none of the $total messages: the subscription is not shared"
    split="$split $s=$n"; sum=$((sum + n))
done
[[ "$sum" -ge "$total" ]] || die "the ingestors received $sum messages of the $total published"
ok "shared subscription: the $total messages split between the ingestors ($split received)"
