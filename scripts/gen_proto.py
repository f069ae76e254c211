#!/usr/bin/env python3
"""Generate the Python gRPC code for the Hubble API from proto/ into src/tendril/hubble/api/.

Runs grpc_tools.protoc (--python_out, --grpc_python_out, --pyi_out) into a temporary directory,
rewrites the generated top-level imports (``from flow import flow_pb2``) into package imports
(``from tendril.hubble.api.flow import flow_pb2``) and moves the files into place. Nothing is
added to sys.path at run time. The generated files are not committed (see .gitignore).

Idempotent: does nothing when the outputs are newer than the inputs and were produced by the
same grpcio-tools version (a stamp file records it). ``--force`` regenerates unconditionally.

Usage: .venv/bin/python scripts/gen_proto.py [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_PKG = "tendril.hubble.api"
OUT_DIR = ROOT / "src" / "tendril" / "hubble" / "api"
STAMP = OUT_DIR / ".generated-stamp"
PACKAGES = ("flow", "observer", "relay", "peer")
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

_IMPORT_RE = re.compile(r"^(\s*)from (" + "|".join(PACKAGES) + r") import ", re.MULTILINE)


def _package_import(m: re.Match[str]) -> str:
    return f"{m.group(1)}from {OUT_PKG}.{m.group(2)} import "


def _protos() -> list[Path]:
    return sorted(PROTO_DIR.glob("*/*.proto"))


def _outputs() -> list[Path]:
    return [OUT_DIR / p.parent.name / (p.stem + s) for p in _protos() for s in SUFFIXES]


def _fingerprint() -> str:
    import grpc_tools

    h = hashlib.sha256()
    h.update(getattr(grpc_tools, "__version__", "").encode())
    try:
        from importlib.metadata import version

        h.update(version("grpcio-tools").encode())
        h.update(version("protobuf").encode())
    except Exception:  # pragma: no cover - metadata missing
        pass
    h.update(Path(__file__).read_bytes())
    for p in _protos():
        h.update(str(p.relative_to(PROTO_DIR)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def up_to_date() -> bool:
    if not STAMP.is_file():
        return False
    if not all(p.is_file() for p in _outputs()):
        return False
    return STAMP.read_text().strip() == _fingerprint()


def generate() -> None:
    from grpc_tools import protoc

    try:
        from importlib.resources import files

        include = str(files("grpc_tools") / "_proto")
    except Exception:  # pragma: no cover
        import grpc_tools

        include = str(Path(grpc_tools.__file__).parent / "_proto")

    protos = [str(p.relative_to(PROTO_DIR)) for p in _protos()]
    with tempfile.TemporaryDirectory(prefix="tendril-protoc-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"gen_proto: protoc failed with exit status {rc}")
        for pkg in PACKAGES:
            src_dir = Path(tmp) / pkg
            if not src_dir.is_dir():
                continue
            dst_dir = OUT_DIR / pkg
            dst_dir.mkdir(parents=True, exist_ok=True)
            init = dst_dir / "__init__.py"
            if not init.exists():
                init.write_text(f'"""Generated Hubble API package `{pkg}` (see scripts/gen_proto.py)."""\n')
            for f in sorted(src_dir.iterdir()):
                if not f.name.endswith(SUFFIXES):
                    continue
                text = _IMPORT_RE.sub(_package_import, f.read_text())
                tmp_out = dst_dir / (f.name + ".tmp")
                tmp_out.write_text(text)
                tmp_out.replace(dst_dir / f.name)
    STAMP.write_text(_fingerprint() + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="regenerate even when up to date")
    ap.add_argument("--quiet", "-q", action="store_true")
    ns = ap.parse_args(argv)
    if not ns.force and up_to_date():
        if not ns.quiet:
            print("gen_proto: up to date")
        return 0
    generate()
    if not ns.quiet:
        print(f"gen_proto: generated {len(_outputs())} files under {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
