#!/bin/sh
# Puts the bearer token into nginx's configuration when the container starts.
#
# The image runs /docker-entrypoint.d/*.sh in order: 20-envsubst-on-templates.sh has rendered
# templates/study.conf.template into conf.d/ with the STUDY_* variables compose sets, leaving
# ${STUDY_TOKEN} in place (compose sets no such variable). This script, mounted by compose.yaml,
# replaces it with the token from the compose secret data_token (the file DATA_TOKEN_FILE names).
# The token is in no environment variable of the container, so neither `docker inspect` nor
# `docker compose config` shows it. Bad or missing token: the container stops with a message.
set -eu

token_file="${STUDY_TOKEN_FILE:-/run/secrets/data_token}"
conf_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
make_one="python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > storage/secrets/token"

fail() {
    echo "$0: $1 (see storage/README.md, section 2)" >&2
    exit 1
}

[ -r "$token_file" ] || fail "cannot read the token file $token_file: set DATA_TOKEN_FILE in .env to a file readable by uid 101"
token=$(tr -d '\r\n' < "$token_file")
case "$token" in
    "") fail "the token file is empty; make a token with: $make_one" ;;
    *[!A-Za-z0-9._~+/=-]*) fail "the token has characters nginx cannot compare safely; allowed: letters, digits and - . _ ~ + / =" ;;
esac
[ $(($(printf %s "$token" | wc -c))) -ge 16 ] || fail "the token is shorter than 16 characters; make one with: $make_one"

for conf in "$conf_dir"/*.conf; do
    grep -q '\${STUDY_TOKEN}' "$conf" || continue
    # The allowed characters include neither the delimiter | nor the sed specials & and \.
    sed "s|\${STUDY_TOKEN}|$token|g" "$conf" > "$conf.tmp"
    mv "$conf.tmp" "$conf"
    echo "$0: bearer token set in $conf"
done
