"""What every tiergate process shares: the wire protocol and Redis keys, settings, clock, errors, logging."""
