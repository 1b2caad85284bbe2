"""The flows, as data: who runs, in which wave, chosen by which signal, within which caps.

A ``Flow`` says everything ``conductor.plan`` needs to turn a request into waves of steps, and
everything the report and the catalog need to describe it. Nothing here runs anything: how a
flow runs belongs to ``conductor.advance`` and the actors.

Every flow is read-only. Where the original wrote files (an investigation plan, an overview
document, a test plan), the flow returns its report instead.

>>> FLOWS["investigate"].required_inputs()
('symptom',)
>>> [p.name for p in FLOWS["architectural-analysis"].phases]
['discovery', 'risk', 'architecture', 'validation']
"""

from __future__ import annotations

from typing import Literal

import msgspec

from events.types import Band

__all__ = [
    "BANDS",
    "Calibration",
    "Choice",
    "FLOWS",
    "Flow",
    "FlowInput",
    "PerBand",
    "Phase",
    "Role",
    "Thresholds",
    "band_rank",
]

Role = Literal["discovery", "synthesis", "validator", "editor"]
BANDS: tuple[Band, ...] = ("small", "medium", "large")


def band_rank(band: str) -> int:
    return BANDS.index(band)  # type: ignore[arg-type]


class PerBand(msgspec.Struct, frozen=True, kw_only=True):
    """One number per band."""

    small: int
    medium: int
    large: int

    def at(self, band: str) -> int:
        return getattr(self, band)


class FlowInput(msgspec.Struct, frozen=True, kw_only=True):
    """An input a flow takes, and the ``RunRequested`` field that carries it."""

    name: str
    field: Literal["focus", "symptom", "text", "paths", "base"]
    required: bool = False
    help: str = ""
    narrows: bool = False  # a value naming files or directories narrows the considered files


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    """A specialist the flow adds when one of its signals fired and the band is big enough.

    Choices are listed strongest first: when more fire than the band's cap allows, the first
    ones are kept and the rest are named in a note.
    """

    persona: str
    signals: tuple[str, ...]
    why: str  # the clause after "chosen:" in the roster reason
    min_band: Band = "small"
    phase: str = ""  # '' = the flow's first phase


class Phase(msgspec.Struct, frozen=True, kw_only=True):
    """One wave of the flow (a phase with no step is skipped and the waves close up)."""

    name: str
    role: Role = "discovery"
    personas: tuple[str, ...] = ()  # always seated in this phase
    takes_chosen: bool = False  # signal-chosen, configured and user-named personas join here
    # Several steps of one persona on different angles (investigators, explorers): the count
    # grows with the band from ``count`` up to ``count_max`` as the subsystems allow.
    count: PerBand | None = None
    count_max: PerBand | None = None
    angles: tuple[str, ...] = ()
    angle: str = ""  # the angle of every step of this phase, when it has one
    reads: tuple[str, ...] = ()  # earlier phases read verbatim ('' = every earlier phase)
    reads_personas: tuple[str, ...] = ()  # only these personas' steps of those phases
    min_band: Band = "small"  # the phase runs only from this band up


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """When a flow's signals clearly point above small. A value at a threshold stays in the
    lower band: only a count strictly above ``*_files`` escalates (borderline never does)."""

    medium_files: int | None = None
    large_files: int | None = None
    medium_subsystems: int | None = None  # this many subsystems or more
    large_subsystems: int | None = None
    concerns: tuple[str, ...] = ("security", "data", "infra")
    medium_concerns: int | None = 1  # this many cross-cutting concerns or more
    large_concerns: int | None = 2
    large_signals: tuple[str, ...] = ()  # any of these alone means large (a service seam)


class Calibration(msgspec.Struct, frozen=True, kw_only=True):
    """What each band asks of an agent's reporting threshold (see ``conductor.contracts``)."""

    small: str
    medium: str
    large: str

    def at(self, band: str) -> str:
        return getattr(self, band)


