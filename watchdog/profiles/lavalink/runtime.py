"""The Java runtime the Lavalink fallback needs: ``java -version``'s major, read before a stop.

The runbook's "before" list asks for Java 17+; a fallback that cannot start for want of it is
found in preflight, while the primary still runs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence


async def java_major(command: Sequence[str]) -> tuple[int | None, str]:
    """The major version ``java -version`` reports (``17`` from ``"17.0.15"``, 8 from 1.8)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return None, f"cannot run {' '.join(command)}: {exc}"
    try:
        async with asyncio.timeout(30):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return None, f"{' '.join(command)} did not answer within 30s"
    text = output.decode(errors="replace")
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if process.returncode != 0 or match is None:
        return None, f"{' '.join(command)} gave no version (exit {process.returncode})"
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" is Java 8
        major = int(match.group(2))
    return major, text.splitlines()[0].strip()
