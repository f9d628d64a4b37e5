"""The demo's disk images (qemu-img) and catalogue sources.

    python demo/make_content.py DEMO_DIR STAGE [MIB]

STAGE 1: three small qcow2 images and two catalogues (endorsers cern-demo and desy-demo).
STAGE 2: a new version of "Debian base" (alpha v2) replaces v1 in cern-demo's catalogue.
STAGE N > 2: the same with alpha vN (make scale's further rollouts: a new version each time).
Images are made from pseudo-random raw data so that every byte has to travel; MIB (default 8) is the size of
the images this run makes (an image made by an earlier run is kept as it is): make scale makes stage 1 with 1 MiB
images, so that its first rollout to hundreds of hosts moves little data, and later stages at 8 MiB.
"""

import json
import os
import random
import subprocess
import sys

import yaml

CERN_LIST = "6d0c4a1e-3f2b-4e8d-9a7c-1b2c3d4e5f60"
DESY_LIST = "7e1d5b2f-4a3c-4f9e-8b8d-2c3d4e5f6a71"
ALPHA = "a1a1a1a1-0000-4000-8000-00000000a001"
BETA = "b2b2b2b2-0000-4000-8000-00000000b002"
GAMMA = "c3c3c3c3-0000-4000-8000-00000000c003"
SIZE = 8 * 1024 * 1024


def make_image(directory, name, seed, size=SIZE):
    path = os.path.join(directory, name)
    if os.path.exists(path):
        return path
    raw = path + ".raw"
    generator = random.Random(seed)
    with open(raw, "wb") as handle:
        for _block in range(size // 65536):
            handle.write(generator.randbytes(65536))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path + ".tmp"], check=True)
    os.rename(path + ".tmp", path)
    os.unlink(raw)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", path], check=True, stdout=subprocess.PIPE).stdout)
    print("  %s: %s, virtual size %d MiB, %d bytes on disk" % (name, info["format"], info["virtual-size"] >> 20, os.path.getsize(path)))
    return path


def image(identifier, title, name, version, path, os_name, **extra):
    entry = {"dc:identifier": identifier, "dc:title": title, "dc:description": title + " (vmic.fleet demo)",
             "hv:uri": "https://repo/images/" + name, "hv:version": version, "hv:hypervisor": "kvm", "hv:format": "qcow2",
             "sl:arch": "x86_64", "sl:os": "Linux", "sl:osversion": os_name, "file": path}
    entry.update(extra)
    return entry


def main(demo, stage, size=SIZE):
    images = os.path.join(demo, "images")
    catalogues = os.path.join(demo, "catalogues")
    os.makedirs(images, exist_ok=True)
    os.makedirs(catalogues, exist_ok=True)
    alpha_version = str(stage)
    alpha_name = "debian-base-%s.qcow2" % alpha_version
    alpha = make_image(images, alpha_name, "alpha-%s" % alpha_version, size)
    beta = make_image(images, "sl-worker-1.qcow2", "beta-1", size)
    gamma = make_image(images, "test-appliance-1.qcow2", "gamma-1", size)
    cern = {
        "list": {"dc:identifier": CERN_LIST, "dc:title": "CERN demo images", "dc:description": "Images endorsed by cern-demo",
                 "dc:source": "https://repo/", "hv:uri": "https://repo/lists/cern-demo.list", "ad:vo": "demo"},
        "endorser": {"dc:creator": "cern-demo endorser", "hv:email": "images@cern-demo.invalid"},
        "images": [image(ALPHA, "Debian base", alpha_name, alpha_version, alpha, "Debian 12"),
                   image(BETA, "SL worker node", "sl-worker-1.qcow2", "1", beta, "Scientific Linux 7")],
    }
    desy = {
        "list": {"dc:identifier": DESY_LIST, "dc:title": "DESY demo images", "dc:description": "Images endorsed by desy-demo",
                 "dc:source": "https://repo/", "hv:uri": "https://repo/lists/desy-demo.list", "ad:vo": "demo"},
        "endorser": {"dc:creator": "desy-demo endorser", "hv:email": "images@desy-demo.invalid"},
        "images": [image(GAMMA, "Test appliance", "test-appliance-1.qcow2", "1", gamma, "Debian 12")],
    }
    for name, data in (("cern-demo", cern), ("desy-demo", desy)):
        with open(os.path.join(catalogues, name + ".yml"), "w") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
    print("  catalogues: %s (stage %d)" % (catalogues, stage))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or not all(arg.isdigit() and 1 <= int(arg) for arg in sys.argv[2:]) or (
            len(sys.argv) == 4 and int(sys.argv[3]) > 1024):
        sys.exit("usage: make_content.py DEMO_DIR STAGE (1, 2, ...) [MIB (1-1024, default 8)]")
    main(os.path.abspath(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) * 1024 * 1024 if len(sys.argv) == 4 else SIZE)
