"""Repository roots, the bind rule: the pure parts of ``api.security`` (no server needed).

The HTTP side of the guard (token, Origin, Host, body size) is tested against the real server
in ``test_api_rest.py``.
"""

from __future__ import annotations

import os

import pytest

from actors.config import Settings
from api.security import BindRefused, RepoRefused, check_bind, is_loopback, repo_roots, resolve_repo


@pytest.fixture
def tree(tmp_path):
    """roots/ holds two repos; outside/ is next to it; links inside roots point both ways."""
    root = tmp_path / "roots"
    (root / "alpha" / "src").mkdir(parents=True)
    (root / "beta").mkdir()
    (root / "file.txt").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "escape")  # a link inside the root to a directory outside it
    os.symlink(root / "alpha", root / "alias")  # a link that stays inside
    os.symlink(root / "loop", root / "loop")
    return root, outside


def test_a_repository_under_a_root_resolves_to_its_real_path(tree):
    root, _ = tree
    roots = (root.resolve(),)
    assert resolve_repo(str(root / "alpha"), roots) == str((root / "alpha").resolve())
    assert resolve_repo("beta", roots) == str((root / "beta").resolve())  # relative to the first root
    assert resolve_repo(str(root / "alias"), roots) == str((root / "alpha").resolve())
    assert resolve_repo(str(root), roots) == str(root.resolve())
    # A relative name is looked up under each root in turn.
    both = ((root / "alpha").resolve(), root.resolve())
    assert resolve_repo("src", both) == str((root / "alpha" / "src").resolve())
    assert resolve_repo("beta", both) == str((root / "beta").resolve())


@pytest.mark.parametrize(
    "path, code",
    [
        ("../outside", "repo_outside_roots"),
        ("alpha/../../outside", "repo_outside_roots"),
        ("/etc", "repo_outside_roots"),
        ("escape", "repo_outside_roots"),  # a symlink that leaves the roots
        ("escape/", "repo_outside_roots"),
        ("missing", "repo_not_found"),
        ("file.txt", "repo_not_directory"),
        ("loop", "repo_not_found"),
        ("", "repo_required"),
        ("   ", "repo_required"),
        ("alpha\x00", "repo_invalid"),
        ("x" * 5000, "repo_not_found"),  # longer than any file name (found by fuzzing)
    ],
)
def test_paths_outside_the_roots_or_unusable_are_refused_with_a_code(tree, path, code):
    root, _ = tree
    with pytest.raises(RepoRefused) as err:
        resolve_repo(path, (root.resolve(),))
    assert err.value.code == code
    assert str(err.value)  # a message for a person


def test_an_absolute_path_that_escapes_through_dotdot_is_refused_even_if_it_exists(tree):
    root, outside = tree
    sneaky = f"{root}/alpha/../../{outside.name}"
    assert os.path.isdir(sneaky)
    with pytest.raises(RepoRefused) as err:
        resolve_repo(sneaky, (root.resolve(),))
    assert err.value.code == "repo_outside_roots"


def test_a_root_given_through_a_link_takes_paths_written_through_it(tmp_path):
    # /tmp on macOS is /private/tmp: a root is kept resolved, and a path written through the
    # link (or any other name for the root) is inside it; one that leaves it is still not.
    real = tmp_path / "real"
    (real / "demo").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(real, tmp_path / "link")
    roots = repo_roots(Settings(repo_roots=(str(tmp_path / "link"),)))
    assert roots == (real.resolve(),)
    assert resolve_repo(str(tmp_path / "link" / "demo"), roots) == str((real / "demo").resolve())
    assert resolve_repo(str(tmp_path / "link"), roots) == str(real.resolve())
    with pytest.raises(RepoRefused) as err:
        resolve_repo(str(tmp_path / "link" / ".." / "outside"), roots)
    assert err.value.code == "repo_outside_roots"


def test_a_sibling_directory_sharing_the_root_prefix_is_outside(tmp_path):
    (tmp_path / "repos").mkdir()
    (tmp_path / "repos-evil").mkdir()
    with pytest.raises(RepoRefused) as err:
        resolve_repo(str(tmp_path / "repos-evil"), ((tmp_path / "repos").resolve(),))
    assert err.value.code == "repo_outside_roots"


def test_roots_come_from_settings_else_the_working_directory_then_home(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert repo_roots(Settings(repo_roots=(str(a), str(b)))) == (a.resolve(), b.resolve())
    assert repo_roots(Settings(), cwd=str(b), home=str(a)) == (b.resolve(), a.resolve())
    assert repo_roots(Settings(), cwd=str(a), home=str(a)) == (a.resolve(),)  # no duplicates
    env = Settings.load({"ORCH_REPO_ROOTS": f"{a}{os.pathsep}{b}"})
    assert repo_roots(env) == (a.resolve(), b.resolve())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_binds_need_no_token(host):
    assert is_loopback(host)
    check_bind(host, "")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_binding_beyond_loopback_without_a_token_is_refused(host):
    assert not is_loopback(host)
    with pytest.raises(BindRefused, match="ORCH_TOKEN"):
        check_bind(host, "")
    check_bind(host, "s3cret")  # with a token it may
