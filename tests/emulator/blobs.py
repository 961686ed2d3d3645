"""Modal's blob storage on loopback: the pre-signed PUT/GET URLs that large payloads use.

Modal's client uploads any argument or result over 2 MiB (8 KiB for ``.spawn``) to an S3
URL that ``BlobCreate`` hands out, and fetches it back through ``BlobGet``'s download URL.
This store answers those URLs the way S3 does for a single-part upload: the ``ETag`` is
the quoted MD5 of the body (Modal's client checks it), and a ``Content-MD5`` header that
does not match the body is refused with S3's own message.
"""

from __future__ import annotations

import base64
import hashlib

from aiohttp import web


class BlobStore:
    """Blobs by id, and the aiohttp routes that upload and download them."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self._n = 0
        self.base_url = ""  # set once the HTTP server listens

    def new_id(self) -> str:
        """A fresh blob id (``bl-N``)."""
        self._n += 1
        return f"bl-{self._n}"

    def upload_url(self, blob_id: str) -> str:
        return f"{self.base_url}/upload?blob_id={blob_id}"

    def download_url(self, blob_id: str) -> str:
        return f"{self.base_url}/download?blob_id={blob_id}"

    def routes(self) -> list[web.RouteDef]:
        return [web.put("/upload", self._upload), web.get("/download", self._download)]

    async def _upload(self, request: web.Request) -> web.Response:
        blob_id = request.query["blob_id"]
        body = await request.read()
        digest = hashlib.md5(body).digest()
        sent_md5 = request.headers.get("Content-MD5")
        if sent_md5 is not None and sent_md5 != base64.b64encode(digest).decode():
            return web.Response(
                status=400, text="The Content-MD5 you specified did not match what we received."
            )
        self.blobs[blob_id] = body
        return web.Response(text="", headers={"ETag": f'"{digest.hex()}"'})

    async def _download(self, request: web.Request) -> web.Response:
        body = self.blobs.get(request.query["blob_id"])
        if body is None:
            return web.Response(status=404, text="NoSuchKey")
        return web.Response(body=body)