class Flow(msgspec.Struct, frozen=True, kw_only=True):
    """A read-only analysis flow: its inputs, who runs in which wave, and what it reports."""

    name: str
    description: str  # one line
    audience: str  # who reads the report
    task: str  # what every agent of the run is asked to look at, in one sentence
    inputs: tuple[FlowInput, ...]
    spine: tuple[str, ...]  # personas seated at every band
    choices: tuple[Choice, ...] = ()
    caps: PerBand  # signal-chosen and configured personas per band (spine and named excluded)
    phases: tuple[Phase, ...]
    thresholds: Thresholds
    calibration: Calibration
    sections: tuple[str, ...]  # the report's sections, in order
    section_personas: dict[str, tuple[str, ...]] = {}  # which personas' findings fill a section
    # "change": the snapshot's considered files (the diff, the uncommitted work, the paths);
    # "tree": every file in the run's scope, even when the work tree has uncommitted changes.
    scope: Literal["change", "tree"] = "change"
    sized: bool = True  # False: the caps are the same at every band (Han sizes only the rest)
    open_roster: bool = True  # user personas with matching signals may join
    # An infrastructure specialist and an application-source one of which only one sits below
    # the large band: the one whose kind of file the considered files are mostly made of.
    infra_or_app: tuple[str, str] | None = None

    def input(self, name: str) -> FlowInput | None:
        for i in self.inputs:
            if i.name == name:
                return i
        return None

    def required_inputs(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs if i.required)

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)


# --- shared pieces ---------------------------------------------------------------------------

_TEXT = FlowInput(
    name="text", field="text", help="anything else every agent should know (your own words, trusted)"
)
_PATHS = FlowInput(
    name="paths", field="paths", help="limit the run to these files or directories"
)
_BASE = FlowInput(
    name="base", field="base", help="a base ref: consider the branch's changes since it"
)

_REVIEW_CALIBRATION = Calibration(
    small="report only the top level of your severity scale, plus the second level when the "
    "change itself introduces the problem; leave out everything lower",
    medium="report the top two levels of your severity scale, plus lower levels only when the "
    "change itself introduces the problem",
    large="report every level of your severity scale",
)
_AREA_CALIBRATION = Calibration(
    small="report only the clearest, highest-impact findings",
    medium="report findings of high and medium impact",
    large="report everything you can support with evidence",
)

_VALIDATION = Phase(
    name="validation",
    role="validator",
    personas=("adversarial-validator",),
    angle="challenge every surviving finding",
)


def _review() -> Flow:
    return Flow(
        name="code-review",
        description="Reviews a change (a branch against its base, uncommitted work, or given "
        "paths) through several lenses, with severities calibrated to the size of the change.",
        audience="the author of the change and the people reviewing it",
        task="Review the change under consideration and report what should change before it "
        "merges.",
        inputs=(
            _BASE,
            _PATHS,
            FlowInput(name="focus", field="focus", help="areas to look at first (optional)"),
            _TEXT,
        ),
        spine=("junior-developer", "adversarial-security-analyst", "adversarial-validator"),
        choices=(
            Choice(persona="test-engineer", signals=("source",), why="the files change logic or behaviour"),
            Choice(persona="concurrency-analyst", signals=("concurrency",),
                   why="the files use threads, async code, locks, queues or actors"),
            Choice(persona="data-engineer", signals=("data",),
                   why="the files touch schema, migrations, queries or data access"),
            Choice(persona="devops-engineer", signals=("infra",),
                   why="the files touch containers, infrastructure, CI/CD or deploy scripts"),
            Choice(persona="edge-case-explorer", signals=("input-handling",),
                   why="the files parse or coerce outside input"),
            Choice(persona="on-call-engineer", signals=("resilience",),
                   why="the files call other systems, retry, time out or queue work"),
            Choice(persona="behavioral-analyst", signals=("behaviour",),
                   why="the files carry error paths and state between modules"),
            Choice(persona="structural-analyst", signals=("structure",),
                   why="the files add modules or change what depends on what"),
        ),
        caps=PerBand(small=2, medium=4, large=8),
        phases=(
            Phase(name="review", personas=("junior-developer", "adversarial-security-analyst"),
                  takes_chosen=True),
            _VALIDATION,
        ),
        thresholds=Thresholds(
            medium_files=3, large_files=10, medium_subsystems=2, large_subsystems=4,
            concerns=("security", "data", "infra", "seam"),
        ),
        calibration=_REVIEW_CALIBRATION,
        sections=(
            "Review summary",
            "Recommendation",
            "Critical",
            "Warnings",
            "Suggestions",
            "Deferred (YAGNI)",
            "Security vulnerabilities",
            "Unverified claims",
            "Validator outcome",
            "What's good",
            "Agent appendix",
        ),
        section_personas={"Security vulnerabilities": ("adversarial-security-analyst",)},
    )


