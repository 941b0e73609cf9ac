"""Quiet, honest console output: each log line once, no third-party advertisements or deprecation noise.

Lightning installs its own console handler on the `lightning` logger at import time while still propagating to
the root logger, so with the CLI's root handler every Lightning line was printed twice (once bare, once with a
timestamp). It also logs "💡 Tip: ... try installing litlogger/litmodels" advertisements, and its pytree helper
triggers a torch deprecation warning about `LeafSpec` on every fit. None of these is something a mammokit user
can act on, so they are removed where they are emitted: `tidy_third_party_output()` runs right after Lightning
is imported (engine/runner.py).
"""

from __future__ import annotations

import logging
import warnings

# Loggers Lightning attaches console handlers to (lightning >= 2.5: "lightning"; older: the two sub-packages).
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
# Where `rank_zero_info` logs (the tips come through these).
LIGHTNING_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
ADVERT_PREFIX = "💡 Tip:"


class DropAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing ..." lines (advertisements for cloud services)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERT_PREFIX)


def tidy_third_party_output() -> None:
    """Route Lightning's log lines through the root handler once, drop its adverts and its deprecation noise.

    Idempotent. Lightning's own console handlers are removed only when the root logger has a handler (the CLI
    sets one up), so a library user who configured nothing still sees Lightning's lines.
    """
    root_configured = bool(logging.getLogger().handlers)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if root_configured:
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:  # Lightning's console handler, not a user's file handler
                    logger.removeHandler(handler)
            logger.propagate = True
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropAdvertisements) for f in logger.filters):
            logger.addFilter(DropAdvertisements())
    # torch deprecation raised inside lightning.pytorch.utilities._pytree on every fit; fixed upstream, not ours
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*is deprecated")
