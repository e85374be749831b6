#!/bin/sh
# update_checker.sh: the optional updater (seed §5.6), run by the compose service `updater`
# (profile "updater"). docs/OPERATIONS.md, "Automatic updates", explains how to turn it on and
# what it can do (it needs the Docker socket, which is root on the host).
#
# Every UPDATE_CHECK_INTERVAL seconds it asks GitHub for the newest commit of GITHUB_BRANCH in
# GITHUB_REPO. When that commit is not the deployed one:
#   1. `docker compose pull` the services (UPDATE_SERVICES that this project runs) and check that
#      APP_IMAGE was built from that commit (its org.opencontainers.image.revision label). CI
#      builds the image after the push, so for a while the registry still has the old one: then
#      nothing is touched and the updater looks again after UPDATE_IMAGE_RETRY seconds.
#   2. Switch off the app's restart policy (else Docker restarts the exiting container from the
#      OLD image) and raise the update flag (UPDATE_FLAG_FILE). The daemon stops at its next
#      safe point, clears the flag and exits 0.
#   3. Wait for the app to exit, at most UPDATE_EXIT_TIMEOUT seconds (after that, step 4 stops it
#      with SIGTERM, which the daemon handles just as gracefully).
#   4. `docker compose up -d --no-deps --force-recreate` the services: new containers, new image,
#      the compose file's restart policy back. Then the commit counts as deployed.
# The first run takes the newest commit as the deployed one (the seed's behaviour).
#
# Errors (no network, GitHub down, bad token, rate limits, registry or Docker failures) are
# logged and retried with backoff: Retry-After or X-RateLimit-Reset when GitHub sends them, else
# UPDATE_BACKOFF_INITIAL seconds doubling up to UPDATE_BACKOFF_MAX. Only a configuration mistake
# found at start (e.g. GITHUB_REPO unset) ends the script, with exit code 2.
#
# Settings (environment):
#   GITHUB_REPO              owner/repository (required)
#   GITHUB_BRANCH            branch to follow (default main)
#   GITHUB_TOKEN             optional; for a private repository (read access to contents).
#                            Sent as "Authorization: Bearer"; never logged.
#   UPDATE_CHECK_INTERVAL    seconds between checks (default 1800)
#   UPDATE_FLAG_FILE         the flag the daemon watches, on a volume shared with the app
#                            (default /update_flag/update_available)
#   APP_IMAGE                the app's image reference, for the revision check (empty: no check)
#   UPDATE_SERVICES          compose services to update, if this project runs them
#                            (default "app dashboard worker")
#   UPDATE_WAIT_SERVICE      the service that exits at a safe point (default app)
# Tuning (the defaults are right for production; the tests shorten them):
#   UPDATE_BACKOFF_INITIAL (60), UPDATE_BACKOFF_MAX (3600), UPDATE_IMAGE_RETRY (300),
#   UPDATE_EXIT_TIMEOUT (300), UPDATE_POLL_INTERVAL (5), UPDATE_STATE_FILE (last_commit.txt next
#   to the flag), GITHUB_API_URL (https://api.github.com), HTTP_CLIENT (curl or wget; default:
#   curl if installed, else wget. BusyBox wget shows no headers of an error response, so with it
#   a rate limit is waited out by backoff instead of by GitHub's reset time).
#
# POSIX sh: runs under BusyBox ash (the docker:cli image), dash and bash.

set -u

REPO=${GITHUB_REPO:-}
BRANCH=${GITHUB_BRANCH:-main}
TOKEN=${GITHUB_TOKEN:-}
API_URL=${GITHUB_API_URL:-https://api.github.com}
INTERVAL=${UPDATE_CHECK_INTERVAL:-1800}
FLAG=${UPDATE_FLAG_FILE:-/update_flag/update_available}
STATE=${UPDATE_STATE_FILE:-$(dirname "$FLAG")/last_commit.txt}
APP_IMAGE=${APP_IMAGE:-}
SERVICES=${UPDATE_SERVICES:-app dashboard worker}
WAIT_SERVICE=${UPDATE_WAIT_SERVICE:-app}
BACKOFF_INITIAL=${UPDATE_BACKOFF_INITIAL:-60}
BACKOFF_MAX=${UPDATE_BACKOFF_MAX:-3600}
IMAGE_RETRY=${UPDATE_IMAGE_RETRY:-300}
EXIT_TIMEOUT=${UPDATE_EXIT_TIMEOUT:-300}
POLL=${UPDATE_POLL_INTERVAL:-5}
HTTP_CLIENT=${HTTP_CLIENT:-}
REVISION_LABEL=org.opencontainers.image.revision

log() {
    printf '%s update_checker: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"
}

is_count() {  # a whole number of seconds
    case $1 in '' | *[!0-9]*) return 1 ;; esac
}

