"""How the built libraries link the C++ runtime: libstdc++ as the shared libstdc++.so.6 that torch
uses, never a static copy inside our libraries. A second copy (a toolchain that links libstdc++
statically) breaks whatever C++ objects cross between the two: the stream c10::str formats error
messages in read another copy's locale facets, so a shape error lost its numbers (g++ 12) or
crashed the process (g++ 13, seen on a GPU machine's own build). Read off the ELF files with the
standard library alone (no readelf or nm needed)."""
import glob
import os
import struct
import sys

import pytest

import groupnorm_ext

PACKAGE = os.path.dirname(os.path.abspath(groupnorm_ext.__file__))
LIBRARIES = sorted(glob.glob(os.path.join(PACKAGE, "lib", "libgroupnorm_ext.so")) +
                   glob.glob(os.path.join(PACKAGE, "_C*.so")))

# Symbols only libstdc++ itself defines (not inline, not templates a header instantiates): the
# classic locale, a facet's id and ostream's integer insertion that c10::str uses.
LIBSTDCXX_ONLY = {"_ZNSt6locale7classicEv", "_ZNSt7num_putIcSt19ostreambuf_iteratorIcSt11char_traitsIcEEE2idE",
                  "_ZNSo9_M_insertIlEERSoT_"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF shared libraries (Linux)")


def read_dynamic(path):
    """(DT_NEEDED names, names of the symbols the file defines in its dynamic symbol table) of a
    64-bit little-endian ELF shared library."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path}: not a 64-bit little-endian ELF"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def strings(index):
        _, _, _, _, offset, size, *_ = sections[index]
        return lambda at: data[offset + at:data.index(b"\0", offset + at)].decode()

    needed, defined = [], set()
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind == 6:  # SHT_DYNAMIC
            name_of = strings(link)
            for at in range(offset, offset + size, entsize):
                tag, value = struct.unpack_from("<qQ", data, at)
                if tag == 1:  # DT_NEEDED
                    needed.append(name_of(value))
        elif kind == 11:  # SHT_DYNSYM
            name_of = strings(link)
            for at in range(offset, offset + size, entsize):
                name, _, _, shndx, _, _ = struct.unpack_from("<IBBHQQ", data, at)
                if shndx != 0:  # defined here
                    defined.add(name_of(name))
    return needed, defined


def test_libraries_were_found():
    assert len(LIBRARIES) == 2, LIBRARIES


@pytest.mark.parametrize("path", LIBRARIES, ids=os.path.basename)
def test_libstdcxx_is_the_shared_one(path):
    needed, defined = read_dynamic(path)
    assert "libstdc++.so.6" in needed, f"{os.path.basename(path)} does not load libstdc++.so.6: {needed}"
    copied = sorted(LIBSTDCXX_ONLY & defined)
    assert not copied, f"{os.path.basename(path)} holds its own copy of libstdc++ (defines {copied})"


def test_error_message_numbers_are_formatted():
    """The symptom itself, through a stream in our library: the message carries the rank."""
    import torch

    with pytest.raises(RuntimeError, match=r"Expected at least 2 dimensions for input tensor but received 1\b"):
        groupnorm_ext.group_norm(torch.randn(6), 3)
