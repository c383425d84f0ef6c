#!/bin/sh
# Write MLflow's basic-auth config from the environment, then run the given command.
#
# The auth app reads its user store location (`database_uri`) only from the file named by
# MLFLOW_AUTH_CONFIG_PATH, so the file is rendered at start instead of being baked into the
# image or the compose file (it holds the database password). The admin password is not
# written here: MLflow reads MLFLOW_AUTH_ADMIN_PASSWORD from the environment itself on the
# first start, when it creates the admin user.
set -eu

: "${MLFLOW_AUTH_CONFIG_PATH:?must name the basic-auth ini file to write}"
: "${MLFLOW_AUTH_DATABASE_URI:?must be the SQLAlchemy URI of the basic-auth user store}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?must name the MLflow admin user}"

# configparser treats % as interpolation; URL-encoded passwords contain it.
escape_percent() {
    printf '%s' "$1" | sed 's/%/%%/g'
}

umask 077
mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = $(escape_percent "$MLFLOW_AUTH_DATABASE_URI")
admin_username = $(escape_percent "$MLFLOW_AUTH_ADMIN_USERNAME")
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

exec "$@"
