"""The zero-shot suite of the U-MARVEL paper (Tables 9-10): task registry, item templates, metrics, runner, reports.

See ``shared/docs/zeroshot-spec.md`` for the protocol each task follows.
"""

from __future__ import annotations

from .tasks import SUITES, TASKS, ZeroShotTask, get_task

__all__ = ["SUITES", "TASKS", "ZeroShotTask", "get_task"]
