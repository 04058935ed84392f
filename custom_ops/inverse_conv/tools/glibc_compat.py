"""Keeps the op library loadable on glibc older than 2.34 when it is linked on a newer one.

The CUDA runtime, linked statically, calls dlopen, pthread_*, sem_* and shm_*. glibc 2.34 moved
them from libdl, libpthread and librt into libc under the new version GLIBC_2.34, so a library
linked on glibc >= 2.34 asks for GLIBC_2.34 and will not load on RHEL 8, Ubuntu 20.04 or Debian 11
(auditwheel then tags the wheel manylinux_2_34). Every such symbol keeps its old version in libc
as a compatibility symbol. setup.py therefore relinks against stub libraries named libdl.so.2,
libpthread.so.0 and librt.so.1 that define each symbol at that old version: the library then asks
for, say, dlopen@GLIBC_2.2.5 from libdl.so.2, which old glibc has there and new glibc provides
from libc (how every program linked before 2.34 still runs).

    stub_folder = write_stubs(library, scratch)   # None: nothing to do
"""

import os
import re
import subprocess

NEW_VERSION = (2, 34)
# The library that held each family before glibc 2.34.
HOMES = (("dl", "libdl.so.2"), ("shm_", "librt.so.1"), ("pthread_", "libpthread.so.0"),
         ("sem_", "libpthread.so.0"))


def _version(text):
  return tuple(int(part) for part in text.split("_", 1)[1].split("."))


def _dynamic_symbols(path):
  """[(name, version, hidden)] of an ELF file's dynamic symbol table (objdump -T)."""
  out = subprocess.run(["objdump", "-T", path], capture_output=True, text=True, check=True).stdout
  found = []
  for match in re.finditer(r"\s(\(?)(GLIBC_[\d.]+)\)?\s+(\S+)$", out, re.M):
    found.append((match.group(3), match.group(2), match.group(1) == "("))
  return found


def needs_new_glibc(library):
  """The undefined symbols `library` asks for at GLIBC_2.34 or later."""
  out = subprocess.run(["objdump", "-T", library], capture_output=True, text=True,
                       check=True).stdout
  undefined = re.finditer(r"\*UND\*.*\s\(?(GLIBC_[\d.]+)\)?\s+(\S+)$", out, re.M)
  return sorted({m.group(2) for m in undefined if _version(m.group(1)) >= NEW_VERSION})


def _old_versions(names):
  """{name: its oldest version in this libc}, from libc's compatibility symbols."""
  libc = subprocess.run(["g++", "-print-file-name=libc.so.6"], capture_output=True, text=True,
                        check=True).stdout.strip()
  oldest = {}
  for name, version, _ in _dynamic_symbols(libc):
    if name in names and _version(version) < NEW_VERSION:
      if name not in oldest or _version(version) < _version(oldest[name]):
        oldest[name] = version
  missing = sorted(set(names) - set(oldest))
  if missing:
    raise RuntimeError(f"no pre-2.34 version of {missing} in {libc}")
  return oldest


def _home(name):
  for prefix, home in HOMES:
    if name.startswith(prefix):
      return home
  raise RuntimeError(f"{name} needs GLIBC_2.34, and glibc_compat.py knows no older home for it")


def write_stubs(library, scratch):
  """Builds the stub libraries for what `library` needs at GLIBC_2.34 or later, in
  scratch/glibc_stubs; returns that folder (link with -L it and -l:NAME for each stub, before
  libc), or None when the library needs nothing that new."""
  names = needs_new_glibc(library)
  if not names:
    return None
  folder = os.path.join(scratch, "glibc_stubs")
  os.makedirs(folder, exist_ok=True)
  by_home = {}
  for name, version in _old_versions(names).items():
    by_home.setdefault(_home(name), {}).setdefault(version, []).append(name)
  for home, versions in by_home.items():
    script, previous = [], None
    for version in sorted(versions, key=_version):  # nodes in order, each inheriting the last
      body = " ".join(f"{n};" for n in sorted(versions[version]))
      script.append(f"{version} {{ global: {body} }}" + (f" {previous};" if previous else ";"))
      previous = version
    with open(os.path.join(folder, home + ".map"), "w") as f:
      f.write("\n".join(script) + "\n")
    with open(os.path.join(folder, home + ".c"), "w") as f:
      f.write("".join(f"void {n}(void) {{}}\n" for v in versions.values() for n in v))
    subprocess.run(["gcc", "-shared", "-fPIC", "-nostdlib", f"-Wl,-soname,{home}",
                    f"-Wl,--version-script={os.path.join(folder, home + '.map')}",
                    os.path.join(folder, home + ".c"), "-o", os.path.join(folder, home)],
                   check=True)
  return folder


def link_flags(folder):
  """The linker arguments that put the stubs before libc."""
  return [f"-L{folder}"] + [f"-l:{name}" for name in sorted(os.listdir(folder))
                            if name.endswith((".so.0", ".so.1", ".so.2"))]
