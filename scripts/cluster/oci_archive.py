#!/usr/bin/env python3
"""Write a one-layer OCI image archive from host files, for `ctr images import`: the test
cluster's sandbox image (pause) without a registry or an image builder.

    oci_archive.py --name localhost/pause:3.4 --file /pause=/path/to/pause --entrypoint /pause out.tar

The manifest carries the annotation io.containerd.image.name, so containerd names the
imported image exactly --name.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile


def layer(files: list[str]) -> bytes:
    """An uncompressed tar of PATH_IN_IMAGE=HOST_FILE pairs, owned by root, modes kept."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for spec in files:
            destination, source = spec.split("=", 1)
            info = tar.gettarinfo(source, arcname=destination.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            with open(source, "rb") as content:
                tar.addfile(info, content)
    return buffer.getvalue()


def blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def as_json(document: dict[str, object]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the image reference, e.g. localhost/pause:3.4")
    parser.add_argument("--file", action="append", required=True, help="PATH_IN_IMAGE=HOST_FILE")
    parser.add_argument("--entrypoint", action="append", required=True, help="one argv element each")
    parser.add_argument("out")
    arguments = parser.parse_args()

    uncompressed = layer(arguments.file)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": arguments.entrypoint, "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(uncompressed).hexdigest()}"]},
    }
    with tarfile.open(arguments.out, "w") as tar:
        layer_ref = blob(tar, gzip.compress(uncompressed, mtime=0))
        config_ref = blob(tar, as_json(config))
        manifest_ref = blob(tar, as_json({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_ref},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_ref}],
        }))
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_ref,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": arguments.name,
                            "org.opencontainers.image.ref.name": arguments.name.rsplit(":", 1)[-1]},
        }]}
        for name, data in (("oci-layout", as_json({"imageLayoutVersion": "1.0.0"})), ("index.json", as_json(index))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
