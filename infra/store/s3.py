"""S3 implementation of ``ObjectStore`` (any S3-compatible endpoint, through boto3).

Kept apart from ``infra.store`` so the local-only path never imports boto3.
Retries are ours, not botocore's: botocore's are switched off so that one
budget (``retry_budget_s``) bounds how long any call may keep trying, and only
failures that can heal (connection trouble, throttling, 5xx) are retried.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_before_delay,
    wait_exponential_jitter,
)

from infra.store.interface import (
    CHUNK_SIZE,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    SizedKeys,
    StoreError,
    StoreUnavailable,
    is_temp_key,
    temp_key_for,
    validate_key,
    validate_prefix,
)
from infra.store.local import write_atomically

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

__all__ = ["S3Store"]

log = logging.getLogger(__name__)
T = TypeVar("T")

MIB = 1024 * 1024
_MAX_SINGLE_COPY = 5 * 1024 * MIB  # CopyObject's limit; above it copy in parts
_RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _error_code(exc: ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_retryable(exc: BaseException) -> bool:
    """Only failures that can heal by waiting; everything else surfaces at once."""
    if isinstance(exc, SSLError):
        return False  # a certificate problem does not fix itself
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
        return True
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        return status >= 500 or status == 429 or code in _RETRYABLE_CODES
    return False


def _is_not_found(exc: ClientError) -> bool:
    code, status = _error_code(exc)
    return code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket")


class _HashingReader:
    """Hashes what s3transfer reads.

    It reports itself non-seekable on purpose: s3transfer then reads it once, in
    order, so the digest is exactly of the bytes that were sent.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class S3Store:
    """Objects in one bucket; ``uri`` is ``s3://bucket/key``."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        retry_budget_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        multipart_threshold: int = 8 * MIB,
        multipart_chunksize: int = 8 * MIB,
        max_concurrency: int = 4,
        max_connections: int = 32,
    ) -> None:
        if multipart_chunksize < 5 * MIB:
            raise ValueError("S3 parts must be at least 5 MiB")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self._budget_s = retry_budget_s
        self._single_put_max = multipart_threshold
        config = Config(
            region_name=region,
            signature_version="s3v4",
            # Custom endpoints (SeaweedFS, MinIO, ...) rarely have wildcard DNS.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=min(connect_timeout_s, max(retry_budget_s, 0.5)),
            read_timeout=read_timeout_s,
            # One client serves every thread: a pool smaller than the callers'
            # concurrency makes uploads queue for a connection.
            max_pool_connections=max(max_connections, 2 * max_concurrency),
            # Newer default checksums break several S3-compatible servers; we
            # record our own sha256 anyway.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
        )

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def client(self) -> S3Client:
        """The boto3 client, for tests and admin tasks the interface does not cover."""
        return self._client

    # --- retry and error mapping ------------------------------------------

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception(_is_retryable),
            stop=stop_before_delay(self._budget_s),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
            before_sleep=_log_retry(what, key),
            reraise=True,
        )
        try:
            return retrying(fn)
        except ClientError as exc:
            if _is_retryable(exc):
                raise StoreUnavailable(f"{what} {key!r} on {self!r}: {exc}") from exc
            if _is_not_found(exc):
                raise ObjectNotFound(f"object {key!r} not found in {self!r}") from exc
            raise StoreError(f"{what} {key!r} on {self!r}: {exc}") from exc
        except BotoCoreError as exc:
            if _is_retryable(exc):
                raise StoreUnavailable(
                    f"{what} {key!r}: {self!r} unreachable for {self._budget_s:g}s: {exc}"
                ) from exc
            raise StoreError(f"{what} {key!r} on {self!r}: {exc}") from exc

    # --- bucket -----------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing; a no-op when it exists."""

        def run() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _error_code(exc)[1] != 404 and _error_code(exc)[0] != "NoSuchBucket":
                    raise
            try:
                self._create_bucket()
            except ClientError as exc:
                if _error_code(exc)[0] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._call("ensure_bucket", self.bucket, run)

    def _create_bucket(self) -> None:
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            self._client.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            )
        else:
            self._client.create_bucket(Bucket=self.bucket)

    # --- writes -----------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None,
                  *, sha256: str | None = None) -> ObjectInfo:
        """One PutObject, sha256 and content type included.

        A single PutObject is atomic on S3 (a reader sees the old object or the
        new one, never part of it), and the digest of bytes in memory is known
        before sending, so no temporary key and copy are needed: one request
        instead of three (put, copy, delete).
        """
        validate_key(key)
        digest = sha256 or hashlib.sha256(data).hexdigest()
        extra: dict[str, Any] = {"Metadata": {"sha256": digest}}
        if content_type:
            extra["ContentType"] = content_type
        self._call("put", key, lambda: self._client.put_object(
            Bucket=self.bucket, Key=key, Body=data, **extra))
        return ObjectInfo(key=key, size=len(data), sha256=digest, uri=self.uri(key))

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> ObjectInfo:
        """A file up to the multipart threshold is read once and sent as one PutObject;
        a larger one streams to a temporary key (hashed on the way) and is copied into
        place, since its sha256, recorded on the object, is known only at the end."""
        validate_key(key)
        if Path(path).stat().st_size <= self._single_put_max:
            with open(path, "rb") as fh:
                data = fh.read(self._single_put_max + 1)
            if len(data) <= self._single_put_max:  # it did not grow meanwhile
                return self.put_bytes(key, data, content_type)
        tmp = temp_key_for(key)

        def upload() -> _HashingReader:
            with open(path, "rb") as fh:
                reader = _HashingReader(fh)
                self._client.upload_fileobj(reader, self.bucket, tmp, Config=self._transfer)  # type: ignore[arg-type]
            return reader

        try:
            reader = self._call("put", key, upload)
        except StoreError:
            self._discard(tmp)
            raise
        return self._commit(tmp, key, reader.size, reader.digest.hexdigest(), content_type)

    def _commit(
        self, tmp: str, key: str, size: int, digest: str, content_type: str | None
    ) -> ObjectInfo:
        """Copy the finished temp object to its key, so readers never see it half-written."""
        extra: dict[str, Any] = {"Metadata": {"sha256": digest}}
        if content_type:
            extra["ContentType"] = content_type
        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": tmp}

        def copy() -> None:
            if size < _MAX_SINGLE_COPY:
                self._client.copy_object(
                    Bucket=self.bucket,
                    Key=key,
                    CopySource=source,
                    MetadataDirective="REPLACE",
                    **extra,
                )
            else:
                self._client.copy(
                    source,
                    self.bucket,
                    key,
                    ExtraArgs=extra,
                    Config=self._transfer,
                )

        try:
            self._call("commit", key, copy)
        finally:
            self._discard(tmp)
        return ObjectInfo(key=key, size=size, sha256=digest, uri=self.uri(key))

    def _discard(self, tmp: str) -> None:
        """Best effort: a leftover temp object is hidden from listings anyway."""
        try:  # one attempt: when the store is down, waiting a second budget helps nobody
            self._client.delete_object(Bucket=self.bucket, Key=tmp)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not delete temporary object %r: %s", tmp, exc)

    # --- reads ------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        validate_key(key)

        def fetch() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with body:
                return body.read()

        return self._call("get", key, fetch)

    def get_file(self, key: str, path: Path) -> Path:
        validate_key(key)
        dest = Path(path)

        def fetch() -> None:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with body:
                write_atomically(dest, lambda fh: _copy_chunks(body.iter_chunks(CHUNK_SIZE), fh))

        self._call("get", key, fetch)
        return dest

    def exists(self, key: str) -> bool:
        validate_key(key)

        def head() -> bool:
            try:
                self._client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _is_not_found(exc):
                    return False
                raise
            return True

        return self._call("exists", key, head)

    def list(self, prefix: str) -> list[str]:
        validate_prefix(prefix)

        def scan() -> list[str]:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

        keys = self._call("list", prefix, scan)
        return sorted(k for k in keys if not is_temp_key(k))

    def list_sizes(self, prefix: str) -> SizedKeys:
        """``list`` with each object's size in bytes, from the same listing requests."""
        validate_prefix(prefix)

        def scan() -> list[tuple[str, int]]:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            return [(obj["Key"], int(obj.get("Size", 0)))
                    for page in pages for obj in page.get("Contents", [])]

        found = self._call("list", prefix, scan)
        return sorted((k, n) for k, n in found if not is_temp_key(k))

    def delete(self, key: str) -> None:
        validate_key(key)
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    # --- addressing -------------------------------------------------------

    def presign(self, key: str, expires_s: int = 3600) -> str:
        validate_key(key)
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{validate_key(key)}"

    def key_from_uri(self, uri: str) -> str:
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            raise InvalidKey(f"{uri!r} is not an object of {self!r}")
        return validate_key(uri[len(prefix) :])


def _copy_chunks(chunks: Any, fh: IO[bytes]) -> None:
    for chunk in chunks:
        fh.write(chunk)


def _log_retry(what: str, key: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "S3 %s %r failed (attempt %d), retrying in %.1fs: %s",
            what,
            key,
            state.attempt_number,
            state.upcoming_sleep,
            exc,
        )

    return before_sleep
