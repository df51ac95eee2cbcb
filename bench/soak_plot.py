"""The soak's plot: the RSS of every process of the stack, Redis's used_memory and keys with a
TTL, and the request and reply streams' lengths, over time (matplotlib's Agg backend, one PNG).
Writes the one file it is given.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.soak_sample import Series


def plot(s: Series, path: Path, warmup_s: float) -> Path:
    fig, (rss, redis, streams) = plt.subplots(3, 1, figsize=(10, 11), dpi=100, sharex=True)
    for name, values in s.rss_kib.items():
        rss.plot(s.t_s, [None if v is None else v / 1024 for v in values], label=name, linewidth=1)
    rss.set_ylabel("RSS (MiB)")
    rss.legend(fontsize=7, ncol=2, loc="upper left")
    redis.plot(s.t_s, [v / 2**20 for v in s.redis["used_memory"]], color="tab:red", label="used_memory")
    redis.set_ylabel("Redis used_memory (MiB)")
    keys = redis.twinx()
    keys.plot(s.t_s, s.redis["expires"], color="tab:gray", linestyle="--", linewidth=1, label="keys with a TTL")
    keys.set_ylabel("keys with a TTL")
    redis.legend(loc="upper left", fontsize=7)
    keys.legend(loc="lower right", fontsize=7)
    for key, lengths in (s.streams | s.replies).items():
        streams.plot(s.t_s, lengths, label=key, linewidth=1)
    streams.set_ylabel("stream length (entries)")
    streams.set_xlabel("seconds since the soak began")
    streams.legend(fontsize=6, loc="upper left")
    for ax in (rss, redis, streams):
        ax.grid(True, alpha=0.3)
        ax.axvline(warmup_s, color="black", linewidth=0.8, linestyle=":")
    rss.set_title(f"tiergate soak (slopes fitted after the dotted line, {warmup_s:g} s)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
