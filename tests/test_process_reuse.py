"""What a run remembers instead of asking again (issue 15, whole processes): the answers of
git about immutable objects (:class:`reconciler.gitrepo.GitRepo`), the target's fleet.yaml
read from the tree already written from its objects (:func:`reconciler.trust.decide`'s
``target_tree``), and the iptables-save commands run at once
(:func:`reconciler.kinds.ipset.firewall._save_all`). Real git repositories and processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler import trust
from reconciler.errors import CommandError, CommandNotFound, VerifyError
from reconciler.gitrepo import GitRepo
from reconciler.kinds.ipset import firewall
from tests.test_gitsource import git


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    return path


def test_a_moving_branch_is_asked_again_a_full_hash_is_not(repo: Path) -> None:
    first = commit(repo, {"fleet.yaml": "{}\n"}, "one")
    r = GitRepo.open(repo)
    assert r.head == first
    assert r.commit_hash("main") == first
    assert r.commit_hash(first) == first
    second = commit(repo, {"fleet.yaml": "ipsets: {}\n"}, "two")
    assert r.commit_hash("main") == second  # a branch moves: never remembered
    assert r.commit_hash(first) == first
    assert r.commit_hash("0" * 40) is None
    assert r.commit_hash("-h") is None


def test_tree_entries_of_a_commit_are_its_own(repo: Path) -> None:
    first = commit(repo, {"fleet.yaml": "{}\n"}, "one")
    r = GitRepo.open(repo)
    entry = r.entry(first, "fleet.yaml")
    assert entry is not None and entry.type == "blob" and entry.size == 3
    second = commit(repo, {"fleet.yaml": "ipsets: {}\n"}, "two")
    again = r.entry(first, "fleet.yaml")
    assert again == entry
    later = r.entry(second, "fleet.yaml")
    assert later is not None and later.sha != entry.sha
    assert r.entry(first, "missing.yaml") is None
    assert r.blob(entry.sha) == b"{}\n"


def test_the_written_tree_is_what_trust_reads(repo: Path, tmp_path: Path) -> None:
    """The target's fleet.yaml comes from ``target_tree`` when given: a verify: block there
    asks for verification (refused: it lists no signers), as the same block in git does."""
    target = commit(repo, {"fleet.yaml": "verify: {}\n"}, "asks for verification")
    r = GitRepo.open(repo)
    pins = tmp_path / "no-pins"
    with pytest.raises(VerifyError, match=r"lists no verify\.signers") as from_git:
        trust.decide(r, "", None, target, pins_path=pins)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "fleet.yaml").write_text("verify: {}\n")
    with pytest.raises(VerifyError, match=r"lists no verify\.signers") as from_tree:
        trust.decide(r, "", None, target, pins_path=pins, target_tree=tree)
    assert from_tree.value.message == from_git.value.message
    # Without a verify: block in the tree, nothing is asked (the tree is what is read).
    (tree / "fleet.yaml").write_text("{}\n")
    assert not trust.decide(r, "", None, target, pins_path=pins, target_tree=tree).verification


def test_a_link_in_the_written_tree_is_not_followed(repo: Path, tmp_path: Path) -> None:
    target = commit(repo, {"fleet.yaml": "{}\n"}, "one")
    r = GitRepo.open(repo)
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("verify: {}\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "fleet.yaml").symlink_to(elsewhere)
    decision = trust.decide(r, "", None, target, pins_path=tmp_path / "no-pins", target_tree=tree)
    assert not decision.verification


def test_saves_run_at_once_keep_their_order_and_first_failure() -> None:
    assert firewall._save_all(["pwd", "true"]) == [os.getcwd() + "\n", ""]
    with pytest.raises(CommandError, match=r"^false failed") as failed:
        firewall._save_all(["true", "false", "reconciler-no-such-program"])
    assert not isinstance(failed.value, CommandNotFound)
    with pytest.raises(CommandNotFound):
        firewall._save_all(["reconciler-no-such-program", "false"])
    assert firewall._save_all([]) == []
