"""When progress bars are drawn: one operational setting for every command (``progress``)."""

from __future__ import annotations

import sys
from typing import Literal

ProgressSetting = Literal["auto", "always", "never"]


def show_bars(setting: ProgressSetting | bool) -> bool:
    """``auto``: only when standard error is a terminal (log files and CI output get no bar redraws);
    ``always`` / ``never`` as they say. A bool (the older ``train.progress``) means always / never."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return sys.stderr.isatty()
    return setting == "always"