# Sleep in the background and wait, so that SIGTERM (docker stop) ends the script at once.
SLEEPER=""
pause() {
    sleep "$1" &
    SLEEPER=$!
    wait "$SLEEPER"
    SLEEPER=""
}

on_signal() {
    [ -n "$SLEEPER" ] && kill "$SLEEPER" 2>/dev/null
    log "stopped"
    exit 0
}

# --- GitHub ------------------------------------------------------------------------------------

# GET $1 from GitHub. Sets STATUS (the HTTP status; 000 when no response came) and leaves the
# body in $WORK/body and the response headers, lower-cased, in $WORK/headers.
http_get() {
    : >"$WORK/body"
    : >"$WORK/raw_headers"
    STATUS=000
    if [ "$HTTP_CLIENT" = curl ]; then
        # Headers come from a file (mode 0600) so that the token is not on a command line.
        STATUS=$(curl --silent --show-error --location --max-time 60 \
            --header @"$WORK/request_headers" --output "$WORK/body" \
            --dump-header "$WORK/raw_headers" --write-out '%{http_code}' "$1" 2>"$WORK/error") || true
    else
        if [ -n "$TOKEN" ]; then
            $TIMEOUT wget $WGET_TRIES -q -S -O "$WORK/body" --header "Accept: application/vnd.github.sha" \
                --header "Authorization: Bearer $TOKEN" "$1" 2>"$WORK/raw_headers"
        else
            $TIMEOUT wget $WGET_TRIES -q -S -O "$WORK/body" --header "Accept: application/vnd.github.sha" \
                "$1" 2>"$WORK/raw_headers"
        fi
        STATUS=$(sed -n 's/^ *HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$WORK/raw_headers" | tail -n 1)
        grep -v '^ ' "$WORK/raw_headers" >"$WORK/error"
    fi
    case $STATUS in [0-9][0-9][0-9]) ;; *) STATUS=000 ;; esac
    tr -d '\r' <"$WORK/raw_headers" | tr '[:upper:]' '[:lower:]' >"$WORK/headers"
}

# The value of response header $1 (lower case), or nothing.
header() {
    sed -n "s/^ *$1: *//p" "$WORK/headers" | tail -n 1
}

# Sets LATEST to the newest commit of the branch. On failure: logs why, returns 1, and leaves
# SERVER_WAIT set when GitHub said how long to wait (Retry-After, X-RateLimit-Reset).
fetch_latest() {
    LATEST=""
    SERVER_WAIT=""
    http_get "$API_URL/repos/$REPO/commits/$BRANCH"
    case $STATUS in
        200)
            # With "Accept: application/vnd.github.sha" the body is the bare SHA.
            LATEST=$(grep -o '[0-9a-f]\{40\}' "$WORK/body" | head -n 1)
            [ -n "$LATEST" ] && return 0
            log "GitHub answered without a commit SHA; will ask again"
            ;;
        401) log "GitHub rejected GITHUB_TOKEN (HTTP 401): it is wrong, expired or revoked. Make a new token with read access to the repository's contents, put it in .env and recreate the updater" ;;
        403 | 429) log "GitHub refused the request (HTTP $STATUS): rate limit reached, or GITHUB_TOKEN lacks access to $REPO" ;;
        404) log "GitHub knows no branch $BRANCH in $REPO (HTTP 404): check GITHUB_REPO and GITHUB_BRANCH; a private repository also needs GITHUB_TOKEN" ;;
        000) log "could not reach $API_URL: $(tail -n 1 "$WORK/error" 2>/dev/null)" ;;
        *) log "GitHub answered HTTP $STATUS" ;;
    esac
    retry_after=$(header retry-after)
    reset=$(header x-ratelimit-reset)
    if is_count "$retry_after"; then
        SERVER_WAIT=$retry_after
    elif [ "$(header x-ratelimit-remaining)" = 0 ] && is_count "$reset"; then
        SERVER_WAIT=$((reset - $(date +%s) + 1))
        [ "$SERVER_WAIT" -ge 1 ] || SERVER_WAIT=1
    fi
    return 1
}

