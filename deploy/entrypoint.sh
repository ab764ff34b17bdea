#!/bin/sh
# The image's entrypoint. libpq (psycopg) reads PGPASSWORD when a database URL names no password, so the
# PostgreSQL password stays in the secrets folder instead of an environment file or a URL.
set -eu
if [ -z "${PGPASSWORD:-}" ] && [ -r "${SECRETS_DIR:-/run/secrets/churn}/database_password" ]; then
    PGPASSWORD=$(cat "${SECRETS_DIR:-/run/secrets/churn}/database_password")
    export PGPASSWORD
fi
exec "$@"
