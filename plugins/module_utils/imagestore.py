# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image store on a hypervisor.

Layout (``store_dir``, one filesystem so that every move is a rename)::

    <store_dir>/<identifier>/<version>/<file name>   the verified image, read-only (0444)
    <store_dir>/<identifier>/<version>.json          its signed metadata + verification record
    <store_dir>/<identifier>/<version>.torrent       the checked .torrent (to seed it again from another version)
    <store_dir>/<identifier>/current                 symlink -> <version>/<file name>
    <store_dir>/.partial/<identifier>/<version>/      downloads in progress (the engine writes here; 0711 so
                                                      an engine running as its own user reaches its dirs)
    <store_dir>/.partial/progress.json                progress of the current or last transfer (write_progress)
    <archive_dir>/<identifier>/<version>/...          retired images, when retiring by archive

An image is in the store exactly when its ``<version>.json`` exists: the file is verified (size and
sha512 of every byte) in ``.partial``, renamed into place, then the metadata is written atomically and
``current`` is switched atomically. Nothing half-written is ever visible outside ``.partial``.
A committed image and its directories are root's (0444 / 0755), whoever downloaded it; ``verify_all``
hashes them again. A new version with the same bytes is a hard link to the held file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import time
from stat import S_ISLNK, S_ISREG

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import fsync_dir, read_limited, write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.errors import StoreError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import MAX_TORRENT_BYTES, UUID_LOWER_RE
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import image_version_problem

PARTIAL = ".partial"
META_SUFFIX = ".json"
TORRENT_SUFFIX = ".torrent"
CURRENT = "current"
HASH_CHUNK = 4 * 1024 * 1024
MAX_META_BYTES = 1024 * 1024
PROGRESS_FILE = "progress.json"
# A progress entry is about 200 bytes: room for thousands of images in one transfer.
MAX_PROGRESS_BYTES = 4 * 1024 * 1024


def file_digest(path):
    """sha512 (hex) and size of a file, read in chunks."""
    digest, size = hashlib.sha512(), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _proc_pids():
    try:
        return [pid for pid in os.listdir("/proc") if pid.isdigit()]
    except OSError:
        return []


def _mapped_paths(pid):
    """(path, writable shared mapping) of every file mapping of a process (``/proc/<pid>/maps``)."""
    try:
        with open(os.path.join("/proc", pid, "maps"), "rb") as handle:
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            path = fields[5]
            if path.endswith(" (deleted)"):
                path = path[:-len(" (deleted)")]
            yield path, "w" in fields[1] and "s" in fields[1]


def open_paths(paths):
    """The subset of ``paths`` that some process holds open (scans /proc/*/fd and /proc/*/maps)."""
    wanted = set(os.path.realpath(path) for path in paths)
    found = set()
    if not wanted or not os.path.isdir("/proc"):
        return found
    for pid in _proc_pids():
        fd_dir = os.path.join("/proc", pid, "fd")
        try:
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(os.path.join(fd_dir, fd))
                except OSError:
                    continue
                if target in wanted:
                    found.add(target)
        except OSError:
            pass
        for path, _writable in _mapped_paths(pid):
            if path in wanted:
                found.add(path)
    return found


def _runs_as_root(pid):
    """Whether every uid (real, effective, saved, filesystem) of a process is 0 (/proc/<pid>/status)."""
    try:
        with open(os.path.join("/proc", pid, "status"), "rb") as handle:
            for line in handle.read().decode("ascii", "replace").splitlines():
                if line.startswith("Uid:"):
                    return all(uid == "0" for uid in line.split()[1:])
    except OSError:
        pass
    return False