def _architecture() -> Flow:
    return Flow(
        name="architectural-analysis",
        description="Assesses the architectural health of one focus area: structure and "
        "behaviour first, then the risk of leaving each finding alone, then recommendations.",
        audience="an engineer weighing the design of the module",
        task="Analyse the architecture of the focus area.",
        inputs=(
            FlowInput(name="focus", field="focus", required=True, narrows=True,
                      help="the area to analyse: a directory, module or feature"),
            _PATHS,
            FlowInput(name="text", field="text",
                      help="the concern driving the analysis (optional, passed to every agent)"),
        ),
        spine=("structural-analyst", "behavioral-analyst", "risk-analyst", "software-architect",
               "adversarial-validator"),
        choices=(
            Choice(persona="concurrency-analyst", signals=("concurrency",),
                   why="the files use threads, async code, locks, queues or actors"),
            Choice(persona="adversarial-security-analyst", signals=("security",), min_band="medium",
                   why="the files handle authentication, secrets, crypto or outside requests"),
            Choice(persona="data-engineer", signals=("data",), min_band="medium",
                   why="the files own schema, migrations, queries or data access"),
            Choice(persona="devops-engineer", signals=("infra",), min_band="medium",
                   why="the files define containers, infrastructure, CI/CD or deploys"),
            Choice(persona="on-call-engineer", signals=("resilience",), min_band="medium",
                   why="the files call other systems, retry, time out or queue work"),
            Choice(persona="codebase-explorer", signals=("unfamiliar",), min_band="large",
                   why="the files have no documentation of their own"),
            Choice(persona="system-architect", signals=("seam",), min_band="large",
                   phase="architecture", why="the files cross a boundary between deployable units"),
        ),
        caps=PerBand(small=1, medium=3, large=7),
        phases=(
            Phase(name="discovery", personas=("structural-analyst", "behavioral-analyst"),
                  takes_chosen=True),
            Phase(name="risk", role="synthesis", personas=("risk-analyst",),
                  reads=("discovery",),
                  reads_personas=("structural-analyst", "behavioral-analyst", "concurrency-analyst"),
                  angle="score the risk of leaving each structural, behavioural and concurrency "
                  "finding alone"),
            Phase(name="architecture", role="synthesis", personas=("software-architect",),
                  reads=("discovery", "risk")),
            _VALIDATION,
        ),
        thresholds=Thresholds(
            large_files=12, medium_subsystems=2, large_subsystems=4,
            concerns=("security", "data", "infra"), large_signals=("seam",),
        ),
        calibration=_AREA_CALIBRATION,
        infra_or_app=("devops-engineer", "on-call-engineer"),
        sections=(
            "How to read this report",
            "Executive summary",
            "Structural",
            "Behavioral",
            "Concurrency",
            "Security",
            "Data engineering",
            "DevOps readiness",
            "On-call resilience",
            "Codebase map",
            "Risk assessment",
            "Software-architecture recommendations",
            "System-architecture recommendations",
            "Deferred (YAGNI)",
            "Unverified claims",
            "Validator outcome",
            "Agent appendix",
        ),
        scope="tree",
        section_personas={
            "Structural": ("structural-analyst",),
            "Behavioral": ("behavioral-analyst",),
            "Concurrency": ("concurrency-analyst",),
            "Security": ("adversarial-security-analyst",),
            "Data engineering": ("data-engineer",),
            "DevOps readiness": ("devops-engineer",),
            "On-call resilience": ("on-call-engineer",),
            "Codebase map": ("codebase-explorer",),
            "Risk assessment": ("risk-analyst",),
            "Software-architecture recommendations": ("software-architect",),
            "System-architecture recommendations": ("system-architect",),
        },
    )


