#!/bin/sh
# One-shot: create the process work pool (if missing) and register every deployment in
# deployments/prefect.yaml, for project LOOPML_PROJECT, with the Prefect server named by
# PREFECT_API_URL. prefect.yaml reads LOOPML_PROJECT and LOOPML_PROJECT_DIR at deploy time.
set -eu

: "${PREFECT_API_URL:?}"
: "${LOOPML_PROJECT:?names the project whose deployments to register}"
: "${LOOPML_PROJECT_DIR:?is the folder holding configs/ and expectations/}"
APP_DIR="${LOOPML_APP_DIR:-/app}"
WORK_POOL="${LOOPML_WORK_POOL:-loopml-process}"
PREFECT_FILE="${LOOPML_PREFECT_FILE:-$APP_DIR/deployments/prefect.yaml}"

if [ ! -f "$LOOPML_PROJECT_DIR/configs/$LOOPML_PROJECT.yaml" ]; then
    echo "no $LOOPML_PROJECT_DIR/configs/$LOOPML_PROJECT.yaml: run 'loopml init' in the" \
        "folder mounted there (LOOPML_PROJECT_HOST_DIR) first" >&2
    exit 1
fi

if ! prefect work-pool inspect "$WORK_POOL" >/dev/null 2>&1; then
    prefect work-pool create "$WORK_POOL" --type process
fi
# Entrypoints in prefect.yaml are relative to the project root.
cd "$APP_DIR"
exec prefect --no-prompt deploy --all --prefect-file "$PREFECT_FILE"
