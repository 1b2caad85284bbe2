"""The pinned read snapshot: one git commit that every step of a run reads.

``pin(repo, base=..., paths=..., work_dir=...)`` decides which commit a run reads and what it
considers; ``GitSnapshot.open(repo, commit, work_dir=...)`` re-opens that commit on resume, so
a resumed step sees the same code. Both return a ``GitSnapshot``, which implements
``conductor.snapshot.Snapshot``.

What is pinned:

- a clean git work tree: ``HEAD``'s commit;
- a work tree with uncommitted changes (tracked edits, staged changes, untracked files that are
  not ignored, deletions): a commit made of the files as they are on disk, whose parent is
  ``HEAD``. It is built with a temporary index and a private object directory inside
  ``work_dir``: the user's files, index, refs, config and object database are never written;
- a bare repository: ``HEAD``'s commit;
- a plain directory (not git): a copy in ``work_dir`` (at most ``copy_limit_bytes``), made a git
  repository there and committed with a fixed author and date, so the commit id depends only on
  the files. Symbolic links are copied as links (never followed); special files (fifos, sockets,
  devices) and nested ``.git`` entries are not copied and are listed in ``skipped``.

What is considered (``mode`` and ``changed()``), first match wins:

- ``"branch"``: a ``base`` ref was given: the files changed between ``merge-base(base, commit)``
  and the pinned commit (which includes uncommitted changes, if any);
- ``"uncommitted"``: the work tree had uncommitted changes: the files they touch;
- ``"paths"``: ``paths`` were given (files, or every file under a directory);
- ``"tree"``: every file.

Given ``paths`` always narrow the considered files, whatever the mode; each must exist in the
snapshot. A subdirectory of a repository pins the whole repository and, with no paths, scopes
the run to that subdirectory. Deleted files show in ``diff()`` but not in ``changed()``: only
files that can be read are considered.

How git is run: fixed argument vectors (never a shell), a timeout, no pager, literal pathspecs,
``--no-optional-locks``, neither system nor global config (no program configured there runs;
only the user's ``core.excludesFile`` is taken from it, so what the user ignores stays out),
repository config that could run a program or write into ``.git`` overridden
(``core.fsmonitor``, ``core.hooksPath``, clean/process filters, split index, untracked cache,
auto gc), submodules never looked into (only their HEAD is read), reads given no index (the
user's is never loaded), and no transport allowed (a partial clone's missing object is reported
missing, never fetched). Plumbing commands never run hooks; the override is a second belt. Reads are bounded: the tree's listing, each blob (a big one's unread rest is not drained),
link targets. Git refuses a repository owned by another user ("dubious ownership"); that is
reported, not bypassed.
"""

from __future__ import annotations

import atexit
import errno
import functools
import os
import posixpath
import shutil
import stat
import subprocess
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec

__all__ = ["Entry", "GitSnapshot", "Mode", "SnapshotError", "check_outside", "pin"]

Mode = Literal["uncommitted", "branch", "paths", "tree"]

DEFAULT_COPY_LIMIT = 50_000_000
GIT_TIMEOUT = 120.0
MAX_DIFF_BYTES = 2_000_000
MAX_MESSAGES = 200
MAX_MESSAGE_BYTES = 200_000
CACHE_BYTES = 64 * 1024 * 1024
MAX_LINK_HOPS = 8
MAX_LINK_BYTES = 4096  # a link's target is a path (PATH_MAX); a longer "link" is not followed
# The pinned tree's listing: a few KB of trees that share subtrees (a "git bomb") would list
# millions of paths, each held in memory.
MAX_TREE_BYTES = 64 * 1024 * 1024
# Past this much of a blob left unread, the reader is ended and started again (~5 ms) rather
# than drained: a tree may name a 1 GiB blob many times.
DRAIN_BYTES = 1024 * 1024

# Everything this module keeps lives under <work_dir>/snapshot/.
STORE = "snapshot"
PIN_FILE = "pin.json"

# A fixed identity and date: pinning the same files twice gives the same commit.
_IDENTITY = {
    "GIT_AUTHOR_NAME": "orchestrator",
    "GIT_AUTHOR_EMAIL": "orchestrator@localhost",
    "GIT_AUTHOR_DATE": "@0 +0000",
    "GIT_COMMITTER_NAME": "orchestrator",
    "GIT_COMMITTER_EMAIL": "orchestrator@localhost",
    "GIT_COMMITTER_DATE": "@0 +0000",
}
# (key, value): given to git as GIT_CONFIG_KEY_n/VALUE_n, since ``-c key=value`` splits at the
# first '=' and a filter may be named "x=y".
_SAFE_CONFIG = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", "/dev/null"),
    ("core.splitIndex", "false"),
    ("core.untrackedCache", "false"),
    ("core.sharedRepository", ""),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("log.showSignature", "false"),
)

_MODE_FILE = ("100644", "100755")
_MODE_LINK = "120000"
_MODE_GITLINK = "160000"


class SnapshotError(ValueError):
    """The repository cannot be pinned or re-opened; the message says why, in one line."""


class Entry(msgspec.Struct, frozen=True):
    """One entry of the pinned tree: its git mode and object id."""

    mode: str
    oid: str

    @property
    def kind(self) -> str:
        if self.mode in _MODE_FILE:
            return "file"
        if self.mode == _MODE_LINK:
            return "link"
        if self.mode == _MODE_GITLINK:
            return "submodule"
        return "other"