# Seconds to wait after the $1-th failure in a row: BACKOFF_INITIAL doubled each time, capped.
backoff() {
    delay=$BACKOFF_INITIAL
    n=1
    while [ "$n" -lt "$1" ] && [ "$delay" -lt "$BACKOFF_MAX" ]; do
        delay=$((delay * 2))
        n=$((n + 1))
    done
    [ "$delay" -le "$BACKOFF_MAX" ] || delay=$BACKOFF_MAX
    echo "$delay"
}

# --- Docker ------------------------------------------------------------------------------------

# The services of UPDATE_SERVICES that this compose project runs (with its active profiles).
active_services() {
    defined=$(docker compose config --services) || return 1
    found=""
    for service in $SERVICES; do
        for name in $defined; do
            [ "$service" = "$name" ] && found="$found $service"
        done
    done
    echo "$found"
}

state_of() {
    docker inspect --format '{{.State.Status}}' "$1" 2>/dev/null || echo gone
}

# Ask the app to stop at a safe point and wait until it has exited (or UPDATE_EXIT_TIMEOUT).
stop_app_at_safe_point() {
    running=""
    for id in $(docker compose ps -a -q "$WAIT_SERVICE" 2>/dev/null); do
        case $(state_of "$id") in running | restarting) running="$running $id" ;; esac
    done
    if [ -z "$running" ]; then
        log "$WAIT_SERVICE is not running; nothing to wait for"
        return 0
    fi
    # shellcheck disable=SC2086  # one argument per container id
    docker update --restart=no $running >/dev/null \
        || log "warning: could not switch off the restart policy of $WAIT_SERVICE; Docker may restart it once from the old image"
    mkdir -p "$(dirname "$FLAG")"
    printf 'update to %s requested by update_checker.sh at %s\n' "$1" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$FLAG.tmp" \
        && mv "$FLAG.tmp" "$FLAG"
    log "raised the update flag $FLAG; waiting for $WAIT_SERVICE to stop at a safe point (at most $EXIT_TIMEOUT s)"
    waited=0
    while [ "$waited" -lt "$EXIT_TIMEOUT" ]; do
        still=""
        for id in $running; do
            case $(state_of "$id") in exited | dead | gone) ;; *) still="$still $id" ;; esac
        done
        if [ -z "$still" ]; then
            log "$WAIT_SERVICE exited after about $waited s"
            return 0
        fi
        pause "$POLL"
        waited=$((waited + POLL))
    done
    log "$WAIT_SERVICE did not exit within $EXIT_TIMEOUT s; recreating it anyway (Docker stops it with SIGTERM, which it handles gracefully too)"
}

# Deploy commit $1. Returns 0 when done, 2 when the registry has no image of it yet, 1 on failure.
deploy() {
    services=$(active_services) || {
        log "docker compose config failed: is the Docker socket mounted and the project directory readable?"
        return 1
    }
    if [ -z "$services" ]; then
        log "none of the services '$SERVICES' is in this compose project; nothing to update"
        return 1
    fi
    log "pulling the images of:$services"
    # shellcheck disable=SC2086  # one argument per service
    if ! docker compose pull $services; then
        log "docker compose pull failed: is FACE_ARCHIVER_IMAGE an image that CI pushes to a registry, and can this host log in to it?"
        return 1
    fi
    if [ -n "$APP_IMAGE" ]; then
        revision=$(docker image inspect --format "{{ index .Config.Labels \"$REVISION_LABEL\" }}" "$APP_IMAGE" 2>/dev/null) || revision=""
        case $revision in
            "$1") log "$APP_IMAGE was built from $1" ;;
            "" | "<no value>") log "warning: $APP_IMAGE does not say which commit it was built from (no $REVISION_LABEL label); deploying it as it is" ;;
            *)
                log "$APP_IMAGE is still built from $revision, not $1: CI has not published the new image yet"
                return 2
                ;;
        esac
    fi
    stop_app_at_safe_point "$1"
    rm -f "$FLAG"  # a flag left behind would make the new app exit at once
    # shellcheck disable=SC2086  # one argument per service
    if ! docker compose up -d --no-deps --force-recreate $services; then
        log "docker compose up failed; the stopped services stay down until the next attempt"
        return 1
    fi
    echo "$1" >"$STATE"
    log "updated:$services now run commit $1"
    return 0
}

