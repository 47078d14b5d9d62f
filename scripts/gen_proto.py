#!/usr/bin/env python3
"""Regenerate the Python gRPC/protobuf modules from proto/ (or check they are up to date).

    python scripts/gen_proto.py           # write saguaro/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py
    python scripts/gen_proto.py --check   # exit 1 naming stale/missing/orphaned files

Every ``proto/<pkg path>/<name>.proto`` becomes ``<pkg path>/<name>_pb2.py`` (+ ``.pyi`` and
``_pb2_grpc.py``) relative to the repository root, with ``proto/`` as the only include path,
so ``proto/saguaro/v1/x.proto`` lands in the ``saguaro.v1`` package and generated imports read
``from saguaro.v1 import x_pb2``. The generated files are committed, so installing the package
needs neither grpcio-tools nor protoc. Output depends on the grpcio-tools version (it is
recorded in the files): regenerate with the version pinned by the dev dependencies.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _proto_files(root: Path) -> list[Path]:
    """Proto sources relative to root/proto (protoc's virtual paths), sorted."""
    proto_dir = root / "proto"
    return sorted(p.relative_to(proto_dir) for p in proto_dir.rglob("*.proto"))


def _expected_outputs(protos: list[Path]) -> list[Path]:
    out = []
    for rel in protos:
        stem = rel.with_suffix("")
        out.extend(stem.parent / (stem.name + suffix) for suffix in GENERATED_SUFFIXES)
    return out


def _existing_generated(root: Path, protos: list[Path]) -> list[Path]:
    """Generated-looking files currently in the package folders that protos map to."""
    found = []
    for d in sorted({rel.parent for rel in protos}):
        base = root / d
        if base.is_dir():
            found.extend(
                f.relative_to(root)
                for f in base.iterdir()
                if f.is_file() and f.name.endswith(GENERATED_SUFFIXES)
            )
    return sorted(found)


def _run_protoc(root: Path, protos: list[Path], out_dir: Path) -> None:
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:  # pragma: no cover - environment problem
        sys.exit("gen_proto: grpcio-tools is not installed (pip install -e '.[dev]')")
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"--proto_path={root / 'proto'}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(p.as_posix() for p in protos),
    ]
    rc = protoc.main(args)
    if rc != 0:
        sys.exit(f"gen_proto: protoc failed with exit code {rc}")


def _version_hint(root: Path, stale: list[Path]) -> str:
    """Name the grpcio-tools versions involved when they differ (the usual cause)."""
    try:
        from importlib.metadata import version

        installed = version("grpcio-tools")
    except Exception:  # pragma: no cover
        return ""
    for rel in stale:
        if rel.name.endswith("_pb2_grpc.py") and (root / rel).is_file():
            m = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", (root / rel).read_text())
            if m and m.group(1) != installed:
                return (
                    f"\nnote: committed files were generated with grpcio-tools {m.group(1)}, "
                    f"installed is {installed}"
                )
    return ""


def check(root: Path, protos: list[Path]) -> int:
    expected = _expected_outputs(protos)
    with tempfile.TemporaryDirectory(prefix="saguaro-gen-proto-") as tmp:
        tmp_dir = Path(tmp)
        _run_protoc(root, protos, tmp_dir)
        problems: list[tuple[Path, str]] = []
        for rel in expected:
            fresh, committed = tmp_dir / rel, root / rel
            if not fresh.is_file():  # pragma: no cover - protoc contract
                sys.exit(f"gen_proto: protoc did not produce {rel}")
            if not committed.is_file():
                problems.append((rel, "missing"))
            elif not filecmp.cmp(fresh, committed, shallow=False):
                problems.append((rel, "stale"))
        for rel in _existing_generated(root, protos):
            if rel not in expected:
                problems.append((rel, "orphaned: no .proto source"))
    if problems:
        print("gen_proto --check: generated code is out of date:", file=sys.stderr)
        for rel, why in problems:
            print(f"  {rel.as_posix()}: {why}", file=sys.stderr)
        print(
            "run `python scripts/gen_proto.py` and commit the result"
            + _version_hint(root, [rel for rel, _ in problems]),
            file=sys.stderr,
        )
        return 1
    print(f"gen_proto --check: {len(expected)} generated files up to date")
    return 0


def generate(root: Path, protos: list[Path]) -> int:
    expected = _expected_outputs(protos)
    with tempfile.TemporaryDirectory(prefix="saguaro-gen-proto-") as tmp:
        tmp_dir = Path(tmp)
        _run_protoc(root, protos, tmp_dir)
        for rel in expected:
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            data = (tmp_dir / rel).read_bytes()
            if not dest.is_file() or dest.read_bytes() != data:
                dest.write_bytes(data)
                print(f"wrote {rel.as_posix()}")
    for rel in _existing_generated(root, protos):
        if rel not in expected:
            (root / rel).unlink()
            print(f"removed orphan {rel.as_posix()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temporary folder and compare with the committed files",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="repository root holding proto/ and the package folders (default: this checkout)",
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    protos = _proto_files(root)
    if not protos:
        sys.exit(f"gen_proto: no .proto files under {root / 'proto'}")
    return check(root, protos) if args.check else generate(root, protos)


if __name__ == "__main__":
    sys.exit(main())
