"""Rank-0 logging with loguru: stderr plus `<output_dir>/log.txt`; other ranks only print warnings."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from loguru import logger

from core import dist


_LOG_FILE: list = [None]
# packages whose modules log through the standard library (logging.getLogger(__name__)): their INFO lines (e.g.
# "perceptual loss off ...", "official schedule: ...") go where the engine's own lines go, not nowhere
STDLIB_PACKAGES = ("models", "tokenizer", "datasets", "samplers", "metrics", "core")


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.log(level, record.getMessage())


_BRIDGE = _ToLoguru(level=logging.INFO)


def log_file() -> Path | None:
    """The log.txt this process writes (rank 0 after setup_logging), else None."""
    return _LOG_FILE[0]


def setup_logging(output_dir: str | None = None) -> None:
    logger.remove()
    _LOG_FILE[0] = None
    fmt = "<green>{time:HH:mm:ss}</green> | <level>{level: <7}</level> | {message}"
    if dist.is_main():
        logger.add(sys.stderr, format=fmt, level="INFO")
        if output_dir:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            logger.add(str(Path(output_dir) / "log.txt"), format="{time:YYYY-MM-DD HH:mm:ss} | {level} | {message}",
                       level="INFO")
            _LOG_FILE[0] = Path(output_dir) / "log.txt"
    else:
        logger.add(sys.stderr, format=f"[rank {dist.rank()}] " + fmt, level="WARNING")
    for name in STDLIB_PACKAGES:
        std = logging.getLogger(name)
        if std.level == logging.NOTSET or std.level > logging.INFO:
            std.setLevel(logging.INFO)
        if _BRIDGE not in std.handlers:
            std.addHandler(_BRIDGE)


__all__ = ["logger", "setup_logging", "log_file"]


def progress(**kw):
    """tqdm on rank 0 only; in logs (no terminal) refresh every 30 s instead of every step."""
    import sys

    from tqdm import tqdm
    kw.setdefault("disable", not dist.is_main())
    kw.setdefault("dynamic_ncols", True)
    if not sys.stderr.isatty():
        kw.setdefault("mininterval", 30.0)
    return tqdm(**kw)
