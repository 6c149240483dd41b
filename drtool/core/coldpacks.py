"""Warming the packs that snapshots need, when the store keeps packs in an archive class.

Shared by restore and copy (both read whole snapshots).  Trees come first:
no snapshot can be walked before the packs holding its tree blobs are
readable, and the index (hot) says which packs those are.  Then the
snapshots are walked and the packs of the files selected are warmed.  On a
store that can hold cold objects but has no archive class configured, the
tree packs are the sample: when none of them is cold (no lifecycle rule
moved them) the data packs are not asked, so an ordinary S3 restore pays a
few HEADs, not one per pack.
"""
from __future__ import annotations

from typing import Callable, Iterable

from drtool.backends import capabilities
from drtool.repository import warming
from drtool.repository.repo import Repository
from drtool.snapshot.model import FILE
from drtool.snapshot.store import walk_tree


def warm_trees(repo: Repository, *, wait: bool) -> warming.WarmPlan | None:
    """Step one: the tree packs (None when the store never holds cold objects)."""
    if capabilities.cold_storage(repo.backend) is None:
        return None
    trees = (warming.warm if wait else warming.plan)(repo, warming.tree_packs(repo))
    assert trees is not None
    trees.scope = "trees"
    return trees


def data_needs_checking(repo: Repository, trees: warming.WarmPlan) -> bool:
    """Whether the data packs may be cold too (archive class configured, or a tree pack was)."""
    store = capabilities.cold_storage(repo.backend)
    return store is not None and (bool(store.warm_profile()[0]) or trees.needed > 0)


def warm_data(repo: Repository, tree_ids: Iterable[str], select: Callable[[str], bool] | None, *,
              wait: bool) -> warming.WarmPlan | None:
    """Step two (tree packs readable): the packs of the files ``select`` keeps in these trees."""
    packs: set[bytes] = set()
    for tree_id in tree_ids:
        for path, node in walk_tree(repo, tree_id):
            if node.type == FILE and (select is None or select(path)):
                packs.update(repo.locate(bytes.fromhex(c)).pack_id for c in node.content)
    return (warming.warm if wait else warming.plan)(repo, packs)


def warm_snapshots(repo: Repository, tree_ids: list[str]) -> warming.WarmPlan | None:
    """Both steps for whole snapshots, waiting until everything they need is readable."""
    trees = warm_trees(repo, wait=True)
    if trees is None or not data_needs_checking(repo, trees):
        return trees
    return warm_data(repo, tree_ids, None, wait=True)