# --- main --------------------------------------------------------------------------------------

check_settings() {
    problems=""
    case $REPO in
        */*) ;;
        *) problems="$problems
  GITHUB_REPO: set it to owner/repository (got '$REPO')" ;;
    esac
    for pair in "UPDATE_CHECK_INTERVAL=$INTERVAL" "UPDATE_BACKOFF_INITIAL=$BACKOFF_INITIAL" \
        "UPDATE_BACKOFF_MAX=$BACKOFF_MAX" "UPDATE_IMAGE_RETRY=$IMAGE_RETRY" \
        "UPDATE_EXIT_TIMEOUT=$EXIT_TIMEOUT" "UPDATE_POLL_INTERVAL=$POLL"; do
        if ! is_count "${pair#*=}" || [ "${pair#*=}" -lt 1 ]; then
            problems="$problems
  ${pair%%=*}: must be a whole number of seconds, at least 1 (got '${pair#*=}')"
        fi
    done
    if [ -z "$HTTP_CLIENT" ]; then
        if command -v curl >/dev/null 2>&1; then HTTP_CLIENT=curl; else HTTP_CLIENT=wget; fi
    fi
    case $HTTP_CLIENT in
        curl | wget) command -v "$HTTP_CLIENT" >/dev/null 2>&1 || problems="$problems
  HTTP_CLIENT: $HTTP_CLIENT is not installed" ;;
        *) problems="$problems
  HTTP_CLIENT: must be curl or wget (got '$HTTP_CLIENT')" ;;
    esac
    if [ -n "$problems" ]; then
        log "cannot start; fix these settings (in .env) and recreate the updater:$problems"
        exit 2
    fi
}

main() {
    check_settings
    trap on_signal TERM INT
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    (
        umask 077
        printf 'Accept: application/vnd.github.sha\nUser-Agent: face-archiver-updater\n' >"$WORK/request_headers"
        [ -n "$TOKEN" ] && printf 'Authorization: Bearer %s\n' "$TOKEN" >>"$WORK/request_headers"
    )
    TIMEOUT=""
    command -v timeout >/dev/null 2>&1 && TIMEOUT="timeout 60"
    # GNU wget retries some errors 20 times by itself; the backoff here is the retry policy.
    # (BusyBox wget does not retry, and knows no --tries.)
    WGET_TRIES=""
    wget --version 2>/dev/null | grep -q GNU && WGET_TRIES="--tries=1"

    token_note="no token"
    [ -n "$TOKEN" ] && token_note="with a token"
    log "following $REPO branch $BRANCH ($token_note) every $INTERVAL s; flag $FLAG; services: $SERVICES"
    docker version --format 'docker engine {{.Server.Version}}' >/dev/null 2>&1 \
        || log "warning: the Docker engine is not reachable (is /var/run/docker.sock mounted?); updates will fail until it is"

    api_failures=0
    deploy_failures=0
    while :; do
        if fetch_latest; then
            api_failures=0
            deployed=$(cat "$STATE" 2>/dev/null)
            if [ -z "$deployed" ]; then
                mkdir -p "$(dirname "$STATE")"
                echo "$LATEST" >"$STATE"
                log "first run: taking $LATEST as the deployed commit"
                delay=$INTERVAL
            elif [ "$LATEST" = "$deployed" ]; then
                log "up to date ($LATEST)"
                delay=$INTERVAL
            else
                log "new commit $LATEST (deployed: $deployed)"
                deploy "$LATEST"
                case $? in
                    0)
                        deploy_failures=0
                        delay=$INTERVAL
                        ;;
                    2) delay=$IMAGE_RETRY ;;
                    *)
                        deploy_failures=$((deploy_failures + 1))
                        delay=$(backoff "$deploy_failures")
                        ;;
                esac
            fi
        else
            api_failures=$((api_failures + 1))
            if [ -n "$SERVER_WAIT" ]; then
                delay=$SERVER_WAIT
            else
                delay=$(backoff "$api_failures")
            fi
        fi
        log "next check in $delay s"
        pause "$delay"
    done
}

main "$@"
