#!/usr/bin/env bash
# Regenerates examples/sample.flac (committed) from the text in examples/sample.txt.
# Needs espeak-ng and sox (Debian: apt-get install espeak-ng sox).
set -euo pipefail
cd "$(dirname "$0")"
espeak-ng -v en-us -s 150 -f sample.txt -w /dev/stdout \
  | sox -t wav - -r 16000 -c 1 sample.flac pad 0.3 0.5
