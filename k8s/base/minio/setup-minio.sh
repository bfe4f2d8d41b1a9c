#!/bin/sh
# Bucket and bucket-scoped user for the Ada-Segment store. Runs in the minio/mc
# image (mc, a POSIX shell and coreutils only). Every step is idempotent.
# Environment: ADASEG_STORE, ADASEG_S3_ENDPOINT, ADASEG_S3_SECURE (adaseg-config),
# MINIO_ROOT_USER/PASSWORD (adaseg-minio-root), ADASEG_S3_ACCESS_KEY/SECRET_KEY
# (adaseg-minio) and ADASEG_TOKEN (adaseg-controller-token, only checked here).
set -eu

for value in "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" "$ADASEG_TOKEN" \
  "$ADASEG_S3_ACCESS_KEY" "$ADASEG_S3_SECRET_KEY"; do
  case "$value" in
    change-me*)
      echo "refusing to set up MinIO: k8s/base/secrets/*.env still hold the example" \
        "values; put random ones there (k8s/README.md) and apply again" >&2
      exit 1
      ;;
  esac
done

case "$ADASEG_STORE" in
  s3://?*) ;;
  *)
    echo "ADASEG_STORE must be s3://bucket/prefix, got '$ADASEG_STORE'" >&2
    exit 1
    ;;
esac
bucket="${ADASEG_STORE#s3://}"
bucket="${bucket%%/*}"

case "${ADASEG_S3_SECURE:-false}" in
  1 | true | True | TRUE | yes | Yes | YES) scheme=https ;;
  *) scheme=http ;;
esac
endpoint="$ADASEG_S3_ENDPOINT"
case "$endpoint" in
  *://*) ;;
  *) endpoint="$scheme://$endpoint" ;;
esac

# `mc alias set` checks the server, so it doubles as the wait for MinIO.
attempt=0
until mc alias set adaseg "$endpoint" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  attempt=$((attempt + 1))
  if [ "$attempt" -ge 60 ]; then
    echo "MinIO at $endpoint did not answer within 5 minutes" >&2
    exit 1
  fi
  echo "waiting for MinIO at $endpoint (attempt $attempt)"
  sleep 5
done

mc mb --ignore-existing "adaseg/$bucket"
mc anonymous set none "adaseg/$bucket"

policy_file="${TMPDIR:-/tmp}/adaseg-store-policy.json"
printf '%s\n' \
  '{' \
  '  "Version": "2012-10-17",' \
  '  "Statement": [' \
  '    {' \
  '      "Effect": "Allow",' \
  '      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],' \
  "      \"Resource\": [\"arn:aws:s3:::$bucket\"]" \
  '    },' \
  '    {' \
  '      "Effect": "Allow",' \
  '      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",' \
  '                 "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],' \
  "      \"Resource\": [\"arn:aws:s3:::$bucket/*\"]" \
  '    }' \
  '  ]' \
  '}' >"$policy_file"
mc admin policy create adaseg adaseg-store "$policy_file"
mc admin user add adaseg "$ADASEG_S3_ACCESS_KEY" "$ADASEG_S3_SECRET_KEY"
# Older servers answer "already in effect" when the policy is attached already.
if ! output=$(mc admin policy attach adaseg adaseg-store --user "$ADASEG_S3_ACCESS_KEY" 2>&1); then
  case "$output" in
    *"already in effect"*) ;;
    *)
      echo "$output" >&2
      exit 1
      ;;
  esac
fi
echo "bucket $bucket ready for the adaseg user"
