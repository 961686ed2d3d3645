"""Call the HTTP API (``whisper-modal serve`` or the Modal web function) with OpenAI's SDK.

    pip install openai
    WHISPER_MODAL_API_KEYS=sk-local whisper-modal serve --backend local &
    python examples/http_client.py examples/sample.flac --key sk-local --format srt
    python examples/http_client.py call.wav --base-url https://<workspace>--whisper-modal-web.modal.run/v1

Code written for OpenAI's API needs only ``base_url`` and ``api_key`` changed; ``whisper-1``
means the deployment's default model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--key", default=os.environ.get("WHISPER_MODAL_API_KEY", "none"))
    parser.add_argument("--format", default="text", choices=("json", "text", "srt", "vtt"))
    parser.add_argument("--language", default=None)
    args = parser.parse_args()

    from openai import APIError, OpenAI

    client = OpenAI(base_url=args.base_url, api_key=args.key, timeout=600)
    extra = {"language": args.language} if args.language else {}
    try:
        with args.file.open("rb") as audio:
            result = client.audio.transcriptions.create(
                file=audio, model="whisper-1", response_format=args.format, **extra
            )
    except APIError as exc:  # the server's OpenAI-style error (401, 400, 413, ...)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result if isinstance(result, str) else result.text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