class Pin(msgspec.Struct, frozen=True, kw_only=True):
    """What ``pin`` decided, stored in ``<work_dir>/snapshot/pin.json`` for ``open``."""

    commit: str
    root: str  # the git work tree (or bare git dir) every git call runs in
    source: str  # the path the user named
    mode: Mode = "tree"
    head: str = ""  # the user's HEAD when pinned ('' for a plain directory or an unborn HEAD)
    base: str = ""  # the commit changes are measured from ('' when the run is not a diff)
    base_ref: str = ""
    dirty: bool = False
    scope: tuple[str, ...] = ()  # the given paths (relative to the repository root)
    objects: str = ""  # private object directory holding the pinned uncommitted changes
    alternates: str = ""  # the repository's own object directory, read through
    skipped: tuple[str, ...] = ()  # entries of a plain directory that were not copied


# --- running git ---------------------------------------------------------------------------


def _base_env(objects: str = "", alternates: str = "", index: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_PAGER="cat",
        PAGER="cat",
        GIT_LITERAL_PATHSPECS="1",
        GIT_OPTIONAL_LOCKS="0",
        LC_ALL="C",
        # No transport at all: a partial clone's missing object would otherwise be fetched
        # from its promisor remote, running whatever program the repository's config names
        # there and writing to its config (git 2.45 and later also read GIT_NO_LAZY_FETCH).
        GIT_ALLOW_PROTOCOL="none",
        GIT_NO_LAZY_FETCH="1",
    )
    if objects:
        env["GIT_OBJECT_DIRECTORY"] = objects
    if alternates:
        env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = alternates
    if index:
        env["GIT_INDEX_FILE"] = index
    return env


Config = Sequence[tuple[str, str]]


@functools.cache
def _absent_index() -> str:
    """An index file that does not exist, for reads.

    A diff reads attributes, and with the user's index that meant loading it: a sparse index
    then had its cache-tree rebuilt, freshening objects of the user's. The path lies in a
    private directory of this process, so nobody else can put a file there.
    """
    folder = tempfile.mkdtemp(prefix="orchestrator-git-")
    atexit.register(shutil.rmtree, folder, True)
    return os.path.join(folder, "no-index")


def _argv(root: str, args: Sequence[str]) -> list[str]:
    return ["git", "--no-pager", "--no-optional-locks", "-C", root, *args]


def _with_config(env: dict[str, str], extra_config: Config = ()) -> dict[str, str]:
    """``env`` with the safe overrides (and ``extra_config``) as git's config variables."""
    items = (*_SAFE_CONFIG, *extra_config)
    out = {**env, "GIT_CONFIG_COUNT": str(len(items))}
    for i, (key, value) in enumerate(items):
        out[f"GIT_CONFIG_KEY_{i}"], out[f"GIT_CONFIG_VALUE_{i}"] = key, value
    return out


