"""What stops a stream: its error, and the test hook that kills the process at a phase."""

from __future__ import annotations

import os
import signal

from robusta.errors import RobustaError

FAULT_ENV = "ROBUSTA_STREAM_FAULT"  # tests: "phase:batch" kills the process there (SIGKILL)


class StreamingError(RobustaError, RuntimeError):
    """The stream cannot start or stopped on an error; the message says what to do."""


def fault(phase: str, batch_id: int) -> None:
    """Test hook: ``ROBUSTA_STREAM_FAULT=phase:batch`` kills this process (SIGKILL) there."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted == f"{phase}:{batch_id}":
        os.kill(os.getpid(), signal.SIGKILL)
