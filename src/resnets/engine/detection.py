"""Where a detector's training policy was before one engine trained every task: its data and model are
tasks/detection.py's now, its loop engine/loop.py's. These names stay for code that imported them here."""

from __future__ import annotations

from ..tasks.detection import data as _data  # noqa: F401
from ..tasks.detection import model as _model  # noqa: F401
