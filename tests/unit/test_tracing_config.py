"""Tracing switched off costs nothing and imports nothing; switched on without the `tiergate[otel]`
extra, it stops the start with a line naming the extra; the envelope carries a trace context only
when there is one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from core import protocol, tracing
from core.errors import ConfigError
from core.settings import Settings, TracingSettings
from tests.conftest import REPO
from tests.processes import QUICK_RECOVERY

HIDE_OTEL = "import sys; sys.modules['opentelemetry'] = None; "  # as where the extra is not installed


def test_tracing_off_loads_none_of_tiergate_s_tracing() -> None:
    # Where OpenTelemetry is installed redis-py loads its API for its own instrumentation; tiergate
    # loads neither its SDK's tracer nor an exporter, nor core.otel, unless tracing is on.
    ours = ("core.otel", "opentelemetry.sdk.trace", "opentelemetry.exporter")
    script = (
        "import sys, gateway.app, workers.process, ops.cli; from core import tracing; "
        "from core.settings import TracingSettings; "
        "assert tracing.start(TracingSettings(), 'gateway', {}) is None; "
        f"print(sorted(m for m in sys.modules if m.startswith({ours!r})))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tracing_on_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"pip install 'tiergate\[otel\]'"):
        tracing.start(TracingSettings(enabled=True), "gateway", {})


def test_the_command_refuses_to_start_tracing_without_the_extra(tmp_path: Path) -> None:
    config = tmp_path / "tiergate.toml"
    pools = "[processors.p]\nlatency = { kind = 'fixed', min_ms = 1 }\nmax_batch = 1\nenergy_efficiency = 1.0\n"
    pools += "cost_per_flop = 1.0\n[models.sim-echo]\nkind = 'echo'\nparams = 1\n[pools.p]\nprocessor = 'p'\n"
    pools += "tiers = ['realtime', 'interactive', 'batch']\nmodels = ['sim-echo']\n"
    config.write_text(QUICK_RECOVERY + pools + "[tracing]\nenabled = true\n")
    command = f"from ops.cli import main; main(['gateway', '--config', {str(config)!r}, '--port', '0'])"
    out = subprocess.run([sys.executable, "-c", HIDE_OTEL + command], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1
    said = out.stderr.strip().splitlines()[-1]
    assert said.startswith("tiergate: [tracing] enabled = true needs OpenTelemetry, which is not installed (")
    assert said.endswith("): pip install 'tiergate[otel]'")


def test_an_untraced_envelope_is_encoded_as_before_and_a_traced_one_keeps_its_context() -> None:
    plain = protocol.Envelope(
        id="r1", model="sim-echo", input="hi", tier="realtime", region="default", reply_to="gw", deadline_at_ms=1
    )
    assert b"traceparent" not in protocol.encoder.encode(plain)
    context = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced = msgspec.structs.replace(plain, traceparent=context)
    assert protocol.envelope_decoder.decode(protocol.encoder.encode(traced)).traceparent == context


def test_tracing_settings_are_checked(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(tracing__enabled=True, tracing__endpoint="http://collector:4318/v1/traces")
    assert (settings.tracing.protocol, settings.tracing.sample_ratio) == ("http/protobuf", 1.0)
    with pytest.raises(ConfigError, match=r"Expected `float` <= 1.* - at `\$.tracing.sample_ratio`"):
        make_settings(tracing__sample_ratio=1.5)
    with pytest.raises(ConfigError, match=r"\$.tracing.protocol"):
        make_settings(tracing__protocol="thrift")
