"""provenance.git_commit: a commit hash, '+dirty' for modified tracked files, 'unknown' where there is no commit."""

import re
import subprocess

from srdensenet import provenance


def git(folder, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                   capture_output=True)


def test_a_checkout_without_commits_or_git_is_unknown_not_head(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path counts
    assert provenance.git_commit() == "unknown"
    git(tmp_path, "init", "-q")
    assert provenance.git_commit() == "unknown"  # `git rev-parse HEAD` prints "HEAD" here (and fails)


def test_a_commit_and_a_dirty_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "commit", "-q", "-m", "one")
    assert re.fullmatch(r"[0-9a-f]{40}", provenance.git_commit())
    (tmp_path / "a.txt").write_text("two")
    assert provenance.git_commit().endswith("+dirty")
