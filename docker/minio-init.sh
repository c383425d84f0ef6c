#!/bin/sh
# One-shot MinIO setup: the MLflow artifact bucket and a service account that can use only it.
# Idempotent: safe to run on every `docker compose up`.
set -eu

: "${MINIO_ROOT_USER:?}"
: "${MINIO_ROOT_PASSWORD:?}"
: "${MLFLOW_BUCKET:?}"
: "${AWS_ACCESS_KEY_ID:?}"
: "${AWS_SECRET_ACCESS_KEY:?}"
MINIO_URL="${MINIO_URL:-http://minio:9000}"
POLICY_NAME="${MLFLOW_BUCKET}-readwrite"

mc alias set loopml "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "loopml/${MLFLOW_BUCKET}"

policy_file="$(mktemp)"
cat > "$policy_file" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::${MLFLOW_BUCKET}"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                 "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::${MLFLOW_BUCKET}/*"]
    }
  ]
}
JSON
mc admin policy create loopml "$POLICY_NAME" "$policy_file"
rm -f "$policy_file"

# `user add` on an existing user only updates its secret key.
mc admin user add loopml "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
# `policy attach` fails when the policy is already attached, so check the result, not the exit code.
mc admin policy attach loopml "$POLICY_NAME" --user "$AWS_ACCESS_KEY_ID" || true
mc admin user info loopml "$AWS_ACCESS_KEY_ID" | grep -q "$POLICY_NAME"
echo "bucket ${MLFLOW_BUCKET} ready for ${AWS_ACCESS_KEY_ID}"