def _git(
    root: str,
    args: Sequence[str],
    env: dict[str, str],
    *,
    extra_config: Config = (),
    check: bool = True,
    timeout: float = GIT_TIMEOUT,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(
            _argv(root, args),
            env=_with_config(env, extra_config),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"git {args[0]} timed out after {timeout:.0f}s in {root}") from None
    except FileNotFoundError:
        raise SnapshotError("git is not installed (needed to pin a repository)") from None
    if check and proc.returncode != 0:
        raise SnapshotError(f"git {args[0]} failed in {root}: {_first_line(proc.stderr)}")
    return proc


def _git_bounded(
    root: str, args: Sequence[str], env: dict[str, str], limit: int
) -> tuple[bytes, bool]:
    """Git's stdout up to ``limit`` bytes, and whether it was cut (the process is then ended)."""
    proc = subprocess.Popen(
        _argv(root, args),
        env=_with_config(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    timer = threading.Timer(GIT_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read(limit + 1)
        cut = len(out) > limit
        if cut:
            proc.kill()
        proc.stdout.close()
        code = proc.wait()
    finally:
        timer.cancel()
    if not cut and code != 0:
        raise SnapshotError(f"git {args[0]} failed in {root} (exit {code})")
    return out[:limit], cut


def _first_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
    return (fatal or lines or ["(no message)"])[0][:300]


def _out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode("utf-8", "replace").strip()


# --- pinning -------------------------------------------------------------------------------


def pin(
    repo: str | Path,
    *,
    base: str | None = None,
    paths: Sequence[str] = (),
    work_dir: str | Path,
    copy_limit_bytes: int = DEFAULT_COPY_LIMIT,
) -> GitSnapshot:
    """Pin what a run reads (see the module docstring) and return its snapshot.

    ``work_dir`` is the run's own data directory; everything written goes under
    ``<work_dir>/snapshot/``. Raises ``SnapshotError`` with a one-line reason.
    """
    source = Path(repo).expanduser()
    if not str(repo).strip():
        raise SnapshotError("no repository path given")
    if not source.exists():
        raise SnapshotError(f"repository path {source} does not exist")
    if not source.is_dir():
        raise SnapshotError(f"repository path {source} is not a directory")
    source = source.resolve()
    base = base or None
    if base is not None:
        _check_ref_text(base)
    scope = tuple(_clean_scope(p) for p in paths)
    work = Path(work_dir).expanduser().resolve()
    where = _locate(source)
    _refuse_inside(work, _protected(where, source), "the run's data directory")
    created = not work.exists()
    store = work / STORE
    if store.exists():
        shutil.rmtree(store)  # a retried pin starts over; this directory is only ever ours
    store.mkdir(parents=True)
    try:
        if where is None:
            record = _pin_copy(source, store, base, scope, copy_limit_bytes)
        else:
            record = _pin_repo(source, store, where, base, scope, copy_limit_bytes)
        (store / PIN_FILE).write_bytes(msgspec.json.encode(record))
        snap = GitSnapshot(record)
        snap._check_scope()
    except BaseException:
        shutil.rmtree(work if created else store, ignore_errors=True)
        raise
    return snap


def check_base(repo: str | Path, base: str | None) -> None:
    """Refuse a base ref that ``pin`` would refuse (malformed, unknown, or given for a plain
    directory), only reading the repository: a mistyped ref is told at once, not after Ray
    and the model have started for a run that cannot pin."""
    source = Path(repo).expanduser()
    if not base or not source.is_dir():
        return  # nothing to check, or pin says what is wrong with the repository
    _check_ref_text(base)
    source = source.resolve()
    where = _locate(source)
    if where is None:
        raise _plain_base(source)
    if _resolve_commit(where.root, base, _base_env()) is None:
        raise SnapshotError(f"unknown ref {base!r} in {where.root}")


def _check_ref_text(base: str) -> None:
    # Never an option to git, never a NUL: the ref goes into git's argument vector.
    if base.startswith("-") or "\0" in base or not base.strip():
        raise SnapshotError(f"bad base ref {base!r}")


def _plain_base(source: Path) -> SnapshotError:
    return SnapshotError(f"a base ref needs a git repository; {source} is a plain directory")


def _clean_scope(path: str) -> str:
    clean = normalize(path)
    if clean is None:
        raise SnapshotError(f"bad path {path!r}: paths are relative to the repository, without '..'")
    return clean


class _Where(msgspec.Struct, frozen=True):
    root: str
    prefix: str
    bare: bool
    objects: str
    index: str


_DATA_DIR_ADVICE = "choose a data directory outside it (--data-dir, ORCH_DATA_DIR)"


def check_outside(
    repo: str | Path, path: str | Path, what: str, advice: str = _DATA_DIR_ADVICE
) -> None:
    """Refuse ``path`` (a data directory or a file to write, perhaps not made yet) when it lies
    inside the tree a run of ``repo`` reads: its git work tree, or the plain directory itself."""
    source = Path(repo).expanduser().resolve()
    if not source.is_dir():
        return  # pin says what is wrong with it (or the repository has gone since)
    where = _locate(source)
    _refuse_inside(Path(path).expanduser().resolve(), _protected(where, source), what, advice)


def _protected(where: _Where | None, source: Path) -> list[Path]:
    """Where nothing may be written for a run of ``source``: its work tree, and its git
    directory wherever that lives (a linked worktree's or a ``.git`` file's is elsewhere),
    with the main work tree around it."""
    if where is None:
        return [source]
    common = Path(where.objects).parent
    roots = [Path(where.root), common]
    if common.name == ".git":  # a linked worktree's shared .git sits in the main work tree
        roots.append(common.parent)
    return roots


def _refuse_inside(
    path: Path, roots: Sequence[Path], what: str, advice: str = _DATA_DIR_ADVICE
) -> None:
    for root in roots:
        if path.is_relative_to(root):
            where = f"the repository {root}" if root == roots[0] else f"{root}, part of the repository {roots[0]}"
            raise SnapshotError(
                f"{what} {path} is inside {where}; Orchestrator never writes into what it "
                f"analyses: {advice}"
            )


def _locate(source: Path) -> _Where | None:
    """Where git finds this directory's repository, or None when it is not in one."""
    env = _base_env()
    proc = _git(
        str(source),
        ["rev-parse", "--is-bare-repository", "--is-inside-work-tree", "--git-common-dir"],
        env,
        check=False,
    )
    if proc.returncode != 0:
        message = _first_line(proc.stderr)
        if "not a git repository" in message:
            return None
        raise SnapshotError(f"cannot read the git repository at {source}: {message}")
    bare, inside, common = (_out(proc).splitlines() + ["", "", ""])[:3]
    common_dir = (source / common).resolve()
    if bare == "true":
        return _Where(str(source), "", True, str(common_dir / "objects"), "")
    if inside != "true":
        raise SnapshotError(f"{source} is inside a .git directory, not a work tree")
    top = _out(_git(str(source), ["rev-parse", "--show-toplevel"], env))
    prefix = _out(_git(str(source), ["rev-parse", "--show-prefix"], env)).rstrip("/")
    index = _out(_git(str(source), ["rev-parse", "--path-format=absolute", "--git-path", "index"], env))
    return _Where(top, prefix, False, str(common_dir / "objects"), index)


def _resolve_commit(root: str, ref: str, env: dict[str, str]) -> str | None:
    proc = _git(
        root, ["rev-parse", "--verify", "--quiet", "--end-of-options", ref + "^{commit}"], env, check=False
    )
    return _out(proc) if proc.returncode == 0 and _out(proc) else None


def _pin_repo(
    source: Path, store: Path, where: _Where, base: str | None, scope: tuple[str, ...], limit: int
) -> Pin:
    root = where.root
    env = _base_env()
    head = _resolve_commit(root, "HEAD", env) or ""
    if where.prefix:
        scope = tuple(posixpath.join(where.prefix, p) if p else where.prefix for p in scope) or (
            where.prefix,
        )
    commit, dirty, objects = head, False, ""
    if not where.bare:
        commit, dirty, objects = _pin_work_tree(root, store, where, head, limit)
    if not commit:
        raise SnapshotError(f"repository {root} has no commits and no files to pin")
    read_env = _base_env(objects, where.objects if objects else "")
    base_commit, mode = "", "tree"
    if base is not None:
        resolved = _resolve_commit(root, base, read_env)
        if resolved is None:
            raise SnapshotError(f"unknown ref {base!r} in {root}")
        mb = _git(root, ["merge-base", resolved, commit], read_env, check=False)
        if mb.returncode != 0 or not _out(mb):
            raise SnapshotError(f"ref {base!r} shares no history with the pinned commit in {root}")
        base_commit, mode = _out(mb), "branch"
    elif dirty:
        base_commit, mode = head, "uncommitted"
    elif scope:
        mode = "paths"
    return Pin(
        commit=commit,
        root=root,
        source=str(source),
        mode=mode,
        head=head,
        base=base_commit,
        base_ref=base or "",
        dirty=dirty,
        scope=scope,
        objects=objects,
        alternates=where.objects if objects else "",
    )


def _pin_work_tree(
    root: str, store: Path, where: _Where, head: str, limit: int
) -> tuple[str, bool, str]:
    """The commit of the files on disk: HEAD when clean, else a new commit in ``store``.

    Only changes under the named directory are taken (all of them for the repository root),
    so naming a subdirectory of a big tree never scans the rest; what is new or modified
    there may total at most ``limit`` bytes (it is stored in the run's data).

    The index is a copy of the user's (so only changed files are hashed). ``git add`` and
    ``write-tree`` see ONLY the private object directory (no alternates), so git never finds,
    and so never refreshes, an object of the user's; ``commit-tree`` then reads HEAD through
    an alternate and writes the one new commit object privately.
    """
    objects = store / "objects"
    (objects / "info").mkdir(parents=True)
    (objects / "pack").mkdir()
    index = store / "index"
    if where.index and os.path.isfile(where.index):
        shutil.copy2(where.index, index)
    filters = _filter_overrides(root)
    write_env = _base_env(str(objects), "", str(index))
    if index.exists():
        _copy_sparse_trees(root, write_env, _base_env(str(objects), where.objects))
    if not index.exists() and head:
        _git(root, ["read-tree", head], _base_env(str(objects), where.objects, str(index)))
    spec = where.prefix or "."
    _check_change_size(root, spec, write_env, filters, limit)
    _add_all(root, spec, write_env, filters)
    # write-tree re-checks racily clean files too, so it needs the same overrides as add.
    tree = _out(_git(root, ["write-tree", "--missing-ok"], write_env, extra_config=filters))
    index.unlink(missing_ok=True)
    read_env = _base_env(str(objects), where.objects)
    if head:
        head_tree = _out(_git(root, ["rev-parse", "--verify", head + "^{tree}"], read_env))
        if head_tree == tree:
            shutil.rmtree(objects)
            return head, False, ""
    elif not _git(root, ["ls-tree", tree], read_env).stdout:
        return "", False, ""  # no commits and nothing on disk
    args = ["commit-tree", tree, "-m", "Uncommitted changes in the work tree, pinned for this run"]
    if head:
        args[2:2] = ["-p", head]
    commit = _out(_git(root, args, {**read_env, **_IDENTITY}))
    return commit, True, str(objects)


def _add_all(root: str, spec: str, env: dict[str, str], filters: Config) -> None:
    """``git add -A`` of ``spec`` into the private index, never looking inside a submodule.

    For a submodule whose commit has not moved, ``add`` runs ``git status`` inside it, and that
    runs the clean filters the submodule's own config names (``filters`` only knows the
    superproject's). So submodules are left out of ``add``; ``update-index`` then records each
    one's commit, reading only its HEAD.
    """
    listed = _git(root, ["ls-files", "-s", "-z", "--", spec], env).stdout
    gitlinks = [
        name
        for meta, _, name in (item.partition(b"\t") for item in listed.split(b"\0") if item)
        if meta.startswith(_MODE_GITLINK.encode() + b" ")
    ]
    if not gitlinks:
        _git(root, ["add", "-A", "--", spec], env, extra_config=filters)
        return
    specs = [b":(literal)" + spec.encode()] + [b":(exclude,literal)" + name for name in gitlinks]
    _git(
        root,
        ["add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul"],
        {k: v for k, v in env.items() if k != "GIT_LITERAL_PATHSPECS"},  # for the magic above
        extra_config=filters,
        stdin=b"\0".join(specs),
    )
    _git(
        root,
        ["update-index", "--add", "--remove", "--ignore-skip-worktree-entries", "-z", "--stdin"],
        env,
        extra_config=filters,
        stdin=b"".join(name + b"\0" for name in gitlinks),
    )


def _copy_sparse_trees(root: str, write_env: dict[str, str], read_env: dict[str, str]) -> None:
    """Copy into the private object directory the trees a sparse index stands for.

    A sparse index (``sparse-checkout --sparse-index``) holds a directory outside the cone as
    one tree entry; ``git add`` expands it, and without the tree it would take every file
    there for deleted. The trees only (no blobs) are packed from the user's objects, which
    are only read, and unpacked into the private directory.
    """
    sparse = _git(root, ["config", "--type=bool", "--get", "index.sparse"], _base_env(), check=False)
    if _out(sparse) != "true":
        return  # no sparse index: nothing to list
    listed = _git(root, ["ls-files", "--sparse", "-s", "-z"], write_env).stdout
    trees = [
        meta.split()[1].decode()
        for meta, _, _ in (item.partition(b"\t") for item in listed.split(b"\0") if item)
        if meta.startswith(b"040000 ")
    ]
    if not trees:
        return
    wanted = _git(root, ["rev-list", "--objects", "--no-object-names", "--filter=blob:none", *trees], read_env)
    pack = _git(root, ["pack-objects", "--stdout", "-q"], read_env, stdin=wanted.stdout)
    _git(root, ["unpack-objects", "-q"], write_env, stdin=pack.stdout)


def _check_change_size(
    root: str, spec: str, env: dict[str, str], filters: Config, limit: int
) -> None:
    """Refuse uncommitted changes too big to keep in the run's data (before hashing any)."""
    out = _git(
        root,
        ["ls-files", "-z", "--others", "--modified", "--exclude-standard", "--", spec],
        env,
        extra_config=filters,
    ).stdout
    total = 0
    for rel in {p for p in out.split(b"\0") if p}:
        try:
            st = os.lstat(os.path.join(os.fsencode(root), rel))
        except OSError:
            continue  # deleted: costs nothing
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    if total > limit:
        raise SnapshotError(
            f"the uncommitted changes in {root} hold {_size(total)}, more than the copy limit "
            f"({_size(limit)}): commit or ignore the large files, or raise ORCH_COPY_LIMIT_BYTES"
        )


def _filter_overrides(root: str) -> list[tuple[str, str]]:
    """Config items for the pin's ``add``: every clean/process filter the repository config
    defines turned off, and the user's own ignore file put back.

    A filter is a program; it could also write into ``.git`` (git-lfs does). The pin holds the
    bytes on disk instead. The global config is off for every git call here (it may name
    programs too), but its ``core.excludesFile`` decides what the user's own git ignores: without
    it, files the user ignores everywhere (``.env``, keys) would be pinned and shown to the model.
    """
    proc = _git(
        root,
        ["config", "-z", "--name-only", "--get-regexp", r"^(filter\.|core\.excludesfile$)"],
        _base_env(),
        check=False,
    )
    names, own_excludes = set(), False
    for key in proc.stdout.decode("utf-8", "replace").split("\0"):
        head, _, _ = key.rpartition(".")
        if head.startswith("filter.") and head != "filter":
            names.add(head)
        own_excludes = own_excludes or key.lower() == "core.excludesfile"
    items = []
    for name in sorted(names):
        items += [(f"{name}.clean", ""), (f"{name}.process", ""), (f"{name}.required", "false")]
    if not own_excludes:  # the repository's own setting wins, as it does for git
        excludes = _user_excludes_file()
        if excludes:
            items.append(("core.excludesFile", excludes))
    return items


def _user_excludes_file() -> str:
    """The user's ``core.excludesFile`` from their global and system config, as a path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    for name in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM"):
        if name in os.environ:  # where the user's git looks for those files
            env[name] = os.environ[name]
    folder = os.path.dirname(_absent_index())  # no repository: no repository config is read
    try:
        proc = subprocess.run(
            ["git", "config", "--type=path", "--get", "core.excludesFile"],
            cwd=folder,
            env={**env, "GIT_CEILING_DIRECTORIES": os.path.dirname(folder)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return _out(proc) if proc.returncode == 0 else ""


def _pin_copy(
    source: Path, store: Path, base: str | None, scope: tuple[str, ...], limit: int
) -> Pin:
    if base is not None:
        raise _plain_base(source)
    tree = store / "tree"
    plan, skipped, total = _plan_copy(source, limit)  # the store is outside source (pin checks)
    _copy(source, tree, plan, limit)
    env = _base_env()
    _git(str(tree), ["init", "-q", "--template=", "-b", "main"], env)
    _git(str(tree), ["add", "-A", "-f", "--", "."], env, extra_config=(("core.autocrlf", "false"),))
    tree_id = _out(_git(str(tree), ["write-tree"], env))
    commit = _out(
        _git(str(tree), ["commit-tree", tree_id, "-m", f"Copy of {source.name}"], {**env, **_IDENTITY})
    )
    _git(str(tree), ["update-ref", "refs/heads/main", commit], env)
    return Pin(
        commit=commit,
        root=str(tree),
        source=str(source),
        mode="paths" if scope else "tree",
        scope=scope,
        skipped=tuple(skipped),
    )


def _plan_copy(source: Path, limit: int) -> tuple[list[tuple[str, str]], list[str], int]:
    """Walk without following links: what to copy, what is skipped, and the total size."""
    plan: list[tuple[str, str]] = []  # (relative path, "dir" | "file" | "link")
    skipped: list[str] = []
    total = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = sorted(os.scandir(source / rel) if rel else os.scandir(source), key=lambda e: e.name)
        except OSError as exc:
            raise SnapshotError(f"cannot read {source / rel}: {exc.strerror}") from None
        for entry in entries:
            path = posixpath.join(rel, entry.name) if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:  # a directory that may be listed but not entered
                raise SnapshotError(f"cannot read {source / path}: {exc.strerror}") from None
            if entry.name == ".git":
                skipped.append(path)
            elif stat.S_ISLNK(st.st_mode):
                plan.append((path, "link"))
            elif stat.S_ISDIR(st.st_mode):
                plan.append((path, "dir"))
                stack.append(path)
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > limit:
                    raise SnapshotError(
                        f"{source} holds more than the copy limit ({_size(total)}+ > "
                        f"{_size(limit)}): pin a git repository instead, or raise "
                        "ORCH_COPY_LIMIT_BYTES"
                    )
                plan.append((path, "file"))
            else:
                skipped.append(path)  # fifo, socket or device: reading it could block
    return plan, sorted(skipped), total


def _copy(source: Path, dest: Path, plan: list[tuple[str, str]], limit: int) -> None:
    dest.mkdir()
    copied = 0
    for rel, kind in sorted(plan):
        src, dst = source / rel, dest / rel
        if kind == "dir":
            dst.mkdir()
        elif kind == "link":
            os.symlink(os.readlink(src), dst)
        else:
            try:
                shutil.copyfile(src, dst, follow_symlinks=False)
                shutil.copymode(src, dst, follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue  # removed while we copied: it is simply not in the snapshot
                raise SnapshotError(f"cannot copy {src}: {exc.strerror}") from None
            copied += dst.stat().st_size
            if copied > limit:  # the directory grew while we copied it
                raise SnapshotError(
                    f"{source} grew past the copy limit ({_size(copied)}+ > {_size(limit)}) while copying"
                )


def _size(n: int) -> str:
    return f"{n:,} bytes"


# --- reading -------------------------------------------------------------------------------


def _path_text(name: bytes) -> str:
    """A path git printed, as text. Bytes that are not UTF-8 show as escapes (``\\xff``), so
    two names that differ only there stay two names (a replacement character made them one,
    and one file hid the other); ``normalize`` refuses the backslash, so neither is read."""
    return name.decode("utf-8", "backslashreplace")


def normalize(path: str) -> str | None:
    """A snapshot path in canonical form ('' is the root), or None when it may not be read.

    Refused without looking: non-strings, absolute paths, ``..`` segments, backslashes, NUL.
    ``./`` segments, repeated and trailing slashes are dropped.
    """
    if not isinstance(path, str) or len(path) > 4096:
        return None
    if path.startswith("/") or "\\" in path or "\0" in path:
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


class _Reader:
    """One ``git cat-file --batch`` process serving blob reads by object id."""

    def __init__(self, root: str, env: dict[str, str]):
        self._proc = subprocess.Popen(
            _argv(root, ["cat-file", "--batch"]),
            env=_with_config(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def read(self, oid: str, limit: int | None) -> tuple[bytes, int]:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(oid.encode() + b"\n")
        proc.stdin.flush()
        header = proc.stdout.readline().split()
        if len(header) != 3:
            raise SnapshotError(f"object {oid} is missing from the snapshot")
        size = int(header[2])
        want = size if limit is None else min(size, limit)
        data = proc.stdout.read(want)
        rest = size - want + 1  # the remaining content and the trailing newline
        if rest > DRAIN_BYTES and len(data) == want:
            self.close(kill=True)  # cheaper to start another than to read this through
            return data, size
        while rest > 0:
            chunk = proc.stdout.read(min(rest, 1 << 20))
            if not chunk:
                raise SnapshotError(f"the snapshot reader stopped while reading {oid}")
            rest -= len(chunk)
        if len(data) != want:
            raise SnapshotError(f"the snapshot reader stopped while reading {oid}")
        return data, size

    @property
    def ended(self) -> bool:
        return self._proc.returncode is not None

    def close(self, kill: bool = False) -> None:
        if kill and self._proc.poll() is None:
            self._proc.kill()
        _close(self._proc)


def _close(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe:
            try:
                pipe.close()
            except OSError:  # a pipe to a killed process may refuse its last flush
                pass


class GitSnapshot:
    """One pinned commit, read-only. Implements ``conductor.snapshot.Snapshot``.

    Reads never touch the work tree: every byte comes from git objects of the pinned commit.
    Files are immutable at a commit, so reads are cached (bounded LRU). Safe to share between
    threads. ``close()`` ends the reader process (also done when the object is collected).
    """

    def __init__(self, record: Pin):
        self._pin = record
        self.commit = record.commit
        self.mode: Mode = record.mode
        self.root = record.root
        self.source = record.source
        self.base = record.base
        self.head = record.head
        self.dirty = record.dirty
        self.skipped = record.skipped
        self._env = _base_env(record.objects, record.alternates, _absent_index())
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] | None = None
        self._dirs: frozenset[str] | None = None
        self._paths: tuple[str, ...] | None = None
        self._changed: tuple[str, ...] | None = None
        self._diff: str | None = None
        self._messages: tuple[str, ...] | None = None
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0
        self._reader: _Reader | None = None
        self._finalizer: weakref.finalize | None = None

    # Pickling (e.g. handing a snapshot to another Ray actor) re-opens it from its record.
    def __reduce__(self):
        return (GitSnapshot, (self._pin,))

    @classmethod
    def open(
        cls,
        repo: str | Path,
        commit: str,
        *,
        work_dir: str | Path | None = None,
        base: str | None = None,
        paths: Sequence[str] = (),
    ) -> GitSnapshot:
        """Re-open a commit pinned earlier (on resume), reading exactly the same files.

        With the ``work_dir`` the pin was made in, its record restores the mode, the base, the
        private objects of uncommitted changes and the copy of a plain directory. Without it
        (or when the record is gone) the commit is read from ``repo`` itself; ``base`` and
        ``paths`` then say what is considered. The commit must exist, else ``SnapshotError``.
        """
        if work_dir is not None:
            path = Path(work_dir).expanduser() / STORE / PIN_FILE
            if path.is_file():
                try:
                    record = msgspec.json.decode(path.read_bytes(), type=Pin)
                except msgspec.DecodeError as exc:
                    raise SnapshotError(f"unreadable pin record {path}: {exc}") from None
                if record.commit == commit:
                    snap = cls(record)
                    snap._check_commit()
                    return snap
        source = Path(repo).expanduser()
        if not source.is_dir():
            raise SnapshotError(f"repository path {source} does not exist or is not a directory")
        where = _locate(source.resolve())
        if where is None:
            raise SnapshotError(f"{source} is not a git repository and has no pinned copy")
        scope = tuple(_clean_scope(p) for p in paths)
        if where.prefix:
            scope = tuple(posixpath.join(where.prefix, p) for p in scope) or (where.prefix,)
        env = _base_env()
        resolved = _resolve_commit(where.root, commit, env)
        if resolved is None:
            raise SnapshotError(f"commit {commit} is not in {where.root}")
        base_commit, mode = "", "paths" if scope else "tree"
        if base:
            ref = _resolve_commit(where.root, base, env)
            if ref is None:
                raise SnapshotError(f"unknown ref {base!r} in {where.root}")
            base_commit, mode = _out(_git(where.root, ["merge-base", ref, resolved], env)), "branch"
        snap = cls(
            Pin(
                commit=resolved,
                root=where.root,
                source=str(source),
                mode=mode,
                base=base_commit,
                base_ref=base or "",
                scope=scope,
            )
        )
        snap._check_scope()
        return snap

    # --- the Snapshot protocol -----------------------------------------------------------

    def paths(self) -> tuple[str, ...]:
        """Every readable file: regular files and links that resolve to one inside the tree."""
        if self._paths is None:
            entries = self.entries()
            self._paths = tuple(sorted(p for p in entries if self.resolve(p) is not None))
        return self._paths

    def read(self, path: str) -> bytes | None:
        """The file's bytes at the pinned commit, or None (not a file, or outside the tree).

        A link inside the tree reads as its target when that target is a file in the tree
        (links to links followed up to 8 hops); a link leaving the tree, dangling or looping
        gives None without reading anything. A path through a linked directory is not a file
        of the tree.
        """
        got = self.read_head(path, None)
        return None if got is None else got[0]

    def changed(self) -> tuple[str, ...]:
        if self._changed is None:
            if self._pin.mode in ("branch", "uncommitted") and self.base:
                out = self._git(
                    ["diff-tree", "-r", "-z", "--name-only", "--no-renames", "--diff-filter=d",
                     self.base, self.commit]
                ).stdout
                files = [_path_text(p) for p in out.split(b"\0") if p]
            else:
                files = list(self.paths())
            readable = set(self.paths())
            self._changed = tuple(sorted(p for p in files if p in readable and self._in_scope(p)))
        return self._changed

    def diff(self, limit: int = MAX_DIFF_BYTES) -> str:
        """The unified diff of the considered change ('' when not a diff), at most ``limit`` bytes."""
        if self._diff is None:
            if self._pin.mode not in ("branch", "uncommitted"):
                self._diff = ""
            else:
                args = ["diff-tree", "-r", "-p", "--no-color", "--no-ext-diff", "--no-textconv",
                        "--find-renames"]
                args += [self.base, self.commit] if self.base else ["--root", self.commit]
                if self._pin.scope and "" not in self._pin.scope:  # '' (the root): no limit
                    args += ["--", *self._pin.scope]
                out, cut = _git_bounded(self.root, args, self._env, limit)
                text = out.decode("utf-8", "replace")
                if cut:
                    text = text[: text.rfind("\n") + 1] + f"[diff truncated at {limit:,} bytes]\n"
                self._diff = text
        return self._diff

    def messages(self) -> tuple[str, ...]:
        """Commit messages from the base to the user's HEAD, newest first (bounded)."""
        if self._messages is None:
            tip = self.head if self._pin.dirty else self.commit
            if self._pin.mode != "branch" or not tip or tip == self.base:
                self._messages = ()
            else:
                out, _ = _git_bounded(
                    self.root,
                    ["log", "--no-show-signature", "--no-color", f"--max-count={MAX_MESSAGES}",
                     "--format=%B%x00", f"{self.base}..{tip}"],
                    self._env,
                    MAX_MESSAGE_BYTES,
                )
                parts = out.decode("utf-8", "replace").split("\0")
                self._messages = tuple(m.strip() for m in parts if m.strip())
        return self._messages

    # --- beyond the protocol (the tool layer uses these) ----------------------------------

    def entries(self) -> dict[str, Entry]:
        """Every entry of the pinned tree (files, links, submodules) by path."""
        if self._entries is None:
            out, cut = _git_bounded(
                self.root, ["ls-tree", "-r", "-z", "--full-tree", self.commit], self._env, MAX_TREE_BYTES
            )
            if cut:
                raise SnapshotError(
                    f"the pinned tree lists more than {_size(MAX_TREE_BYTES)} of paths: too many to read"
                )
            entries: dict[str, Entry] = {}
            for item in out.split(b"\0"):
                if not item:
                    continue
                meta, _, name = item.partition(b"\t")
                mode, _kind, oid = meta.decode().split()
                entries[_path_text(name)] = Entry(mode, oid)
            dirs = {""}
            for p in entries:
                parts = p.split("/")
                dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            self._dirs = frozenset(dirs)
            self._entries = entries
        return self._entries

    def is_dir(self, path: str) -> bool:
        self.entries()
        clean = normalize(path)
        return clean is not None and self._dirs is not None and clean in self._dirs

    def resolve(self, path: str) -> str | None:
        """The tree path of the file ``path`` names (following links inside the tree), or None."""
        clean = normalize(path)
        if clean is None:
            return None
        entries = self.entries()
        for _ in range(MAX_LINK_HOPS + 1):
            entry = entries.get(clean)
            if entry is None:
                return None
            if entry.kind == "file":
                return clean
            if entry.kind != "link":
                return None
            target = self._link(entry.oid)
            if target is None or target.startswith("/"):
                return None
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(clean), target))
            if joined == ".." or joined.startswith("../"):
                return None
            clean = normalize(joined)
            if clean is None:
                return None
        return None

    def link_target(self, path: str) -> str | None:
        """The text of a link entry (what it points at), or None when ``path`` is not a link."""
        clean = normalize(path)
        entry = self.entries().get(clean) if clean is not None else None
        if entry is None or entry.kind != "link":
            return None
        return self._link(entry.oid)

    def _link(self, oid: str) -> str | None:
        data, size = self._blob(oid, MAX_LINK_BYTES)
        return None if size > MAX_LINK_BYTES else data.decode("utf-8", "replace")

    def size(self, path: str) -> int | None:
        got = self.read_head(path, 0)
        return None if got is None else got[1]

    def read_head(self, path: str, limit: int | None) -> tuple[bytes, int] | None:
        """The first ``limit`` bytes (all when None) of a file and its full size, or None."""
        target = self.resolve(path)
        if target is None:
            return None
        return self._blob(self.entries()[target].oid, limit)

    def git_log(self, path: str | None = None, n: int = 20) -> list[str]:
        """The newest ``n`` commits up to the pinned one (touching ``path`` when given).

        One line each: short id, date, author, subject. Raises ``SnapshotError`` for a path
        that may not be read.
        """
        args = ["log", "--no-show-signature", "--no-color", "--no-decorate",
                f"--max-count={max(1, min(int(n), 1000))}", "--date=short",
                "--format=%h %ad %an: %s", self.commit, "--"]
        if path is not None:
            clean = normalize(path)
            if clean is None:
                raise SnapshotError(f"bad path {path!r}")
            if clean:
                args.append(clean)
        out, _ = _git_bounded(self.root, args, self._env, 1_000_000)
        return out.decode("utf-8", "replace").splitlines()

    def close(self) -> None:
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._reader = None
            self._finalizer = None

    def __enter__(self) -> GitSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GitSnapshot({self.source!r}, commit={self.commit[:12]}, mode={self.mode!r})"

    # --- internals -----------------------------------------------------------------------

    def _git(self, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        return _git(self.root, args, self._env)

    def _blob(self, oid: str, limit: int | None) -> tuple[bytes, int]:
        with self._lock:
            cached = self._cache.get(oid)
            if cached is not None:
                self._cache.move_to_end(oid)
                data = cached if limit is None else cached[:limit]
                return data, len(cached)
            if self._reader is None:
                self._reader = _Reader(self.root, self._env)
                self._finalizer = weakref.finalize(self, self._reader.close)
            try:
                data, size = self._reader.read(oid, limit)
            except (OSError, ValueError) as exc:
                self._finalizer()  # type: ignore[misc]
                self._reader = None
                raise SnapshotError(f"reading the snapshot failed: {exc}") from None
            if self._reader.ended:  # it left a big blob unread: the next read starts another
                self._finalizer()  # type: ignore[misc]
                self._reader = None
            if len(data) == size and size <= CACHE_BYTES // 8:
                self._cache[oid] = data
                self._cached += size
                while self._cached > CACHE_BYTES:
                    _, old = self._cache.popitem(last=False)
                    self._cached -= len(old)
            return data, size

    def _in_scope(self, path: str) -> bool:
        scope = self._pin.scope
        return not scope or any(s == "" or path == s or path.startswith(s + "/") for s in scope)

    def _check_scope(self) -> None:
        """Every given path must name a file or a directory of the snapshot."""
        entries = self.entries()
        for s in self._pin.scope:
            if s and s not in entries and not self.is_dir(s):
                raise SnapshotError(f"path {s!r} is not in the snapshot of {self.source}")

    def _check_commit(self) -> None:
        proc = _git(self.root, ["cat-file", "-e", self.commit + "^{commit}"], self._env, check=False)
        if proc.returncode != 0:
            raise SnapshotError(f"pinned commit {self.commit} is no longer readable in {self.root}")