def _investigate() -> Flow:
    return Flow(
        name="investigate",
        description="Finds the root cause of a symptom from evidence gathered on several "
        "angles, proposes a fix plan, and has it challenged before it is presented.",
        audience="the engineer who will implement the fix and may be paged for it",
        task="Find out why the symptom happens.",
        inputs=(
            FlowInput(name="symptom", field="symptom", required=True,
                      help="what goes wrong, as you would tell a colleague"),
            _PATHS,
            _TEXT,
        ),
        spine=("evidence-based-investigator", "plan-synthesizer", "adversarial-validator"),
        choices=(
            Choice(persona="concurrency-analyst", signals=("symptom-concurrency",),
                   why="the symptom sounds intermittent or timing-dependent"),
            Choice(persona="behavioral-analyst", signals=("symptom-behaviour",),
                   why="the symptom sounds like values going wrong or missing"),
            Choice(persona="data-engineer", signals=("symptom-data",),
                   why="the symptom sounds like stored data, queries or a migration"),
        ),
        caps=PerBand(small=3, medium=3, large=3),
        phases=(
            Phase(
                name="evidence",
                personas=("evidence-based-investigator",),
                takes_chosen=True,
                count=PerBand(small=2, medium=3, large=3),
                angles=(
                    "the error path: where the symptom shows itself and how the failure travels "
                    "to that point",
                    "the data flow: where the values involved come from and how they change on "
                    "the way",
                    "recent changes: what the history of the code around the symptom says",
                ),
            ),
            Phase(name="diagnosis", role="synthesis", personas=("plan-synthesizer",),
                  reads=("evidence",),
                  angle="state the root cause and the fix plan, citing the evidence ids"),
            Phase(name="validation", role="validator", personas=("adversarial-validator",),
                  angle="challenge the evidence, the root cause and the fix plan"),
        ),
        thresholds=Thresholds(medium_files=3, large_files=10, medium_subsystems=2, large_subsystems=4),
        calibration=_AREA_CALIBRATION,
        sections=(
            "Summary",
            "Problem statement",
            "Root cause analysis",
            "Planned fix",
            "Evidence summary",
            "Validation results",
            "Unverified claims",
            "Agent appendix",
        ),
        section_personas={
            "Root cause analysis": ("plan-synthesizer",),
            "Planned fix": ("plan-synthesizer",),
            "Evidence summary": ("evidence-based-investigator", "concurrency-analyst",
                                 "behavioral-analyst", "data-engineer"),
            "Validation results": ("adversarial-validator",),
        },
        scope="tree",
        sized=False,
    )


def _overview() -> Flow:
    return Flow(
        name="code-overview",
        description="Explains why a piece of code or a change exists and how it flows, for "
        "someone meeting it for the first time: no findings, no severities.",
        audience="a capable engineer who did not write this code",
        task="Explain what the code under consideration is for and how it works.",
        inputs=(
            _PATHS,
            _BASE,
            FlowInput(name="focus", field="focus", narrows=True,
                      help="a directory, file, symbol or question to centre on"),
            _TEXT,
        ),
        spine=("codebase-explorer", "adversarial-validator", "readability-editor"),
        caps=PerBand(small=0, medium=0, large=0),
        phases=(
            Phase(
                name="exploration",
                personas=("codebase-explorer",),
                count=PerBand(small=1, medium=2, large=3),
                count_max=PerBand(small=1, medium=3, large=5),
                angles=(
                    "entry points and the main flow",
                    "the data model and configuration",
                    "callers, tests and documentation",
                    "the history: why this code came to be",
                    "integrations with other systems",
                ),
            ),
            Phase(name="synthesis", role="synthesis", personas=("codebase-explorer",),
                  reads=("exploration",),
                  angle="draft the overview from the explorers' notes: why it exists, the main "
                  "flow, where to start reading"),
            Phase(name="validation", role="validator", personas=("adversarial-validator",),
                  angle="check the accuracy of every claim in the draft; silence is not a "
                  "contradiction"),
            Phase(name="editing", role="editor", personas=("readability-editor",),
                  reads=("synthesis", "validation")),
        ),
        thresholds=Thresholds(
            medium_files=8, large_files=30, medium_subsystems=2, large_subsystems=4,
            concerns=(), medium_concerns=None, large_concerns=None,
        ),
        calibration=Calibration(
            small="describe the one main path; leave side paths out",
            medium="describe the main path and the side paths a reader will meet",
            large="describe every path a newcomer needs, grouped by intent",
        ),
        sections=(
            "Why it exists",
            "Context used",
            "Main flow",
            "Context and uses",
            "Where to start",
            "What this code does, in plain language",
            "Validator outcome",
            "Agent appendix",
        ),
        section_personas={"Main flow": ("codebase-explorer",)},
        open_roster=False,
    )


