# %% [markdown]
# # whisper_modal on Modal, notebook style
#
# Run cell by cell in Jupyter/VS Code (`# %%` cells), or as a script. Needs a Modal
# account: `modal token new`, then deploy the bundled app once:
#
#     whisper-modal deploy            # = modal deploy -m whisper_modal.app
#
# Without an account the same calls run on this machine: the default backend policy "auto"
# tries Modal and falls back locally (set WHISPER_MODAL_BACKEND=modal|local|auto to choose).

# %%
import asyncio
from pathlib import Path

import whisper_modal as wm

SAMPLE = Path(__file__).with_name("sample.flac") if "__file__" in dir() else Path("sample.flac")
# connect_timeout bounds the first lookup: an unreachable Modal costs seconds, not minutes
client = wm.configure(model="tiny.en", allow_cpu_fallback=True, connect_timeout=10)

# %% One blocking call: a typed, immutable Transcript
t = wm.transcribe(SAMPLE, language="en", word_timestamps=True)
print(t.backend, t.device, f"{t.duration:.1f} s", t.timings)
print(t.to_srt())

# %% Submit now, collect later - from this process or another one
job = wm.submit(SAMPLE, language="en")
print("job id:", job.id, job.status())
saved_id = job.id  # store it in a database, a queue message, a file...
again = wm.Job.from_id(saved_id)  # ...and re-attach anywhere with Modal credentials
print(again.wait(timeout=600, progress=True).text)

# %% Many files: bounded concurrency, input order, errors returned in place
results = wm.transcribe_many([SAMPLE, SAMPLE, b"not audio"], concurrency=4, return_exceptions=True)
for r in results:
    print(type(r).__name__, r.text[:60] if isinstance(r, wm.Transcript) else r)


# %% asyncio
async def main() -> None:
    first = await wm.atranscribe(SAMPLE, language="en")
    job = await wm.asubmit(SAMPLE, language="en")
    second = await job.aresult(timeout=600)
    print(first.text == second.text)


asyncio.run(main())

# %% What happened, in numbers
print(client.stats())
