"""The pinned snapshot: what is pinned, what is considered, and that the repository stays untouched."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
from hostile import (
    ESCAPES,
    PASSWD_MARK,
    SECRET,
    fingerprint,
    git,
    make_hostile_repo,
    make_repo,
    write,
)

from actors.snapshot import Entry, GitSnapshot, SnapshotError, check_outside, pin
from conductor.snapshot import Snapshot


@pytest.fixture
def repo(tmp_path):
    return make_repo(
        tmp_path / "repo",
        {
            "README.md": "# demo\n",
            "src/app.py": "def main():\n    return 1\n",
            "src/lib.py": "X = 1\n",
            "docs/intro.md": "intro\n",
            ".gitignore": "*.log\nbuild/\n",
        },
    )


def head(repo) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


# --- a clean repository ---------------------------------------------------------------------


def test_clean_repository_pins_head_and_considers_every_file(repo, tmp_path):
    snap = pin(repo, work_dir=tmp_path / "run")
    assert isinstance(snap, Snapshot)
    assert snap.commit == head(repo)
    assert snap.mode == "tree" and not snap.dirty
    assert snap.paths() == (".gitignore", "README.md", "docs/intro.md", "src/app.py", "src/lib.py")
    assert snap.changed() == snap.paths()
    assert snap.read("src/app.py") == b"def main():\n    return 1\n"
    assert snap.read("missing.py") is None
    assert snap.diff() == "" and snap.messages() == ()
    assert not (tmp_path / "run" / "snapshot" / "objects").exists()  # nothing private needed


def test_missing_path_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(SnapshotError, match="does not exist"):
        pin(tmp_path / "nope", work_dir=tmp_path / "run")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SnapshotError, match="is not a directory"):
        pin(tmp_path / "file.txt", work_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- uncommitted changes --------------------------------------------------------------------


def dirty(repo):
    """Staged, then further modified; modified; deleted; untracked; ignored."""
    write(repo, {"src/app.py": "def main():\n    return 2\n"})
    git(repo, "add", "src/app.py")
    write(repo, {"src/app.py": "def main():\n    return 3\n", "src/lib.py": "X = 2\n"})
    (repo / "docs/intro.md").unlink()
    write(repo, {"src/new.py": "NEW = True\n", "debug.log": "ignored\n", "build/out.txt": "ignored\n"})


def test_uncommitted_changes_are_pinned_without_touching_the_repository(repo, tmp_path):
    dirty(repo)
    status = git(repo, "status", "--porcelain")
    before = fingerprint(repo)

    snap = pin(repo, work_dir=tmp_path / "run")

    assert fingerprint(repo) == before  # files, index, refs, config, objects: all untouched
    assert git(repo, "status", "--porcelain") == status
    assert snap.mode == "uncommitted" and snap.dirty
    assert snap.commit != head(repo)
    assert snap.head == head(repo) == snap.base
    assert snap.read("src/app.py") == b"def main():\n    return 3\n"  # the work tree, not the index
    assert snap.read("src/lib.py") == b"X = 2\n"
    assert snap.read("src/new.py") == b"NEW = True\n"
    assert snap.read("docs/intro.md") is None
    assert snap.read("debug.log") is None and snap.read("build/out.txt") is None
    assert snap.changed() == ("src/app.py", "src/lib.py", "src/new.py")  # deletions only in the diff
    diff = snap.diff()
    assert "-    return 1\n+    return 3\n" in diff
    assert "deleted file mode" in diff and "docs/intro.md" in diff
    # The pinned commit lives only in the run's data, never in the user's object database.
    proc = os.system(f"git -C {repo} cat-file -e {snap.commit} 2>/dev/null")
    assert proc != 0
    assert (tmp_path / "run" / "snapshot" / "objects").is_dir()


def test_pinning_is_real_later_edits_are_not_seen(repo, tmp_path):
    dirty(repo)
    snap = pin(repo, work_dir=tmp_path / "run")
    write(repo, {"src/app.py": "changed after the pin\n", "src/later.py": "later\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "later")
    fresh = GitSnapshot(snap._pin)  # no cache: read from git again
    assert fresh.read("src/app.py") == b"def main():\n    return 3\n"
    assert fresh.read("src/later.py") is None
    reopened = GitSnapshot.open(repo, snap.commit, work_dir=tmp_path / "run")
    assert reopened.read("src/app.py") == b"def main():\n    return 3\n"
    assert reopened.mode == "uncommitted" and reopened.changed() == snap.changed()


def test_same_dirty_files_pin_to_the_same_commit(repo, tmp_path):
    dirty(repo)
    one = pin(repo, work_dir=tmp_path / "a")
    two = pin(repo, work_dir=tmp_path / "b")
    assert one.commit == two.commit


def test_reopen_without_the_runs_data_cannot_find_uncommitted_pin(repo, tmp_path):
    dirty(repo)
    snap = pin(repo, work_dir=tmp_path / "run")
    with pytest.raises(SnapshotError, match="is not in"):
        GitSnapshot.open(repo, snap.commit)


def test_untracked_files_in_a_repository_without_commits(tmp_path):
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q")
    write(repo, {"a.py": "A = 1\n"})
    before = fingerprint(repo)
    snap = pin(repo, work_dir=tmp_path / "run")
    assert fingerprint(repo) == before
    assert snap.mode == "uncommitted" and snap.head == ""
    assert snap.read("a.py") == b"A = 1\n"
    assert snap.changed() == ("a.py",)
    assert "+A = 1" in snap.diff()


def test_empty_repository_is_a_clear_error(tmp_path):
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    with pytest.raises(SnapshotError, match="no commits and no files"):
        pin(repo, work_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- a branch against its base --------------------------------------------------------------


@pytest.fixture
def branched(repo):
    git(repo, "checkout", "-q", "-b", "feature")
    write(repo, {"src/app.py": "def main():\n    return 42\n"})
    git(repo, "commit", "-q", "-am", "Make main return 42")
    write(repo, {"src/feature.py": "F = 1\n"})
    git(repo, "add", "src/feature.py")
    git(repo, "commit", "-q", "-m", "Add the feature module\n\nWith a body.")
    git(repo, "checkout", "-q", "main")
    write(repo, {"README.md": "# demo, moved on\n"})  # main moves on after the branch point
    git(repo, "commit", "-q", "-am", "Main moves on")
    git(repo, "checkout", "-q", "feature")
    return repo


def test_branch_against_base_considers_the_branch_diff(branched, tmp_path):
    before = fingerprint(branched)
    snap = pin(branched, base="main", work_dir=tmp_path / "run")
    assert fingerprint(branched) == before
    assert snap.mode == "branch" and snap.commit == head(branched)
    assert snap.changed() == ("src/app.py", "src/feature.py")  # README changed only on main
    assert "+    return 42" in snap.diff() and "README" not in snap.diff()
    assert snap.messages() == ("Add the feature module\n\nWith a body.", "Make main return 42")
    assert snap.read("README.md") == b"# demo\n"


def test_branch_with_uncommitted_changes_includes_them(branched, tmp_path):
    write(branched, {"src/extra.py": "E = 1\n"})
    snap = pin(branched, base="main", work_dir=tmp_path / "run")
    assert snap.mode == "branch" and snap.dirty
    assert snap.changed() == ("src/app.py", "src/extra.py", "src/feature.py")
    assert len(snap.messages()) == 2  # the pin's own commit is not a message of the branch


@pytest.mark.parametrize("root", [".", "./", "./."])
def test_the_root_given_as_a_path_scopes_the_whole_change(repo, tmp_path, root):
    dirty(repo)
    whole = pin(repo, work_dir=tmp_path / "whole")
    snap = pin(repo, paths=(root,), work_dir=tmp_path / "run")
    assert snap.changed() == whole.changed() == ("src/app.py", "src/lib.py", "src/new.py")
    assert snap.diff() == whole.diff() and "+    return 3\n" in snap.diff()


def test_unknown_base_ref_is_a_clear_error(repo, tmp_path):
    with pytest.raises(SnapshotError) as exc:
        pin(repo, base="xyz", work_dir=tmp_path / "run")
    assert str(exc.value) == f"unknown ref 'xyz' in {repo}"
    with pytest.raises(SnapshotError, match="bad base ref"):
        pin(repo, base="--output=/tmp/owned", work_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_diff_is_bounded(branched, tmp_path):
    write(branched, {"big.txt": "".join(f"line {i}\n" for i in range(5000))})
    snap = pin(branched, base="main", work_dir=tmp_path / "run")
    text = snap.diff(limit=2000)
    assert len(text.encode()) < 2100
    assert text.endswith("[diff truncated at 2,000 bytes]\n")


# --- given paths, subdirectories ------------------------------------------------------------


def test_paths_narrow_what_is_considered(repo, tmp_path):
    snap = pin(repo, paths=["src", "README.md"], work_dir=tmp_path / "run")
    assert snap.mode == "paths"
    assert snap.changed() == ("README.md", "src/app.py", "src/lib.py")
    assert snap.paths() == pin(repo, work_dir=tmp_path / "all").paths()  # still reads everything


def test_paths_that_do_not_exist_or_escape_are_errors(repo, tmp_path):
    with pytest.raises(SnapshotError, match="'nope.py' is not in the snapshot"):
        pin(repo, paths=["nope.py"], work_dir=tmp_path / "run")
    with pytest.raises(SnapshotError, match="bad path"):
        pin(repo, paths=["../outside"], work_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_paths_narrow_uncommitted_changes(repo, tmp_path):
    dirty(repo)
    snap = pin(repo, paths=["src/new.py"], work_dir=tmp_path / "run")
    assert snap.mode == "uncommitted"
    assert snap.changed() == ("src/new.py",)
    assert "src/new.py" in snap.diff() and "src/lib.py" not in snap.diff()


def test_subdirectory_pins_the_repository_scoped_to_it(repo, tmp_path):
    snap = pin(repo / "src", work_dir=tmp_path / "run")
    assert snap.commit == head(repo) and snap.mode == "paths"
    assert snap.changed() == ("src/app.py", "src/lib.py")
    assert snap.read("README.md") == b"# demo\n"


def test_subdirectory_takes_only_its_own_uncommitted_changes(repo, tmp_path):
    write(repo, {"src/lib.py": "X = 2\n", "README.md": "# edited outside the subdirectory\n"})
    snap = pin(repo / "src", work_dir=tmp_path / "run")
    assert snap.mode == "uncommitted"
    assert snap.read("src/lib.py") == b"X = 2\n"
    assert snap.read("README.md") == b"# demo\n"  # outside the named directory: as committed
    assert snap.changed() == ("src/lib.py",)


def test_uncommitted_changes_over_the_copy_limit_are_an_error(repo, tmp_path):
    write(repo, {"src/big.bin": b"x" * 5000, "src/lib.py": "X = 2\n"})
    before = fingerprint(repo)
    with pytest.raises(SnapshotError, match=r"hold 5,006 bytes, more than the copy limit \(4,000 bytes\)"):
        pin(repo, work_dir=tmp_path / "run", copy_limit_bytes=4000)
    assert fingerprint(repo) == before and not (tmp_path / "run").exists()
    assert pin(repo, work_dir=tmp_path / "run", copy_limit_bytes=6000).read("src/big.bin") == b"x" * 5000


def test_data_directory_inside_the_repository_is_refused(repo, tmp_path):
    before = fingerprint(repo)
    with pytest.raises(SnapshotError, match="inside the repository"):
        pin(repo, work_dir=repo / ".orchestrator")
    # From a subdirectory too: the whole work tree is what a run reads.
    with pytest.raises(SnapshotError, match=f"inside the repository {repo}"):
        pin(repo / "src", work_dir=repo / "src" / ".orchestrator")
    assert fingerprint(repo) == before
    # A plain directory is copied, so a data directory in it would be written into it.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.py").write_text("A = 1\n")
    with pytest.raises(SnapshotError, match=f"inside the repository {plain}"):
        pin(plain, work_dir=plain / ".orchestrator" / "runs" / "r1")
    assert sorted(p.name for p in plain.iterdir()) == ["a.py"]


def test_a_linked_worktrees_data_directory_may_not_be_in_the_repository_it_shares(repo, tmp_path):
    # Only the linked work tree's own root was checked: a data directory in the main work
    # tree, or in the .git directory both share, was accepted and written into.
    git(repo, "worktree", "add", "-q", str(tmp_path / "linked"), "-b", "feature")
    write(tmp_path / "linked", {"src/lib.py": "X = 2\n"})
    before = fingerprint(repo)
    for inside in (repo / ".git" / "orchestrator", repo / ".orchestrator"):
        with pytest.raises(SnapshotError, match="part of the repository"):
            check_outside(tmp_path / "linked", inside, "the data directory")
        with pytest.raises(SnapshotError, match="part of the repository"):
            pin(tmp_path / "linked", work_dir=inside)
    assert fingerprint(repo) == before
    snap = pin(tmp_path / "linked", work_dir=tmp_path / "run")
    assert snap.mode == "uncommitted" and snap.read("src/lib.py") == b"X = 2\n"


def test_bare_repository_pins_head(repo, tmp_path):
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
    snap = pin(bare, work_dir=tmp_path / "run")
    assert snap.commit == head(repo) and snap.read("src/lib.py") == b"X = 1\n"


# --- a plain directory ----------------------------------------------------------------------


@pytest.fixture
def plain(tmp_path):
    root = tmp_path / "plain"
    write(root, {"main.py": "print('hi')\n", "pkg/mod.py": "M = 1\n", ".gitignore": "*.py\n"})
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (tmp_path / "secret.txt").write_text(SECRET)
    os.symlink(tmp_path / "secret.txt", root / "out-link")
    os.symlink("main.py", root / "in-link")
    os.mkfifo(root / "pipe")
    return root


def test_plain_directory_is_copied_and_committed(plain, tmp_path):
    before = fingerprint(plain)
    snap = pin(plain, work_dir=tmp_path / "run")
    assert fingerprint(plain) == before
    assert snap.mode == "tree" and snap.source == str(plain)
    # .gitignore does not hide anything: nothing is skipped silently.
    assert snap.paths() == (".gitignore", "in-link", "main.py", "pkg/mod.py", "run.sh")
    assert snap.read("in-link") == b"print('hi')\n"
    assert snap.read("out-link") is None
    assert snap.skipped == ("pipe",)
    assert snap.entries()["run.sh"].mode == "100755"
    assert SECRET not in str(snap.entries()) and not any(
        SECRET.encode() in (snap.read(p) or b"") for p in snap.entries()
    )
    # The copy's link is still a link: the secret was never copied.
    copy_root = tmp_path / "run" / "snapshot" / "tree"
    assert (copy_root / "out-link").is_symlink()
    again = pin(plain, work_dir=tmp_path / "run2")
    assert again.commit == snap.commit  # fixed author and date: the id depends on the files only
    reopened = GitSnapshot.open(plain, snap.commit, work_dir=tmp_path / "run")
    assert reopened.read("pkg/mod.py") == b"M = 1\n"


def test_plain_directory_over_the_copy_limit_is_an_error(plain, tmp_path):
    with pytest.raises(SnapshotError, match=r"more than the copy limit \(.* > 10 bytes\)"):
        pin(plain, work_dir=tmp_path / "run", copy_limit_bytes=10)
    assert not (tmp_path / "run").exists()


def test_plain_directory_with_a_base_ref_is_an_error(plain, tmp_path):
    with pytest.raises(SnapshotError, match="needs a git repository"):
        pin(plain, base="main", work_dir=tmp_path / "run")


# --- re-opening -----------------------------------------------------------------------------


def test_open_restores_the_pinned_view(branched, tmp_path):
    snap = pin(branched, base="main", paths=["src"], work_dir=tmp_path / "run")
    again = GitSnapshot.open(branched, snap.commit, work_dir=tmp_path / "run")
    assert (again.mode, again.changed(), again.diff(), again.messages()) == (
        snap.mode, snap.changed(), snap.diff(), snap.messages()
    )
    plain_open = GitSnapshot.open(branched, snap.commit, base="main")
    assert plain_open.changed() == snap.changed()
    with pytest.raises(SnapshotError, match="is not in"):
        GitSnapshot.open(branched, "0" * 40)
    copy = pickle.loads(pickle.dumps(snap))
    assert copy.read("src/feature.py") == b"F = 1\n"


# --- a hostile repository -------------------------------------------------------------------


def test_hostile_repository_runs_nothing_and_leaks_nothing(tmp_path):
    repo = make_hostile_repo(tmp_path)
    write(repo, {"src/app.py": "edited\n", "fresh.txt": "untracked\n"})
    before = fingerprint(repo)
    snap = pin(repo, work_dir=tmp_path / "run")
    assert fingerprint(repo) == before
    assert os.listdir(tmp_path / "canary") == []  # no hook, fsmonitor or filter ran
    assert snap.mode == "uncommitted"
    assert snap.read("src/app.py") == b"edited\n"  # raw bytes: the clean filter did not run
    for path in ESCAPES + ("loop-a", "vendor/lib", "parent-dir"):
        assert snap.read(path) is None, path
    assert snap.read("docs/readme-link.md") == snap.read("README.md")
    assert snap.read(".../hidden.txt") == b"three dots are just a name\n"
    assert snap.read("new\nline.txt") == b"a name with a newline\n"
    assert snap.read_head("data/huge.txt", 10) == (b"line 00000", 3_060_000)
    everything = b"".join(snap.read(p) or b"" for p in snap.paths())
    assert SECRET.encode() not in everything and PASSWD_MARK.encode() not in everything
    assert "vendor/lib" not in snap.paths() and snap.entries()["vendor/lib"].kind == "submodule"


def _armed_script(tmp_path, name: str, then: str = "cat"):
    """A program that leaves a mark if git ever runs it (then passes its input on)."""
    mark = tmp_path / f"{name}-ran"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\ntouch '{mark}'\n{then}\n")
    script.chmod(0o755)
    return script, mark


def test_a_partial_clone_fetches_nothing_for_a_missing_object(tmp_path):
    # Git fetches a partial clone's missing objects from its promisor remote on demand, and
    # that remote may name any program; reads never reach for the network or run it.
    repo = make_repo(tmp_path / "repo", {"a.txt": "here\n", "b.txt": "its object will be gone\n"})
    oid = git(repo, "rev-parse", "HEAD:b.txt").strip()
    (repo / ".git" / "objects" / oid[:2] / oid[2:]).unlink()
    script, mark = _armed_script(tmp_path, "promisor", then="exit 1")
    for key, value in [("core.repositoryformatversion", "1"), ("extensions.partialClone", "origin"),
                       ("remote.origin.promisor", "true"), ("remote.origin.url", f"ext::{script}"),
                       ("protocol.ext.allow", "always"), ("remote.origin.uploadpack", str(script))]:
        git(repo, "config", key, value)
    before = fingerprint(repo)
    snap = pin(repo, work_dir=tmp_path / "run")
    assert snap.read("a.txt") == b"here\n"
    with pytest.raises(SnapshotError, match=f"object {oid} is missing"):
        snap.read("b.txt")
    assert not mark.exists()
    assert fingerprint(repo) == before  # not even the partial-clone filter git notes on a fetch


def test_a_filter_whose_name_holds_an_equals_sign_is_still_turned_off(tmp_path):
    # `git -c filter.x=y.clean=` would set "filter.x" (git splits at the first '='); the
    # overrides go through GIT_CONFIG_KEY_n/VALUE_n, which keep the name whole.
    repo = make_repo(tmp_path / "repo", {"a.py": "A = 1\n"})
    script, mark = _armed_script(tmp_path, "filter")
    git(repo, "config", "filter.x=y.clean", str(script))
    git(repo, "config", "filter.x=y.required", "true")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "attributes").write_text("* filter=x=y\n")
    write(repo, {"a.py": "A = 2\n"})
    before = fingerprint(repo)
    snap = pin(repo, work_dir=tmp_path / "run")
    assert not mark.exists()
    assert snap.mode == "uncommitted" and snap.read("a.py") == b"A = 2\n"
    assert fingerprint(repo) == before


def _tree_of(repo, entries: list[str]) -> str:
    return git(repo, "mktree", "-z", stdin="".join(entries)).strip()


def test_a_tree_that_lists_too_many_paths_is_refused_not_read(tmp_path):
    # A few KB of trees naming the same subtree twice at every level: 2**21 paths.
    repo = tmp_path / "bomb"
    repo.mkdir()
    git(repo, "init", "-q", "--bare")
    blob = git(repo, "hash-object", "-w", "--stdin", stdin="x\n").strip()
    tree = _tree_of(repo, [f"100644 blob {blob}\tf\0"])
    for _ in range(21):
        tree = _tree_of(repo, [f"040000 tree {tree}\t{name}\0" for name in ("a", "b")])
    commit = git(repo, "commit-tree", tree, "-m", "bomb").strip()
    git(repo, "update-ref", "HEAD", commit)
    with pytest.raises(SnapshotError, match="the pinned tree lists more than .* of paths"):
        pin(repo, work_dir=tmp_path / "run")


def test_huge_blobs_named_as_links_and_files_cost_no_more_than_their_first_bytes(tmp_path):
    # One 256 MiB blob (a few hundred KB on disk) named as a link and as twelve files: a link
    # is not followed past PATH_MAX bytes, and reading a file's head does not drain the rest.
    repo = tmp_path / "big"
    repo.mkdir()
    git(repo, "init", "-q", "--bare")
    size = 256 * 1024 * 1024
    big = git(repo, "hash-object", "-w", "--stdin", stdin=bytes(size)).strip()
    small = git(repo, "hash-object", "-w", "--stdin", stdin="ok\n").strip()
    names = [f"100644 blob {big}\tbig-{i:02d}.bin\0" for i in range(12)]
    tree = _tree_of(repo, [f"100644 blob {small}\tok.txt\0", f"120000 blob {big}\tlink\0", *names])
    commit = git(repo, "commit-tree", tree, "-m", "big").strip()
    git(repo, "update-ref", "HEAD", commit)
    snap = pin(repo, work_dir=tmp_path / "run")
    assert snap.resolve("link") is None and snap.link_target("link") is None
    import time

    t0 = time.monotonic()
    heads = [snap.read_head(f"big-{i:02d}.bin", 16) for i in range(12)]
    assert heads == [(bytes(16), size)] * 12
    assert snap.read("ok.txt") == b"ok\n"  # the reader started again after each cut
    assert time.monotonic() - t0 < 10  # draining 12 x 256 MiB through a pipe takes far longer


def test_a_sparse_index_pins_every_file_outside_the_cone_too(tmp_path):
    # A sparse index holds out/ as one tree entry; without that tree the private `git add`
    # took out/f.txt for deleted, and a review would have reported it so.
    repo = make_repo(tmp_path / "repo", {"in/f.txt": "in\n", "out/f.txt": "out\n", "top.txt": "t\n"})
    git(repo, "sparse-checkout", "set", "--cone", "--sparse-index", "in")
    assert not (repo / "out").exists()
    write(repo, {"in/f.txt": "edited\n"})
    before = fingerprint(repo)
    snap = pin(repo, work_dir=tmp_path / "run")
    assert fingerprint(repo) == before
    assert snap.mode == "uncommitted" and snap.changed() == ("in/f.txt",)
    assert snap.read("out/f.txt") == b"out\n" and snap.read("in/f.txt") == b"edited\n"
    assert "deleted" not in snap.diff()


def test_a_submodules_own_filter_never_runs_and_its_commit_is_still_pinned(tmp_path):
    # For a submodule whose commit has not moved, `git add -A` runs `git status` inside it,
    # and that ran the clean filter the submodule's own config names: any program at all.
    lib = make_repo(tmp_path / "lib", {"a.txt": "hello\n"})
    repo = make_repo(tmp_path / "repo", {"top.txt": "top\n"})
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "sub")
    git(repo, "commit", "-q", "-m", "add the submodule")
    first = git(repo / "sub", "rev-parse", "HEAD").strip()
    script, mark = _armed_script(tmp_path, "submodule-filter")
    git(repo / "sub", "config", "filter.evil.clean", str(script))
    git(repo / "sub", "config", "filter.evil.required", "true")
    (repo / ".git" / "modules" / "sub" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "modules" / "sub" / "info" / "attributes").write_text("* filter=evil\n")
    stamp = os.stat(repo / "sub" / "a.txt").st_mtime_ns + 2_000_000_000
    os.utime(repo / "sub" / "a.txt", ns=(stamp, stamp))  # stat-dirty: status would re-hash it
    write(repo, {"top.txt": "top, edited\n"})
    before = fingerprint(repo)
    snap = pin(repo, work_dir=tmp_path / "run")
    assert not mark.exists()
    assert fingerprint(repo) == before
    assert snap.mode == "uncommitted" and snap.changed() == ("top.txt",)
    assert snap.entries()["sub"] == Entry("160000", first)

    # The submodule moved on: the pin records its new commit (the helper's git turns the
    # filter off for its own commit), and a submodule removed from disk is pinned as removed.
    write(repo / "sub", {"b.txt": "more\n"})
    git(repo / "sub", "add", "b.txt")
    git(repo / "sub", "commit", "-q", "-m", "more")
    moved = git(repo / "sub", "rev-parse", "HEAD").strip()
    snap = pin(repo, work_dir=tmp_path / "run")
    assert not mark.exists()
    assert snap.mode == "uncommitted" and snap.entries()["sub"] == Entry("160000", moved)
    git(repo, "-c", "protocol.file.allow=always", "submodule", "deinit", "-q", "-f", "sub")
    os.rmdir(repo / "sub")
    snap = pin(repo, work_dir=tmp_path / "run")
    assert "sub" not in snap.entries() and snap.read("top.txt") == b"top, edited\n"


def test_reading_a_sparse_index_repository_touches_none_of_its_objects(tmp_path):
    # A diff reads attributes, and with the user's index that meant loading a sparse index,
    # whose cache-tree git rebuilt, freshening the mtimes of objects the user already had.
    repo = make_repo(tmp_path / "repo", {"d/x.txt": "d\n", "e/x.txt": "e\n", "f/x.txt": "f\n"})
    write(repo, {"d/x.txt": "two\n"})
    git(repo, "commit", "-qam", "two")
    git(repo, "sparse-checkout", "set", "--cone", "--sparse-index", "d")
    old = 1_000_000_000_000_000_000
    for dirpath, _, filenames in os.walk(repo / ".git" / "objects"):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), ns=(old, old))
    before = fingerprint(repo)
    snap = pin(repo, base="HEAD~1", work_dir=tmp_path / "run")
    assert snap.changed() == ("d/x.txt",) and "+two" in snap.diff()
    assert fingerprint(repo) == before


def test_files_the_user_ignores_everywhere_are_not_pinned(tmp_path, monkeypatch):
    # The global config is off for the pin's git calls, but its core.excludesFile is what
    # keeps a user's .env and keys out of their own `git status`: the pin honours it too.
    home = tmp_path / "home"
    home.mkdir()
    (home / "ignore-everywhere").write_text(".env\n*.pem\n")
    (home / ".gitconfig").write_text("[core]\n\texcludesFile = ~/ignore-everywhere\n")
    for name in ("XDG_CONFIG_HOME", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    repo = make_repo(tmp_path / "repo", {"app.py": "print(1)\n"})
    write(repo, {".env": "TOKEN=hunter2\n", "id.pem": "-----BEGIN PRIVATE KEY-----\n"})
    snap = pin(repo, work_dir=tmp_path / "run")
    assert not snap.dirty and snap.paths() == ("app.py",)

    # A repository's own core.excludesFile wins over the user's, as it does for git.
    (tmp_path / "repo-ignore").write_text("*.pem\n")
    git(repo, "config", "core.excludesFile", str(tmp_path / "repo-ignore"))
    snap = pin(repo, work_dir=tmp_path / "run")
    assert snap.mode == "uncommitted" and snap.changed() == (".env",)


def test_names_that_differ_only_in_bytes_that_are_not_utf8_stay_two_names(tmp_path):
    # Decoded with a replacement character, both became one name and one file hid the other.
    repo = make_repo(tmp_path / "repo", {"ok.txt": "ok\n"})
    for name, text in ((b"bad\xffname", b"first\n"), (b"bad\xfename", b"second\n")):
        with open(os.path.join(os.fsencode(repo), name), "wb") as fh:
            fh.write(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two odd names")
    snap = pin(repo, work_dir=tmp_path / "run")
    odd = {name: entry.oid for name, entry in snap.entries().items() if name.startswith("bad")}
    assert sorted(odd) == ["bad\\xfename", "bad\\xffname"] and len(set(odd.values())) == 2
    assert snap.paths() == ("ok.txt",)  # listed, never read: a path with a backslash is refused


def test_a_directory_that_can_be_listed_but_not_entered_is_a_clear_error(tmp_path):
    # Its entries could be listed and not stat'ed: that raised a bare PermissionError.
    plain = tmp_path / "plain"
    write(plain, {"ok.txt": "ok\n", "inner/f.txt": "x\n"})
    (plain / "inner").chmod(0o644)
    code = (
        "import sys\nfrom actors.snapshot import SnapshotError, pin\n"
        "try:\n    pin(sys.argv[1], work_dir=sys.argv[2])\n"
        "except SnapshotError as exc:\n    print('SnapshotError:', exc)\n"
    )
    command = [sys.executable, "-c", code, str(plain), str(tmp_path / "run")]
    if os.geteuid() == 0:  # root reads anything: run without the capabilities that allow it
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *command]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        (plain / "inner").chmod(0o755)
    assert proc.stdout.startswith(f"SnapshotError: cannot read {plain / 'inner' / 'f.txt'}"), proc.stderr
    assert not (tmp_path / "run").exists()