def _gaps() -> Flow:
    return Flow(
        name="gap-analysis",
        description="Compares a spec or document in the repository with what the code does, "
        "lists each gap with evidence from both sides, and has a swarm confirm or contradict it.",
        audience="a capable reader who did not do the work",
        task="Find where the code falls short of, or departs from, the document.",
        inputs=(
            FlowInput(name="document", field="focus", required=True,
                      help="path of the spec or document in the repository (the desired state)"),
            FlowInput(name="paths", field="paths",
                      help="the code to compare it with (default: the whole repository)"),
            _TEXT,
        ),
        spine=("gap-analyzer", "junior-developer", "evidence-based-investigator",
               "adversarial-validator", "plan-synthesizer", "readability-editor"),
        choices=(
            Choice(persona="adversarial-security-analyst", signals=("security",),
                   why="the files handle authentication, secrets, crypto or outside requests"),
            Choice(persona="data-engineer", signals=("data",),
                   why="the files own schema, migrations, queries or data access"),
            Choice(persona="user-experience-designer", signals=("ui",),
                   why="the files render screens, components or templates"),
            Choice(persona="devops-engineer", signals=("infra",),
                   why="the files define containers, infrastructure, CI/CD or deploys"),
            Choice(persona="on-call-engineer", signals=("resilience",),
                   why="the files call other systems, retry, time out or queue work"),
            Choice(persona="system-architect", signals=("seam",),
                   why="the files cross a boundary between deployable units"),
            Choice(persona="codebase-explorer", signals=("unfamiliar",),
                   why="the files have no documentation of their own"),
        ),
        caps=PerBand(small=1, medium=3, large=5),
        phases=(
            Phase(name="gaps", personas=("gap-analyzer",),
                  angle="compare the document (desired state) with the code (current state)"),
            Phase(name="swarm", role="synthesis",
                  personas=("junior-developer", "evidence-based-investigator"),
                  takes_chosen=True, reads=("gaps",),
                  angle="confirm, contradict or add to each gap from your lens"),
            Phase(name="validation", role="validator", personas=("adversarial-validator",),
                  angle="confirm or contradict each gap and each addition of the swarm"),
            Phase(name="synthesis", role="synthesis", personas=("plan-synthesizer",),
                  min_band="medium", angle="reconcile the gaps, the swarm's findings and the "
                  "validator's rulings"),
            Phase(name="editing", role="editor", personas=("readability-editor",),
                  min_band="medium", reads=("synthesis",)),
        ),
        thresholds=Thresholds(medium_files=10, large_files=40, medium_subsystems=2, large_subsystems=4),
        calibration=_AREA_CALIBRATION,
        sections=(
            "How to read this report",
            "Executive summary",
            "Indexed gaps",
            "Swarm findings",
            "Unverified claims",
            "Agent appendix",
        ),
        section_personas={"Indexed gaps": ("gap-analyzer",)},
        scope="tree",
    )


def _test_planning() -> Flow:
    return Flow(
        name="automated-test-planning",
        description="Plans the automated tests a target needs: behaviour worth pinning, edge "
        "cases real callers can hit, and negative tests where concurrency or security apply.",
        audience="the engineer implementing the tests",
        task="Plan the automated tests the code under consideration needs.",
        inputs=(
            _PATHS,
            _BASE,
            FlowInput(name="focus", field="focus", narrows=True,
                      help="the files, behaviour or feature to plan tests for"),
            _TEXT,
        ),
        spine=("test-engineer", "edge-case-explorer", "adversarial-validator"),
        choices=(
            Choice(persona="concurrency-analyst", signals=("concurrency",),
                   why="the files use threads, async code, locks, queues or actors"),
            Choice(persona="adversarial-security-analyst", signals=("security",),
                   why="the files handle authentication, secrets, crypto or outside requests; asked for "
                   "negative tests"),
        ),
        caps=PerBand(small=2, medium=2, large=2),
        phases=(
            Phase(name="planning", personas=("test-engineer", "edge-case-explorer"), takes_chosen=True),
            _VALIDATION,
        ),
        thresholds=Thresholds(medium_files=3, large_files=10, medium_subsystems=2, large_subsystems=4),
        calibration=Calibration(
            small="plan only the tests whose absence would let a real failure through",
            medium="plan the high- and medium-priority tests",
            large="plan every test a real caller or input justifies",
        ),
        sections=(
            "Summary",
            "What needs testing and why",
            "What each test covers",
            "Test plan",
            "Deferred tests",
            "Dropped edge cases",
            "Blocked by a production change",
            "Coverage summary",
            "Scope",
            "Agent appendix",
        ),
        section_personas={"Dropped edge cases": ("edge-case-explorer",)},
        sized=False,
    )


FLOWS: dict[str, Flow] = {
    f.name: f
    for f in (_review(), _architecture(), _investigate(), _overview(), _gaps(), _test_planning())
}
