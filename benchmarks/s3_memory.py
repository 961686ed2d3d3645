"""Peak client memory reading one S3 object into memory, as a ratio to the object size.

    python benchmarks/s3_memory.py [--mb 200]

Starts moto's S3 server on 127.0.0.1, uploads an object, then reads it in a fresh
process with ``S3Store.get_bytes`` and reports tracemalloc's peak and the rise in
max RSS. One preallocated buffer means the ideal ratio is ~1.0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from tests.servers import FAKE_AWS_ENV, moto_server

PROBE = """
import os, resource, time, tracemalloc, sys
os.environ.update({env!r})
from whisper_modal.storage import S3Store, S3Object
st = S3Store(endpoint_url={endpoint!r}, region="us-east-1")
obj = S3Object("bench", "object.bin")
st.size(obj)
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rss0 = hwm()
tracemalloc.start()
started = time.perf_counter()
data = st.get_bytes(obj)
seconds = time.perf_counter() - started
peak = tracemalloc.get_traced_memory()[1]
rss1 = hwm()
assert type(data) is bytes
print(len(data), peak, rss1 - rss0, seconds)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    os.environ.update(FAKE_AWS_ENV)
    size = args.mb * 1024 * 1024
    with moto_server() as s3:
        client = s3.client()
        client.create_bucket(Bucket="bench")
        client.put_object(Bucket="bench", Key="object.bin", Body=os.urandom(size))
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(env=FAKE_AWS_ENV, endpoint=s3.endpoint)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    fields = out.stdout.split()
    length, peak, rss, seconds = int(fields[0]), int(fields[1]), int(fields[2]), float(fields[3])
    print(f"object            {length / 1e6:8.1f} MB")
    print(f"tracemalloc peak  {peak / 1e6:8.1f} MB   ratio {peak / length:.2f}")
    print(f"max RSS increase  {rss / 1e6:8.1f} MB   ratio {rss / length:.2f}")
    print(f"read time         {seconds:8.2f} s    {length / 1e6 / seconds:.0f} MB/s over loopback")


if __name__ == "__main__":
    main()
