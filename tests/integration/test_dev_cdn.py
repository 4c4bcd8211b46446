from pathlib import Path

import httpx

from infra.devstack import EmbeddedStack, s3_client


def test_the_dev_cdn_serves_public_photos_and_nothing_else(tmp_path: Path) -> None:
    with EmbeddedStack(tmp_path, postgres=False, redis=False, cdn_bucket="dev-photos") as services:
        s3 = s3_client(services.s3_endpoint_url, services.s3_access_key, services.s3_secret_key)
        s3.head_bucket(Bucket="dev-photos")  # the CDN's start made it
        s3.put_object(Bucket="dev-photos", Key="photos/tok/1080.jpg", Body=b"jpeg bytes")
        s3.put_object(Bucket="dev-photos", Key="uploads/u/p", Body=b"private")
        assert httpx.get(f"{services.cdn_url}/photos/tok/1080.jpg").content == b"jpeg bytes"
        assert httpx.get(f"{services.cdn_url}/uploads/u/p").status_code == 404
        assert b"tok" not in httpx.get(f"{services.cdn_url}/photos/").content  # no listing of tokens
