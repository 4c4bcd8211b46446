import asyncio
from datetime import timedelta
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.settings import Settings

# Public renditions never change under a key (a new photo gets a new token): caches keep them.
PUBLIC_CACHE = "public, max-age=31536000, immutable"


def s3_client(endpoint_url: str, access_key: str, secret_key: str, region: str) -> Any:
    config = Config(
        signature_version="s3v4",  # presigned uploads must carry a SigV4 signature over their headers
        # The default flexible checksums make botocore reject range reads from rclone's S3 server.
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url or None, aws_access_key_id=access_key or None,
                        aws_secret_access_key=secret_key or None, region_name=region, config=config)


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


class S3Photos:
    """Photo objects in one bucket: private uploads, public renditions served through the CDN.

    boto3 blocks, so every call runs in a thread."""

    def __init__(self, client: Any, bucket: str, cdn_base_url: str) -> None:
        self._s3 = client
        self._bucket = bucket
        self._cdn = cdn_base_url.rstrip("/")

    def public_url(self, key: str) -> str:
        return f"{self._cdn}/{key}"

    async def presign_upload(self, key: str, content_type: str, byte_size: int, ttl: timedelta
                             ) -> tuple[str, tuple[tuple[str, str], ...]]:
        # A PUT whose signature covers Content-Type and Content-Length: the store refuses another
        # type or size. (A POST policy would say the same, but rclone's S3 server cannot check one.)
        url = await asyncio.to_thread(
            self._s3.generate_presigned_url, "put_object", ExpiresIn=int(ttl.total_seconds()),
            Params={"Bucket": self._bucket, "Key": key, "ContentType": content_type, "ContentLength": byte_size},
        )
        return url, (("Content-Type", content_type), ("Content-Length", str(byte_size)))

    async def read(self, key: str, limit: int) -> bytes | None:
        """The object's bytes, at most limit + 1 of them (so "larger than announced" shows); None if absent."""
        def get() -> bytes | None:
            try:
                found = self._s3.get_object(Bucket=self._bucket, Key=key)
            except ClientError as error:
                if _missing(error):
                    return None
                raise
            with found["Body"] as body:
                data: bytes = body.read(limit + 1)
                return data

        return await asyncio.to_thread(get)

    async def put_public(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._s3.put_object, Bucket=self._bucket, Key=key, Body=data,
                                ContentType=content_type, CacheControl=PUBLIC_CACHE)

    async def delete_many(self, keys: list[str]) -> None:
        def delete() -> None:
            for start in range(0, len(keys), 1000):  # the most one request may name
                chunk = [{"Key": k} for k in keys[start:start + 1000]]
                done = self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": chunk, "Quiet": True})
                failed = [e for e in done.get("Errors", []) if e.get("Code") != "NoSuchKey"]
                if failed:
                    raise RuntimeError(f"could not delete {len(failed)} object(s): {failed[0]}")

        if keys:
            await asyncio.to_thread(delete)

    async def ensure_bucket(self) -> None:
        def ensure() -> None:
            try:
                self._s3.head_bucket(Bucket=self._bucket)
            except ClientError:
                self._s3.create_bucket(Bucket=self._bucket)

        await asyncio.to_thread(ensure)


def cdn_base_url(cdn_url: str, endpoint_url: str, bucket: str, region: str) -> str:
    if cdn_url:
        return cdn_url
    # Without a CDN, the bucket itself (readable only where its policy opens the public prefix).
    return f"{endpoint_url.rstrip('/')}/{bucket}" if endpoint_url else f"https://{bucket}.s3.{region}.amazonaws.com"


def photo_store(settings: Settings) -> S3Photos:
    client = s3_client(settings.s3_endpoint_url, settings.s3_access_key, settings.s3_secret_key, settings.s3_region)
    cdn = cdn_base_url(settings.photo_cdn_url, settings.s3_endpoint_url, settings.s3_bucket, settings.s3_region)
    return S3Photos(client, settings.s3_bucket, cdn)
