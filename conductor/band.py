"""The band of a run: explicit request, then the project's configuration, then the signals.

Small is the default. The signals escalate only when a higher band's marker is clearly there
(see ``conductor.flows.Thresholds``): a count at a threshold stays in the lower band. The band
comes with a one-line reason that names its source, because a person reading the plan should
know whether the code, the configuration or they themselves chose it.

>>> from conductor.flows import FLOWS
>>> from conductor.han_config import HanConfig
>>> from conductor.signals import SignalSet
>>> from events.types import Signal
>>> sigs = SignalSet([Signal(name="subsystems", files=("a.py",), detail="(root)")], ["a.py"])
>>> resolve(FLOWS["code-review"], None, HanConfig(), sigs).reason
'Small: 1 file in 1 subsystem, nothing points higher'
"""

from __future__ import annotations

from typing import Literal

import msgspec

from conductor.flows import Flow
from conductor.han_config import HanConfig
from conductor.signals import SignalSet
from events.types import Band

__all__ = ["BandChoice", "classify", "resolve"]

# How each cross-cutting concern reads in a reason ("touches a migration").
_CONCERN_PHRASES = {
    "security": "touches security-sensitive code",
    "data": "touches schema, queries or data access",
    "infra": "touches infrastructure or delivery config",
    "seam": "crosses a boundary between deployable units",
}


class BandChoice(msgspec.Struct, frozen=True, kw_only=True):
    band: Band
    reason: str  # one line, naming the source
    source: Literal["explicit", "config", "signals", "default"]


def resolve(flow: Flow, requested: Band | None, config: HanConfig, sigs: SignalSet) -> BandChoice:
    if requested is not None:
        return BandChoice(band=requested, reason=f"{requested.capitalize()}: passed explicitly",
                          source="explicit")
    if config.band is not None:
        return BandChoice(
            band=config.band,
            reason=f"{config.band.capitalize()}: from {config.path} default-swarm-size",
            source="config",
        )
    band, why = classify(flow, sigs)
    if config.dynamic:
        why += f" ({config.path} asks to size from the code)"
    return BandChoice(band=band, reason=f"{band.capitalize()}: {why}",
                      source="signals" if band != "small" else "default")


def why(band: str, reason: str) -> str:
    """The reason without the band name it starts with (it is written to be announced on its
    own, "Small: 3 files…"), for a line that names the band already."""
    return reason.removeprefix(f"{band.capitalize()}: ")


def classify(flow: Flow, sigs: SignalSet) -> tuple[Band, str]:
    """The band the signals clearly point to, and why, in a few words."""
    t = flow.thresholds
    files = sigs.file_count
    docs_only = sigs.fired("docs-only")
    # Documentation spread over folders is not a change spread over subsystems.
    subsystems = 0 if docs_only else len(sigs.subsystems)
    concerns = [c for c in t.concerns if sigs.fired(c)]

    def above(value: int, limit: int | None) -> bool:
        return limit is not None and value > limit

    def at_least(value: int, limit: int | None) -> bool:
        return limit is not None and value >= limit

    large = (
        above(files, t.large_files)
        or at_least(subsystems, t.large_subsystems)
        or at_least(len(concerns), t.large_concerns)
        or any(sigs.fired(s) for s in t.large_signals)
    )
    medium = (
        above(files, t.medium_files)
        or at_least(subsystems, t.medium_subsystems)
        or at_least(len(concerns), t.medium_concerns)
    )
    band: Band = "large" if large else "medium" if medium else "small"

    plural = "s" if files != 1 else ""
    if docs_only:
        parts = [f"{files} documentation file{plural}"]
    else:
        parts = [f"{files} file{plural} in {subsystems} subsystem{'s' if subsystems != 1 else ''}"]
    shown = list(concerns)
    for s in t.large_signals:
        if sigs.fired(s) and s not in shown:
            shown.append(s)
    parts += [_concern_phrase(c, sigs) for c in shown]
    if band == "small":
        parts.append("nothing points higher")
    return band, ", ".join(parts)


def _concern_phrase(name: str, sigs: SignalSet) -> str:
    signal = sigs.get(name)
    if name == "data" and signal is not None and "migration" in signal.detail:
        return "touches a migration"
    return _CONCERN_PHRASES.get(name, f"touches {name}")
