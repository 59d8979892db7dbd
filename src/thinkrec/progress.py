"""Console output: when progress bars are drawn (one operational setting for every command, ``progress``),
and log lines that keep clear of them."""

from __future__ import annotations

import logging
import sys
from typing import Literal

from tqdm import tqdm

ProgressSetting = Literal["auto", "always", "never"]


def show_bars(setting: ProgressSetting | bool) -> bool:
    """``auto``: only when standard error is a terminal (log files and CI output get no bar redraws);
    ``always`` / ``never`` as they say. A bool (the older ``train.progress``) means always / never."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return sys.stderr.isatty()
    return setting == "always"


class LineHandler(logging.Handler):
    """Log records as plain lines on standard error, written between the progress bars drawn there (through
    ``tqdm.write``). ``sys.stderr`` is looked up per record, so a later redirection (a test's capture) applies."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def log_to_stderr(level: int = logging.INFO) -> None:
    """Show the records of thinkrec's loggers at ``level`` and above on standard error, as the CLI does (the
    library itself configures no logging: a program that imports it sets up its own). Idempotent."""
    logger = logging.getLogger("thinkrec")
    if not any(isinstance(handler, LineHandler) for handler in logger.handlers):
        logger.addHandler(LineHandler())
    logger.setLevel(level)
