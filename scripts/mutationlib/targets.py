"""What ``scripts/mutation`` mutates, and which test files run against each module.

Each target is one source file (optionally only some of its functions) and the test files
that exercise it, fastest first: a mutant runs only those, with ``-x``, so most mutants
die in the first seconds. Keep the map in step with the tests: a test file that covers a module
but is missing here makes its mutants survive falsely (and the report says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    name: str  # what the report calls it
    path: str  # relative to the repository
    tests: tuple[str, ...]
    functions: tuple[str, ...] = field(default=())  # empty: the whole file


TARGETS = (
    Target(
        "apply",
        "src/fsnap/archive/apply.py",
        (
            "tests/test_apply_mutants.py",
            "tests/test_resolve_mutants.py",
            "tests/test_archive.py",
            "tests/test_breakout.py",
            "tests/test_layer_semantics.py",
        ),
    ),
    Target(
        "unpack.blob",
        "src/fsnap/unpack/blob.py",
        (
            "tests/test_blob_mutants.py",
            "tests/test_unpack.py",
            "tests/test_pull_sink.py",
            "tests/test_commit.py",
        ),
    ),
    Target(
        "resolve",
        "src/fsnap/archive/resolve.py",
        ("tests/test_resolve_mutants.py", "tests/test_breakout.py", "tests/test_archive.py"),
    ),
    Target(
        "tree",
        "src/fsnap/mount/tree.py",
        (
            "tests/test_tree_mutants.py",
            "tests/test_mount_tree.py",
            "tests/test_mount_listing.py",
            "tests/test_layer_semantics.py",
            "tests/test_inspect_provenance.py",
        ),
    ),
    Target(
        "upper",
        "src/fsnap/mount/upper.py",
        (
            "tests/test_upper_mutants.py",
            "tests/test_union.py",
            "tests/test_rw_xattr_copyup.py",
            "tests/test_rw_posix.py",
            "tests/test_rw_commit.py",
            "tests/test_rw_unprivileged.py",
        ),
    ),
    Target(
        "union",
        "src/fsnap/mount/union.py",
        (
            "tests/test_union_mutants.py",
            "tests/test_union.py",
            "tests/test_rw_posix.py",
            "tests/test_rw_xattr_copyup.py",
            "tests/test_rw_commit.py",
            "tests/test_rw_unprivileged.py",
            # the writable mounts of a lazy layer (union fetches before copy-up and reads)
            "tests/test_lazy_mount.py::test_writable_mount_copies_up_an_unfetched_file",
            "tests/test_lazy_mount.py::test_writable_mount_reads_an_unfetched_lower_file",
        ),
    ),
    Target(
        "rwfs",
        "src/fsnap/mount/rwfs.py",
        (
            "tests/test_rw_cache.py",
            "tests/test_rw_posix.py",
            "tests/test_rw_xattr_copyup.py",
            "tests/test_rw_commit.py",
            "tests/test_rw_unprivileged.py",
            "tests/test_mount_readdir.py",
        ),
    ),
    Target(
        "fs.readdir",
        "src/fsnap/mount/fs.py",
        ("tests/test_mount_readdir.py", "tests/test_mount_listing.py"),
        functions=("readdir", "opendir"),
    ),
    Target(
        "writer",
        "src/fsnap/content/writer.py",
        ("tests/test_content_store.py", "tests/test_pull_faults.py"),
    ),
    Target(
        "store", "src/fsnap/content/store.py", ("tests/test_content_store.py", "tests/test_gc.py")
    ),
    Target(
        "ingest",
        "src/fsnap/content/ingest.py",
        (
            "tests/test_ingest_mutants.py",
            "tests/test_content_store.py",
            "tests/test_gc_leases.py",
        ),
    ),
    Target(
        "auth",
        "src/fsnap/remotes/auth.py",
        ("tests/test_remotes_auth.py", "tests/test_remotes.py", "tests/test_pull_faults.py"),
    ),
    Target(
        "retry",
        "src/fsnap/remotes/retry.py",
        ("tests/test_retry.py", "tests/test_remotes.py", "tests/test_pull_faults.py"),
    ),
    Target(
        "gc.mark",
        "src/fsnap/gc/mark.py",
        ("tests/test_gc_mark.py", "tests/test_gc.py", "tests/test_gc_leases.py"),
    ),
)

# Operators kept (cosmic-ray's names). Replacing every binary operator by every other gives
# eleven mutants per ``+``, nearly all killed by any test or equivalent: per site we keep
# the one or two replacements a real slip would make (+/-, &/|, <</>>, < vs <=, == vs !=,
# is vs is not, in vs not in), and every other operator whole.
KEPT_BINARY = {
    "Add_Sub",
    "Sub_Add",
    "Mul_Add",
    "FloorDiv_Mul",
    "Mod_FloorDiv",
    "BitAnd_BitOr",
    "BitOr_BitAnd",
    "BitXor_BitOr",
    "LShift_RShift",
    "RShift_LShift",
    "Pow_Mul",
}
KEPT_COMPARISON = {
    "Eq_NotEq",
    "NotEq_Eq",
    "Lt_LtE",
    "LtE_Lt",
    "Gt_GtE",
    "GtE_Gt",
    "Is_IsNot",
    "IsNot_Is",
    "In_NotIn",
    "NotIn_In",
    "Lt_Gt",
    "Gt_Lt",
}


def kept(operator: str) -> bool:
    """Is a mutant of this cosmic-ray operator worth a test run?"""
    kind, _, pair = operator.removeprefix("core/").partition("_")
    if kind == "ReplaceBinaryOperator":
        return pair in KEPT_BINARY
    if kind == "ReplaceComparisonOperator":
        return pair in KEPT_COMPARISON
    return kind not in ("VariableInserter", "VariableReplacer")
