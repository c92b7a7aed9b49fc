#!/bin/sh
# Random secrets for docker/docker-compose.yml, in docker/secrets/ (readable by the owner
# only, ignored by git). Keeps the files that exist: run it again safely.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
random() { python3 -c "import secrets; print(secrets.token_urlsafe($1))"; }
[ -s secrets/secret_key ] || random 50 > secrets/secret_key
[ -s secrets/health_token ] || random 32 > secrets/health_token
[ -s secrets/metrics_token ] || random 32 > secrets/metrics_token
[ -s secrets/postgres_password ] || random 32 > secrets/postgres_password
[ -s secrets/database_url ] ||
  printf 'postgres://isard:%s@postgres:5432/isard\n' "$(cat secrets/postgres_password)" \
    > secrets/database_url
echo "secrets in $(pwd)/secrets: secret_key health_token metrics_token postgres_password database_url"