def writers(path):
    """Processes other than root's that can write the file at ``path`` (same inode): open for writing or mapped
    shared-writable. Root's processes (the libtorrent engine) can write any file anyway and are not counted.

    Returns ``["<pid> fd <n>" | "<pid> maps"]``; empty when no such process can write it through an open handle.
    """
    stat = os.stat(path)
    inode = (stat.st_dev, stat.st_ino)
    found = []
    for pid in _proc_pids():
        if _runs_as_root(pid):
            continue
        fd_dir = os.path.join("/proc", pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.stat(os.path.join(fd_dir, fd))
                if (target.st_dev, target.st_ino) != inode:
                    continue
                with open(os.path.join("/proc", pid, "fdinfo", fd), "rb") as handle:
                    info = handle.read().decode("ascii", "replace")
            except OSError:
                continue
            flags = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("flags:")]
            if flags and int(flags[0], 8) & os.O_ACCMODE != os.O_RDONLY:
                found.append("%s fd %s" % (pid, fd))
        try:
            real = os.path.realpath(path)
            if any(mapped == real and writable for mapped, writable in _mapped_paths(pid)):
                found.append("%s maps" % pid)
        except OSError:
            continue
    return found


def secure_file(path, what):
    """Make the regular file at ``path`` (not a symlink) root's and read-only; refuse one that a process can still write.

    Returns its (st_dev, st_ino). Run as root it also takes ownership (an engine user may have written the file).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise StoreError("%s: %s cannot be opened: %s" % (what, path, exc.strerror or exc))
    try:
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode):
            raise StoreError("%s: %s is not a regular file" % (what, path))
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)
    busy = writers(path)
    if busy:
        raise StoreError("%s: %s is still open for writing by process %s" % (what, path, ", ".join(busy)))
    return stat.st_dev, stat.st_ino


def check_file(path, sha512, size, what):
    """Check size and sha512 of the regular file at ``path``; return None or the reason it is wrong."""
    try:
        stat = os.lstat(path)
    except OSError as exc:
        return "%s: file %s is missing: %s" % (what, path, exc.strerror)
    if not S_ISREG(stat.st_mode):
        return "%s: %s is not a regular file" % (what, path)
    if stat.st_size != size:
        return "%s: %s has %d bytes, the signed list says %d" % (what, path, stat.st_size, size)
    try:
        digest, _size = file_digest(path)
    except OSError as exc:
        return "%s: %s cannot be read: %s" % (what, path, exc.strerror or exc)
    if not hmac.compare_digest(digest, sha512):
        return "%s: sha512 of %s does not match the signed list" % (what, path)
    return None


def _check_names(identifier, version):
    if not UUID_LOWER_RE.fullmatch(identifier):
        raise StoreError("image identifier %r is not a lower-case UUID" % (identifier,))
    problem = image_version_problem(version)
    if problem:
        raise StoreError("image %s: version %r cannot name a directory: it %s" % (identifier, version, problem))


class StoredImage(object):
    """An image the store holds (its metadata file exists): what image_sync committed of a verified Image.

    ``meta`` is the metadata file as written at commit; its fields are read through the attributes below
    (None when a store of an earlier release did not record one).
    """

    def __init__(self, store, identifier, version, meta):
        self.store = store
        self.identifier = identifier
        self.version = version
        self.meta = meta
        self.name = meta.get("name")
        self.endorser = meta.get("endorser")          # None: committed before the store recorded endorsers
        self.list_identifier = meta.get("list")
        self.sha512 = meta.get("sha512")
        self.size = meta.get("size")
        self.title = meta.get("title")
        self.engine_key = meta.get("engine_key")

    def describe(self):
        """``<identifier> <version> (<title>)``, as imagelist.Image.describe names an image."""
        return "%s %s (%s)" % (self.identifier, self.version, self.title)

    @property
    def path(self):
        """Path of the image file."""
        return os.path.join(self.store.store_dir, self.identifier, self.version, self.name)

    @property
    def directory(self):
        """The directory that holds the image file (the engine seeds it from there)."""
        return os.path.join(self.store.store_dir, self.identifier, self.version)

    def torrent(self):
        """The bytes of the checked .torrent the image was committed with, or None (kept since this store version)."""
        path = os.path.join(self.store.store_dir, self.identifier, self.version + TORRENT_SUFFIX)
        try:
            return read_limited(path, MAX_TORRENT_BYTES)
        except OSError:
            return None

    def to_dict(self):
        """Plain data for module results."""
        return {
            "identifier": self.identifier,
            "version": self.version,
            "path": self.path,
            "size": self.size,
            "sha512": self.sha512,
            "list": self.list_identifier,
            "title": self.title,
            "verified_at": self.meta.get("verified_at"),
            "btih_v1": self.meta.get("btih_v1"),
        }


class ImageStore(object):
    """The verified images of one hypervisor."""

    def __init__(self, store_dir, archive_dir=None):
        self.store_dir = os.path.abspath(store_dir)
        self.archive_dir = os.path.abspath(archive_dir) if archive_dir else None

    def ensure(self):
        """Create the store and its partial area (mode 0755 / 0711)."""
        for path, mode in ((self.store_dir, 0o755), (os.path.join(self.store_dir, PARTIAL), 0o711)):
            if not os.path.isdir(path):
                os.makedirs(path, mode=mode)
            os.chmod(path, mode)

    def partial_dir(self, identifier, version):
        """Where the engine downloads this image to."""
        _check_names(identifier, version)
        return os.path.join(self.store_dir, PARTIAL, identifier, version)

    def final_dir(self, identifier, version):
        """Where the verified image lives."""
        _check_names(identifier, version)
        return os.path.join(self.store_dir, identifier, version)

    def images(self):
        """Every image in the store, sorted by identifier and version."""
        result = []
        if not os.path.isdir(self.store_dir):
            return result
        for identifier in sorted(os.listdir(self.store_dir)):
            directory = os.path.join(self.store_dir, identifier)
            if not UUID_LOWER_RE.fullmatch(identifier) or not os.path.isdir(directory):
                continue
            for entry in sorted(os.listdir(directory)):
                if not entry.endswith(META_SUFFIX):
                    continue
                version = entry[:-len(META_SUFFIX)]
                path = os.path.join(directory, entry)
                try:
                    meta = json.loads(read_limited(path, MAX_META_BYTES).decode("utf-8"))
                except (ValueError, UnicodeDecodeError, OSError) as exc:
                    raise StoreError("image store %s: metadata %s is unreadable: %s" % (self.store_dir, path, exc))
                result.append(StoredImage(self, identifier, version, meta))
        return result

    def find(self, identifier, version):
        """The stored image with this identifier and version, or None."""
        for image in self.images():
            if image.identifier == identifier and image.version == version:
                return image
        return None

    def free_bytes(self):
        """Bytes available to this process on the store's filesystem."""
        self.ensure()
        stat = os.statvfs(self.store_dir)
        return stat.f_bavail * stat.f_frsize

    def verify_partial(self, identifier, version, name, sha512, size):
        """Check size and sha512 of a finished download; return None or the reason it is wrong."""
        path = os.path.join(self.partial_dir(identifier, version), name)
        return check_file(path, sha512, size, "image %s: downloaded file" % identifier)

    def link_from(self, source, identifier, version, name):
        """Hard-link the file ``source`` (a held image with the same bytes) into the final dir of another version.

        Returns the new path; the caller checks it (same inode, size, sha512) before :meth:`commit`.
        """
        final = self.final_dir(identifier, version)
        target = os.path.join(final, name)
        self.make_final_dir(identifier, version)
        try:
            if os.path.lexists(target):
                raise StoreError("image %s: %s already exists" % (identifier, target))
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            raise StoreError("image %s: cannot link %s to %s: %s" % (identifier, source, target, exc.strerror or exc))
        return target

    def make_final_dir(self, identifier, version):
        """Create the final dir of an image (and its identifier dir): root's (when run as root), 0755."""
        final = self.final_dir(identifier, version)
        for path in (os.path.dirname(final), final):
            if not os.path.isdir(path):
                os.mkdir(path, 0o755)
            if os.geteuid() == 0:
                os.lchown(path, 0, 0)
            os.chmod(path, 0o755)
        return final

    def remove_final_dir(self, identifier, version):
        """Undo :meth:`make_final_dir` for an image that is not committed: remove its final dir, then its identifier
        dir, each only when empty (a held version of the same identifier keeps the identifier dir)."""
        final = self.final_dir(identifier, version)
        for path in (final, os.path.dirname(final)):
            if os.path.islink(path) or not os.path.isdir(path) or os.listdir(path):
                return
            os.rmdir(path)

    def take_ownership(self, image):
        """Make a held image root's and read-only (file 0444, directories 0755) when it is not already.

        Stores of earlier releases left images and their directories to an engine's own user (rtorrent), who
        could then rewrite or replace them. Returns True when something was changed.
        """
        directory = self.final_dir(image.identifier, image.version)
        changed = False
        for path, mode in ((os.path.dirname(directory), 0o755), (directory, 0o755), (image.path, 0o444)):
            stat = os.lstat(path)
            if S_ISLNK(stat.st_mode):
                raise StoreError("image %s %s: %s is a symbolic link" % (image.identifier, image.version, path))
            wrong_owner = os.geteuid() == 0 and (stat.st_uid, stat.st_gid) != (0, 0)
            if wrong_owner or (stat.st_mode & 0o7777) != mode:
                changed = True
                if path == image.path:
                    secure_file(path, "image %s %s" % (image.identifier, image.version))
                else:
                    self.make_final_dir(image.identifier, image.version)
        return changed

    def commit(self, identifier, version, name, meta, torrent=None):
        """Publish a verified image: make it root's and read-only, write its metadata, switch ``current``.

        The file must already be in :meth:`final_dir` (moved there by a rename or linked); a file that a
        process still holds open for writing is refused. ``torrent`` (the checked .torrent) is kept beside the
        metadata, so that the engine can seed the image again from another directory.
        """
        final = os.path.join(self.make_final_dir(identifier, version), name)
        if not os.path.isfile(final) or os.path.islink(final):
            raise StoreError("image %s: %s is not in place" % (identifier, final))
        secure_file(final, "image %s" % identifier)
        record = dict(meta)
        record.update({"identifier": identifier, "version": version, "name": name,
                       "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        directory = os.path.join(self.store_dir, identifier)
        if torrent is not None:
            write_atomic(os.path.join(directory, version + TORRENT_SUFFIX), bytes(torrent), 0o644)
        write_atomic(os.path.join(directory, version + META_SUFFIX),
                     (json.dumps(record, sort_keys=True, indent=2) + "\n").encode("utf-8"), 0o644)
        self._switch_current(directory, os.path.join(version, name))

    def progress_path(self):
        """The progress file of the current or last transfer (in the partial area)."""
        return os.path.join(self.store_dir, PARTIAL, PROGRESS_FILE)

    def write_progress(self, progress):
        """Write the progress of a transfer (a mapping, as JSON) atomically, mode 0644, for image_info to read.

        StoreError when it is larger than MAX_PROGRESS_BYTES (the reader would refuse it).
        """
        data = json.dumps(progress, sort_keys=True).encode("utf-8")
        if len(data) > MAX_PROGRESS_BYTES:
            raise StoreError("image store %s: progress of %d bytes is larger than the limit of %d bytes"
                             % (self.store_dir, len(data), MAX_PROGRESS_BYTES))
        write_atomic(self.progress_path(), data, 0o644)

    def read_progress(self):
        """The progress of the current or last transfer as written by :meth:`write_progress`; {} when there is none.

        StoreError naming the file when it is larger than MAX_PROGRESS_BYTES or not a JSON mapping.
        """
        path = self.progress_path()
        try:
            progress = json.loads(read_limited(path, MAX_PROGRESS_BYTES).decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError, VmicError) as exc:
            raise StoreError("image store %s: progress file %s is unreadable: %s" % (self.store_dir, path, exc))
        if not isinstance(progress, dict):
            raise StoreError("image store %s: progress file %s is not a JSON object" % (self.store_dir, path))
        return progress

    def verify_all(self):
        """Hash every stored image again (size and sha512 against its metadata); returns the mismatches.

        Each mismatch is ``{identifier, version, path, reason}``.
        """
        corrupt = []
        for image in self.images():
            sha512, size = image.meta.get("sha512"), image.meta.get("size")
            what = "image %s %s" % (image.identifier, image.version)
            if not isinstance(sha512, str) or not isinstance(size, int) or not image.name:
                reason = "%s: its metadata gives no sha512, size or name" % what
            else:
                reason = check_file(image.path, sha512, size, what)
            if reason:
                corrupt.append({"identifier": image.identifier, "version": image.version, "path": image.path, "reason": reason})
        return corrupt

    @staticmethod
    def _switch_current(directory, target):
        link = os.path.join(directory, CURRENT)
        tmp = os.path.join(directory, ".%s.%d" % (CURRENT, os.getpid()))
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
        fsync_dir(directory)

    def in_use(self, images):
        """The subset of stored images whose file some process holds open."""
        busy = open_paths([image.path for image in images])
        return [image for image in images if os.path.realpath(image.path) in busy]

    def retire(self, image, mode="archive"):
        """Remove an image from the store: archive (move) or delete it. Metadata goes first."""
        directory = os.path.join(self.store_dir, image.identifier)
        meta_path = os.path.join(directory, image.version + META_SUFFIX)
        version_dir = os.path.join(directory, image.version)
        if mode == "archive":
            if not self.archive_dir:
                raise StoreError("image %s: retiring by archive needs an archive directory" % image.identifier)
            target = os.path.join(self.archive_dir, image.identifier)
            if not os.path.isdir(target):
                os.makedirs(target, mode=0o750)
        os.unlink(meta_path)
        torrent_path = os.path.join(directory, image.version + TORRENT_SUFFIX)
        if os.path.isfile(torrent_path):
            if mode == "archive":
                os.replace(torrent_path, os.path.join(target, image.version + TORRENT_SUFFIX))
            else:
                os.unlink(torrent_path)
        link = os.path.join(directory, CURRENT)
        if os.path.islink(link) and os.readlink(link).split(os.sep)[0] == image.version:
            os.unlink(link)
        if os.path.isdir(version_dir):
            if mode == "archive":
                destination = os.path.join(target, image.version)
                if os.path.exists(destination):
                    shutil.rmtree(destination)
                shutil.move(version_dir, destination)
                with open(destination + META_SUFFIX, "w") as handle:
                    json.dump(image.meta, handle, sort_keys=True, indent=2)
            else:
                shutil.rmtree(version_dir)
        fsync_dir(directory)
        try:
            os.rmdir(directory)
        except OSError:
            pass

    def discard_partial(self, identifier, version):
        """Delete a download in progress (after a verification failure, or one no longer planned)."""
        path = self.partial_dir(identifier, version)
        if os.path.isdir(path):
            shutil.rmtree(path)
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass

    def partials(self):
        """(identifier, version) of every download directory in the partial area."""
        found = []
        root = os.path.join(self.store_dir, PARTIAL)
        if not os.path.isdir(root):
            return found
        for identifier in sorted(os.listdir(root)):
            directory = os.path.join(root, identifier)
            if not UUID_LOWER_RE.fullmatch(identifier) or os.path.islink(directory) or not os.path.isdir(directory):
                continue
            for version in sorted(os.listdir(directory)):
                path = os.path.join(directory, version)
                if image_version_problem(version) is None and os.path.isdir(path) and not os.path.islink(path):
                    found.append((identifier, version))
        return found


def store_info(store, engine, verify=False):
    """What a hypervisor holds and what its engine is doing, as plain data (the image_info module's result).

    ``{images, corrupt, progress, torrents, engine_error}``: the store's images (:meth:`StoredImage.to_dict`),
    with ``verify`` the ones whose file no longer matches its metadata (:meth:`ImageStore.verify_all`), the
    progress of the current or last transfer, and ``engine.status()``. An engine that cannot be asked is
    reported in ``engine_error``, not raised; a store that cannot be read raises StoreError.
    """
    info = {"images": [image.to_dict() for image in store.images()], "corrupt": store.verify_all() if verify else [],
            "progress": store.read_progress(), "torrents": [], "engine_error": None}
    try:
        info["torrents"] = engine.status()
    except VmicError as exc:
        info["engine_error"] = str(exc)
    return info
