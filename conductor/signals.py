"""Deterministic facts about the considered files: what the change touches, and where.

Every signal remembers the files that fired it, so the band reason, the roster reasons and each
persona's slice of the files can all point back at real paths. A signal fires only on a clear
marker (a migration directory, a ``Dockerfile``, a lock being taken); a passing mention in a
README fires nothing, because documentation is never scanned for content markers. That is how
"a borderline signal never escalates" starts: weak hints are simply not signals.

Content is read through the snapshot, at most ``SCAN_BYTES`` of at most ``SCAN_FILES`` files
(considered files in path order), so a huge repository costs a bounded amount.

>>> from conductor.snapshot import MemorySnapshot
>>> snap = MemorySnapshot({"db/migrations/0002_add_email.sql": "ALTER TABLE users ADD email text;"})
>>> found = compute(snap, snap.changed())
>>> found.fired("data"), found.files("data")
(True, ('db/migrations/0002_add_email.sql',))
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence

from conductor.snapshot import Snapshot
from events.types import Signal

__all__ = [
    "CONCERN_WORDS",
    "SCAN_BYTES",
    "SCAN_FILES",
    "SignalSet",
    "compute",
    "is_doc",
    "is_manifest",
    "is_source",
    "is_test",
    "kind_of",
    "language_of",
    "subsystem_of",
]

SCAN_BYTES = 32 * 1024  # content read per file for markers
SCAN_FILES = 800  # files whose content is scanned; paths are always all checked

# --- what a file is ------------------------------------------------------------------------

_LANGUAGES = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
    ".cjs": "javascript", ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript",
    ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin", ".kts": "kotlin",
    ".scala": "scala", ".rb": "ruby", ".php": "php", ".cs": "c#", ".fs": "f#", ".c": "c",
    ".h": "c", ".cc": "c++", ".cpp": "c++", ".cxx": "c++", ".hpp": "c++", ".hh": "c++",
    ".swift": "swift", ".m": "objective-c", ".mm": "objective-c", ".sql": "sql",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".ps1": "powershell", ".ex": "elixir",
    ".exs": "elixir", ".erl": "erlang", ".hs": "haskell", ".clj": "clojure", ".lua": "lua",
    ".dart": "dart", ".r": "r", ".jl": "julia", ".pl": "perl", ".vue": "vue",
    ".svelte": "svelte", ".html": "html", ".htm": "html", ".css": "css", ".scss": "css",
    ".sass": "css", ".less": "css", ".tf": "terraform", ".hcl": "terraform",
    ".proto": "protobuf", ".graphql": "graphql", ".gql": "graphql", ".prisma": "prisma",
    ".jinja": "html", ".j2": "html", ".hbs": "html", ".ejs": "html", ".erb": "html",
}
# Languages whose files carry logic (the rest are markup, styles or declarations).
_CODE = frozenset(_LANGUAGES.values()) - {"html", "css", "protobuf", "graphql", "prisma"}
_DOC_EXT = {".md", ".markdown", ".rst", ".txt", ".adoc", ".asciidoc", ".org"}
_DOC_NAMES = {"readme", "changelog", "changes", "license", "licence", "contributing", "notice",
              "authors", "history", "copying", "code_of_conduct", "security"}
_DOC_DIRS = {"docs", "doc", "documentation", "adr", "adrs", "decisions"}
_TEST_DIRS = {"test", "tests", "__tests__", "spec", "specs", "testing", "e2e"}
_TEST_NAME = re.compile(
    r"(^test_.*\.py$|_test\.py$|^conftest\.py$|_test\.go$|\.(test|spec)\.[cm]?[jt]sx?$"
    r"|Tests?\.(java|kt|cs|scala)$|_spec\.rb$|_test\.rb$|_test\.exs$)"
)
_VENDORED_DIRS = {"vendor", "node_modules", "third_party", "third-party", "dist", "build",
                  "site-packages", ".venv", "venv", "__pycache__", "target", "generated"}
_GENERATED = re.compile(r"(\.min\.(js|css)$|_pb2(_grpc)?\.pyi?$|\.pb\.go$|\.generated\.|\.g\.dart$)")
_MANIFESTS = {
    "package.json", "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "npm-shrinkwrap.json",
    "pyproject.toml", "setup.py", "setup.cfg", "pipfile", "pipfile.lock", "poetry.lock",
    "uv.lock", "go.mod", "go.sum", "cargo.toml", "cargo.lock", "gemfile", "gemfile.lock",
    "pom.xml", "build.gradle", "build.gradle.kts", "settings.gradle", "composer.json",
    "composer.lock", "mix.exs", "mix.lock", "packages.config", "deno.json", "bun.lockb",
}
_MANIFEST_PATTERN = re.compile(r"(^requirements[\w.-]*\.(txt|in)$|^constraints[\w.-]*\.txt$|\.csproj$)")
# Subsystems are two levels deep under these conventional containers (packages/api, src/app).
_CONTAINERS = {"src", "lib", "libs", "packages", "services", "apps", "cmd", "internal", "pkg",
               "modules", "components", "crates"}


def _parts(path: str) -> list[str]:
    return path.lower().split("/")


def language_of(path: str) -> str:
    """The language of a file by its extension ('' when unknown)."""
    name = posixpath.basename(path).lower()
    if name == "dockerfile" or name.startswith("dockerfile."):
        return "dockerfile"
    return _LANGUAGES.get(posixpath.splitext(name)[1], "")


def is_doc(path: str) -> bool:
    if is_manifest(path):
        return False
    parts = _parts(path)
    name = parts[-1]
    stem, ext = posixpath.splitext(name)
    if ext in _DOC_EXT:
        return True
    if stem in _DOC_NAMES and ext in ("", ".txt"):
        return True
    return any(p in _DOC_DIRS for p in parts[:-1]) and not language_of(path)


def is_test(path: str) -> bool:
    parts = path.split("/")
    return bool(_TEST_NAME.search(parts[-1])) or any(p.lower() in _TEST_DIRS for p in parts[:-1])


def is_manifest(path: str) -> bool:
    name = posixpath.basename(path).lower()
    return name in _MANIFESTS or bool(_MANIFEST_PATTERN.search(name))


def _is_vendored(path: str) -> bool:
    return any(p in _VENDORED_DIRS for p in _parts(path)[:-1]) or bool(_GENERATED.search(path))


def kind_of(path: str) -> str:
    """One of doc, manifest, vendored, test, source, markup, other."""
    if is_doc(path):
        return "doc"
    if is_manifest(path):
        return "manifest"
    if _is_vendored(path):
        return "vendored"
    lang = language_of(path)
    if is_test(path) and lang in _CODE:
        return "test"
    if lang in _CODE:
        return "source"
    if lang:
        return "markup"
    return "other"


def is_source(path: str) -> bool:
    """First-party code with logic: no tests, docs, manifests, generated or vendored files."""
    return kind_of(path) == "source"


def subsystem_of(path: str) -> str:
    """The part of the repository a file belongs to: its top directory (two levels under a
    conventional container such as ``src/`` or ``packages/``), or ``(root)``."""
    parts = path.split("/")
    if len(parts) == 1:
        return "(root)"
    if parts[0].lower() in _CONTAINERS and len(parts) > 2:
        return f"{parts[0]}/{parts[1]}"
    return parts[0]


# --- markers ---------------------------------------------------------------------------------


class _Rule:
    """A marker of one signal: a path pattern or a content pattern, with a label for the detail."""

    __slots__ = ("signal", "label", "on_path", "pattern", "kinds")

    def __init__(self, signal: str, label: str, pattern: str, *, on_path: bool = False,
                 kinds: tuple[str, ...] = ("source",), flags: int = 0):
        self.signal = signal
        self.label = label
        self.on_path = on_path
        self.pattern = re.compile(pattern, flags)
        self.kinds = kinds


_I = re.IGNORECASE
_M = re.MULTILINE
_ANY = ("source", "test", "markup", "other", "manifest")
# Patterns are written so that hostile content cannot make them backtrack for long: no
# unbounded repeat next to another that can match the same characters (``^\s*`` would span
# blank lines; ``[^;\n]{1,200}?`` bounds a search for FROM).
_RULES: tuple[_Rule, ...] = (
    # data: schema, migrations, SQL, ORM models, data access
    _Rule("data", "migration", r"(^|/)(migrations?|migrate|alembic|db/migrate|flyway|liquibase)/",
          on_path=True, kinds=_ANY, flags=_I),
    _Rule("data", "SQL", r"\.sql$", on_path=True, kinds=_ANY, flags=_I),
    _Rule("data", "schema", r"(^|/)(schema\.(prisma|rb|graphql|sql)|[^/]+\.prisma|models\.py|dbt_project\.yml)$",
          on_path=True, kinds=_ANY, flags=_I),
    _Rule("data", "SQL", r"\b(CREATE|ALTER|DROP)\s+(TABLE|INDEX|VIEW|SCHEMA)\b|\bINSERT\s+INTO\b"
          r"|\bDELETE\s+FROM\b|\bSELECT\b[^;\n]{1,200}?\bFROM\s+\w", kinds=("source", "other")),
    _Rule("data", "ORM model", r"\bmodels\.Model\b|\bdeclarative_base\b|\bDeclarativeBase\b|\bColumn\("
          r"|\bmapped_column\(|@Entity\b|@Table\(|\bgorm\.Model\b|\bmongoose\.Schema\b"
          r"|\bsequelize\.define\b|\bop\.(add_column|create_table|drop_column)\b"),
    _Rule("data", "data access", r"\bcursor\.execute(many)?\(|\bsqlite3\.connect\b|\bpsycopg2?\b"
          r"|\bduckdb\.connect\b|\bsqlalchemy\b|\bdjango\.db\b|\bknex\(|\bprisma\.\w+\.(find|create|update)"
          r"|\bdatabase/sql\b|\bsqlx::|\bdiesel::|\bredis\.(Redis|StrictRedis)\("),
    # infra: containers, IaC, k8s, CI/CD, deploy scripts
    _Rule("infra", "container", r"(^|/)(dockerfile[^/]*|docker-compose[^/]*\.ya?ml|compose\.ya?ml|\.dockerignore)$",
          on_path=True, kinds=_ANY, flags=_I),
    _Rule("infra", "IaC", r"\.(tf|tfvars|hcl)$|(^|/)(terraform|pulumi|cdk|ansible|helm|charts)/|(^|/)chart\.yaml$",
          on_path=True, kinds=_ANY, flags=_I),
    _Rule("infra", "k8s", r"(^|/)(k8s|kubernetes|kustomize|manifests/k8s)/|(^|/)kustomization\.ya?ml$",
          on_path=True, kinds=_ANY, flags=_I),
    _Rule("infra", "CI", r"(^|/)(\.github/workflows/[^/]+\.ya?ml|\.gitlab-ci\.ya?ml|jenkinsfile|\.circleci/|"
          r"azure-pipelines\.ya?ml|\.buildkite/|cloudbuild\.ya?ml|\.ci/|\.drone\.ya?ml)",
          on_path=True, kinds=_ANY, flags=_I),
    _Rule("infra", "deploy", r"(^|/)(deploy|deployment|infra|infrastructure|ops)/|(^|/)deploy[^/]*\.(sh|ya?ml)$"
          r"|(^|/)(procfile|fly\.toml|serverless\.ya?ml|skaffold\.ya?ml|app\.ya?ml|ray-cluster\.ya?ml)$",
          on_path=True, kinds=_ANY, flags=_I),
    _Rule("infra", "k8s", r"^kind:[ \t]*(Deployment|Service|StatefulSet|"
          r"DaemonSet|Job|CronJob|Ingress|ConfigMap|Secret)\b", kinds=("other",), flags=_M),
    # security surface: auth, crypto, secrets, untrusted input reaching sinks, HTTP handlers
    _Rule("security", "auth code", r"(^|/)([^/]*[_.-])?(auth|authn|authz|authentication|authorization|"
          r"login|logout|oauth2?|sessions?|permissions?|acl|rbac|crypto|security|secrets?|passwords?|"
          r"jwt|csrf|sso|saml)([_.-][^/]*)?(/|\.[a-z0-9]+$)", on_path=True, kinds=("source", "markup", "other"),
          flags=_I),
    _Rule("security", "secret file", r"(^|/)(\.env(\.[\w-]+)?|[^/]+\.(pem|key|p12|pfx|jks))$",
          on_path=True, kinds=_ANY, flags=_I),
    _Rule("security", "crypto", r"\b(hashlib|hmac|bcrypt|scrypt|argon2|cryptography\.|Crypto\.Cipher|"
          r"jwt\.(encode|decode)|jsonwebtoken|crypto\.subtle|createHmac|createCipher|passlib|"
          r"secrets\.token_\w+|MessageDigest|golang\.org/x/crypto)"),
    _Rule("security", "auth check", r"@login_required|@requires_auth|\bAuthorization\b|\bset_cookie\(|"
          r"\bcheck_password\(|\bverify_password\(|\bis_authenticated\b|\bOAuth2\w*\(|\bcsrf_\w+|"
          r"\bpassword\s*=\s*['\"][^'\"]+['\"]|\b(SECRET_KEY|API_KEY|PRIVATE_KEY|ACCESS_TOKEN)\b\s*="),
    _Rule("security", "HTTP handler", r"@(app|router|api|bp|blueprint)\.(route|get|post|put|patch|delete|"
          r"websocket)\(|\bAPIRouter\(|\bFastAPI\(|\bexpress\(\)|\bapp\.(get|post|put|delete)\(\s*['\"/]"
          r"|\bhttp\.HandleFunc\(|@(Rest)?Controller\b|@(Get|Post|Put|Delete|Request)Mapping\b|"
          r"\bdef\s+(get|post|put|delete)\(self,\s*request\b"),
    _Rule("security", "injection sink", r"\bshell\s*=\s*True\b|\bos\.system\(|\beval\(|\bexec\(|"
          r"\bpickle\.loads?\(|\byaml\.load\((?![^)]*Loader=yaml\.SafeLoader)|\binnerHTML\s*=|"
          r"dangerouslySetInnerHTML|\bchild_process\b|\bRuntime\.getRuntime\(\)\.exec\b"),
    # concurrency: threads, async, actors, locks, queues, goroutines, timers
    _Rule("concurrency", "threads", r"\bimport threading\b|\bthreading\.\w+|\bThreadPoolExecutor\b|"
          r"\bmultiprocessing\b|\bnew Thread\(|\bstd::thread\b|\bExecutorService\b|\bpthread_\w+"),
    _Rule("concurrency", "async", r"\basync\s+(def|fn|function)\b|\bawait\s|\basyncio\.\w+|\bPromise\.(all|race)\b|"
          r"\bCompletableFuture\b|\btokio::|\btrio\.|\banyio\."),
    _Rule("concurrency", "locks", r"\b(R?Lock|Semaphore|Condition|Barrier|Mutex|RWMutex|RwLock)\s*[(<{]|"
          r"\bsync\.(Mutex|RWMutex|WaitGroup|Once)\b|\bsynchronized\b|\bAtomic(Integer|Long|Reference)\b|"
          r"\bArc<Mutex"),
    _Rule("concurrency", "queues", r"\bqueue\.(Queue|SimpleQueue)\(|\basyncio\.Queue\(|\bmake\(chan\b|"
          r"\bchan\s+\w+|\bmpsc::|\bBlockingQueue\b"),
    _Rule("concurrency", "goroutines", r"\bgo\s+(func\b|\w+\()"),
    _Rule("concurrency", "actors", r"@ray\.remote\b|\bray\.get\(|\bActorSystem\b|\bakka\.|\bGenServer\b"),
    _Rule("concurrency", "timers", r"\bsetInterval\(|\bthreading\.Timer\(|\bcall_later\(|\btime\.AfterFunc\("),
    # ui: markup, styles, components, templates
    _Rule("ui", "UI file", r"\.(html?|css|scss|sass|less|jsx|tsx|vue|svelte|jinja2?|j2|hbs|ejs|erb)$|"
          r"(^|/)(templates|static|components|views|pages|ui)/[^/]+\.(js|ts)$",
          on_path=True, kinds=_ANY, flags=_I),
    # behaviour: error paths and state that travel between modules
    _Rule("behaviour", "error paths", r"^[ \t]*(except\b|raise[ \t]+\w|try[ \t]*:|rescue\b)|\bcatch\s*\(|\bthrow\s+new\b|"
          r"\bif\s+err\s*!=\s*nil\b|\.catch\(|\bpanic!\(|\bResult<", flags=_M),
    # input handling: external data parsed, coerced or bounded
    _Rule("input-handling", "parsing", r"\bjson\.loads?\(|\bJSON\.parse\(|\bparse(Int|Float)\(|\bargparse\b|"
          r"\bsys\.argv\b|\bstrconv\.|\bstrptime\(|\burlparse\(|\bcsv\.(reader|DictReader)\b|"
          r"\byaml\.safe_load\(|\bmsgspec\.(json\.decode|convert)\(|\bint\(\s*\w+|\bfloat\(\s*\w+|"
          r"\bDecimal\(|\bre\.(match|fullmatch|search)\(|\bserde_json::|\bunmarshal\b", flags=_I),
    # resilience: outbound calls, retries, timeouts, queues to other systems
    _Rule("resilience", "outbound calls", r"\brequests\.(get|post|put|patch|delete|request|Session)\b|"
          r"\bhttpx\.|\baiohttp\.|\burllib\.request\b|\bfetch\(|\baxios\.|\bhttp\.(Get|Post|Client)\b|"
          r"\bgrpc\.|\bsmtplib\.|\bboto3\.client\("),
    _Rule("resilience", "retries", r"\b(retry|retries|backoff|tenacity|circuit_?breaker|max_attempts)\b", flags=_I),
    _Rule("resilience", "timeouts", r"\btimeout\s*=\s*\w|\bcontext\.WithTimeout\b|\bsetTimeout\("),
    _Rule("resilience", "messaging", r"\b(kafka|rabbitmq|pika|amqp|celery|nats|sqs|pubsub|kombu)\b", flags=_I),
    # seam: interface definitions between deployable units
    _Rule("seam", "interface definition", r"\.proto$|(^|/)(openapi|swagger|asyncapi)[^/]*\.(ya?ml|json)$",
          on_path=True, kinds=_ANY, flags=_I),
    # structure (no diff): nothing here; see _structure
)

# Words in a symptom that point at a specialist (investigate chooses specialists by symptom).
CONCERN_WORDS: dict[str, tuple[str, ...]] = {
    "symptom-concurrency": (
        "intermittent", "intermittently", "flaky", "race", "races", "racy", "deadlock", "deadlocks",
        "hang", "hangs", "hung", "freeze", "freezes", "stuck", "timeout", "timeouts", "times out",
        "ordering", "out of order", "stale", "dropped", "lost message", "under load", "concurrent",
        "concurrently", "sometimes", "randomly", "parallel",
    ),
    "symptom-behaviour": (
        "wrong", "incorrect", "missing value", "missing field", "lost value", "lost values",
        "swallowed", "silently", "unexpected", "unexpectedly", "mutated", "mutation", "corrupt",
        "corrupted", "garbled", "null", "undefined", "truncated", "off by one", "rounding",
        "encoding",
    ),
    "symptom-data": (
        "database", "db", "query", "queries", "slow query", "n+1", "migration", "schema", "index",
        "table", "row", "rows", "duplicate", "duplicates", "integrity", "constraint",
        "transaction", "isolation", "lock wait", "full scan", "sql", "record", "records",
    ),
}

_NEW_FILE = re.compile(r"^diff --git a/\S+ b/(\S+)\n(?:(?!diff --git)[^\n]*\n)*?new file mode", re.M)
_IMPORT_CHANGE = re.compile(
    r"^[+-](?![+-])[ \t]*(import\s+\w|from\s+[\w.]+\s+import\b|(const|let|var)\s+\w+\s*=\s*require\(|"
    r"use\s+[\w:]+|#include\s*[<\"])", re.M
)
_DIFF_FILE = re.compile(r"^diff --git a/\S+ b/(\S+)$", re.M)


class SignalSet:
    """The signals of one run, by name, in name order."""

    def __init__(self, signals: Iterable[Signal], considered: Sequence[str]):
        self.signals: tuple[Signal, ...] = tuple(sorted(signals, key=lambda s: s.name))
        self.considered: tuple[str, ...] = tuple(considered)
        self._by_name = {s.name: s for s in self.signals}

    def __iter__(self):
        return iter(self.signals)

    def get(self, name: str) -> Signal | None:
        return self._by_name.get(name)

    def fired(self, name: str) -> bool:
        return name in self._by_name

    def files(self, name: str) -> tuple[str, ...]:
        s = self._by_name.get(name)
        return s.files if s else ()

    @property
    def subsystems(self) -> tuple[str, ...]:
        # From the signal's files, not by splitting its detail text: a directory may be named
        # "a, b, c" and is still one subsystem.
        s = self._by_name.get("subsystems")
        return tuple(sorted({subsystem_of(p) for p in s.files})) if s else ()

    @property
    def file_count(self) -> int:
        return len(self.considered)


def compute(snapshot: Snapshot, considered: Sequence[str], *, symptom: str = "") -> SignalSet:
    """The signals of the considered files (and of the symptom text, for investigate)."""
    considered = tuple(sorted(dict.fromkeys(considered)))
    hits: dict[str, dict[str, set[str]]] = {}  # signal -> file -> labels

    def hit(signal: str, path: str, label: str) -> None:
        hits.setdefault(signal, {}).setdefault(path, set()).add(label)

    scanned = 0
    for path in considered:
        kind = kind_of(path)
        for rule in _RULES:
            if rule.on_path and kind in rule.kinds and rule.pattern.search(path):
                hit(rule.signal, path, rule.label)
        if kind in ("doc", "vendored", "manifest") or scanned >= SCAN_FILES:
            continue
        text = _head_text(snapshot, path)
        if text is None:
            continue
        scanned += 1
        for rule in _RULES:
            if not rule.on_path and kind in rule.kinds and rule.pattern.search(text):
                hit(rule.signal, path, rule.label)

    signals: list[Signal] = []
    for name, by_file in hits.items():
        labels = sorted({label for ls in by_file.values() for label in ls})
        signals.append(Signal(name=name, files=tuple(sorted(by_file)), detail=", ".join(labels)))

    signals += _shape_signals(snapshot, considered)
    signals += _symptom_signals(symptom)
    if len(considered) > SCAN_FILES:
        signals.append(
            Signal(
                name="scan-limit",
                detail=f"content markers read in {min(scanned, SCAN_FILES)} of {len(considered)} files",
            )
        )
    return SignalSet(signals, considered)


def _head_text(snapshot: Snapshot, path: str) -> str | None:
    got = snapshot.read_head(path, SCAN_BYTES)  # a huge file costs no more than its head
    if got is None:
        return None
    head = got[0]
    if b"\0" in head[:8192]:
        return None  # binary
    return head.decode("utf-8", errors="replace")


def _shape_signals(snapshot: Snapshot, considered: tuple[str, ...]) -> list[Signal]:
    """Signals about the shape of the change: size, subsystems, languages, kinds of files."""
    out: list[Signal] = []
    if not considered:
        return out
    out.append(Signal(name="considered", files=considered, detail=f"{len(considered)} files"))

    kinds = {p: kind_of(p) for p in considered}
    code = [p for p in considered if kinds[p] in ("source", "markup", "other", "manifest")]
    counted = code or list(considered)
    subsystems = sorted({subsystem_of(p) for p in counted})
    out.append(Signal(name="subsystems", files=tuple(counted), detail=", ".join(subsystems)))

    langs: dict[str, int] = {}
    for p in considered:
        lang = language_of(p)
        if lang:
            langs[lang] = langs.get(lang, 0) + 1
    if langs:
        detail = ", ".join(f"{k} ({v})" for k, v in sorted(langs.items(), key=lambda kv: (-kv[1], kv[0])))
        files = tuple(p for p in considered if language_of(p))
        out.append(Signal(name="languages", files=files, detail=detail))

    source = tuple(p for p in considered if kinds[p] == "source")
    if source:
        out.append(Signal(name="source", files=source, detail=f"{len(source)} source files"))
    tests = tuple(p for p in considered if kinds[p] == "test")
    if tests:
        out.append(Signal(name="tests", files=tests, detail=f"{len(tests)} test files"))
    manifests = tuple(p for p in considered if kinds[p] == "manifest")
    if manifests:
        out.append(Signal(name="manifests", files=manifests, detail=f"{len(manifests)} manifests"))
    if all(kinds[p] == "doc" for p in considered):
        out.append(Signal(name="docs-only", files=considered, detail="every considered file is documentation"))
    docs = tuple(p for p in considered if kinds[p] == "doc")
    if docs:
        out.append(Signal(name="docs", files=docs, detail=f"{len(docs)} documentation files"))

    structure = _structure(snapshot, source)
    if structure is not None:
        out.append(structure)
    seam = _deployables(snapshot, considered)
    if seam is not None:
        out.append(seam)
    unfamiliar = _unfamiliar(snapshot, considered, subsystems)
    if unfamiliar is not None:
        out.append(unfamiliar)
    return out


def _structure(snapshot: Snapshot, source: tuple[str, ...]) -> Signal | None:
    """New modules or changed imports in the diff; with no diff, source spread over several
    directories (the structure itself is what is under review)."""
    if not source:
        return None
    diff = snapshot.diff()
    wanted = set(source)
    if diff:
        new = {p for p in _NEW_FILE.findall(diff) if p in wanted}
        changed_imports: set[str] = set()
        for block in re.split(r"(?m)^(?=diff --git )", diff):
            m = _DIFF_FILE.match(block)
            if m and m.group(1) in wanted and _IMPORT_CHANGE.search(block):
                changed_imports.add(m.group(1))
        files = tuple(sorted(new | changed_imports))
        if not files:
            return None
        labels = (["new modules"] if new else []) + (["changed imports"] if changed_imports else [])
        return Signal(name="structure", files=files, detail=", ".join(labels))
    dirs = {posixpath.dirname(p) for p in source}
    if len(dirs) >= 2:
        return Signal(name="structure", files=source, detail=f"source in {len(dirs)} directories")
    return None


def _deployables(snapshot: Snapshot, considered: tuple[str, ...]) -> Signal | None:
    """The change spans two or more deployable units: top directories with their own container
    file or package manifest."""
    units: set[str] = set()
    for p in snapshot.paths():
        parts = p.split("/")
        if len(parts) < 2:
            continue
        name = parts[-1].lower()
        if name.startswith("dockerfile") or is_manifest(p):
            units.add(subsystem_of(p) if parts[0].lower() in _CONTAINERS else parts[0])
    # A unit is one or two path segments, so the units a file lies under are found by looking
    # up its own two leading prefixes (linear), not by testing every unit against every file.
    touched = sorted({u for p in considered for u in _prefixes(p) if u in units})
    if len(touched) < 2:
        return None
    wanted = set(touched)
    files = tuple(p for p in considered if any(u in wanted for u in _prefixes(p)))
    return Signal(name="seam", files=files, detail="deployable units: " + ", ".join(touched))


def _prefixes(path: str) -> tuple[str, ...]:
    """The directories of one and two segments that ``path`` lies under: ``u`` is among them
    exactly when ``path.startswith(u + "/")`` for a ``u`` of one or two segments."""
    parts = path.split("/", 2)
    if len(parts) == 1:
        return ()
    if len(parts) == 2:
        return (parts[0],)
    return (parts[0], f"{parts[0]}/{parts[1]}")


def _unfamiliar(snapshot: Snapshot, considered: tuple[str, ...], subsystems: list[str]) -> Signal | None:
    """No documentation lives in the subsystems under consideration."""
    named = [s for s in subsystems if s != "(root)"]
    if not named:
        return None
    wanted = set(named)  # one or two segments each, as for _deployables
    for p in snapshot.paths():
        if is_doc(p) and any(s in wanted for s in _prefixes(p)):
            return None
    return Signal(name="unfamiliar", files=considered, detail="no documentation in " + ", ".join(named))


def _symptom_signals(symptom: str) -> list[Signal]:
    if not symptom.strip():
        return []
    text = " " + re.sub(r"[^a-z0-9+]+", " ", symptom.lower()) + " "
    out = []
    for name, words in CONCERN_WORDS.items():
        found = sorted({w for w in words if f" {w} " in text})
        if found:
            out.append(Signal(name=name, detail="symptom mentions " + ", ".join(repr(w) for w in found)))
    return out
