"""The C prototypes of every liblustreapi function ``hsm.lustre.api`` loads,
as ``include/lustre/lustreapi.h`` declares them (lustre-release c881f8ebcb;
whitespace joined to one line, parameter names kept).

Tests check against this list: the binding loads exactly these functions,
with ctypes argument types that follow these declarations, and a stand-in
library must export each of them with the same prototype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Where the prototypes come from.
HEADER = "include/lustre/lustreapi.h"
LUSTRE_RELEASE = "c881f8ebcb"

#: The declarations, one string each, as the header writes them.
PROTOTYPES: tuple[str, ...] = (
    "int llapi_hsm_copytool_register(struct hsm_copytool_private **priv, const char *mnt, int archive_count, int *archives, int rfd_flags);",
    "int llapi_hsm_copytool_unregister(struct hsm_copytool_private **priv);",
    "int llapi_hsm_copytool_get_fd(struct hsm_copytool_private *ct);",
    "int llapi_hsm_copytool_recv(struct hsm_copytool_private *priv, struct hsm_action_list **hal, int *msgsize);",
    "int llapi_hsm_action_begin(struct hsm_copyaction_private **phcp, const struct hsm_copytool_private *ct, const struct hsm_action_item *hai, int restore_mdt_index, int restore_open_flags, bool is_error);",
    "int llapi_hsm_action_end(struct hsm_copyaction_private **phcp, const struct hsm_extent *he, int hp_flags, int errval);",
    "int llapi_hsm_action_progress(struct hsm_copyaction_private *hcp, const struct hsm_extent *he, __u64 total, int hp_flags);",
    "int llapi_hsm_action_get_dfid(const struct hsm_copyaction_private *hcp, struct lu_fid *fid);",
    "int llapi_hsm_action_get_fd(const struct hsm_copyaction_private *hcp);",
    "int llapi_hsm_state_get(const char *path, struct hsm_user_state *hus);",
    "int llapi_hsm_state_set(const char *path, __u64 setmask, __u64 clearmask, __u32 archive_id);",
    "int llapi_hsm_current_action(const char *path, struct hsm_current_action *hca);",
    "int llapi_hsm_request(const char *path, const struct hsm_user_request *request);",
    "struct hsm_user_request *llapi_hsm_user_request_alloc(int itemcount, int data_len);",
    "int llapi_get_data_version(int fd, __u64 *data_version, __u64 flags);",
    "int llapi_fid2path(const char *device, const char *fidstr, char *path, int pathlen, long long *recno, int *linkno);",
    "int llapi_path2fid(const char *path, struct lu_fid *fid);",
    "int llapi_open_by_fid(const char *lustre_dir, const struct lu_fid *fid, int open_flags);",
    "int llapi_get_mdt_index_by_fid(int fd, const struct lu_fid *fid, int *mdt_index);",
    "int llapi_hsm_import(const char *dst, int archive, const struct stat *st, unsigned long long stripe_size, int stripe_offset, int stripe_count, int stripe_pattern, char *pool_name, struct lu_fid *newfid);",
)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: its C type, normalised (``const char *``,
    ``struct lu_fid *``, ``__u64``), and its name."""

    ctype: str
    name: str


@dataclass(frozen=True, slots=True)
class Prototype:
    name: str
    restype: str
    params: tuple[Param, ...]
    text: str

    @property
    def signature(self) -> tuple[str, tuple[str, ...]]:
        """The return type and parameter types: what must match between two
        declarations of the function (parameter names may differ)."""
        return self.restype, tuple(p.ctype for p in self.params)


_DECL = re.compile(r"^\s*(?P<ret>[^()]*?[\s*])(?P<name>[A-Za-z_]\w*)\s*\((?P<params>[^()]*)\)\s*;?\s*$")
_PARAM = re.compile(r"^(?P<type>.*?[\s*])(?P<name>[A-Za-z_]\w*)$")


def normalise_type(ctype: str) -> str:
    """``const  struct lu_fid*`` -> ``const struct lu_fid *``: words joined
    by one space, the stars after one space."""
    stars = ctype.count("*")
    words = " ".join(ctype.replace("*", " ").split())
    return f"{words} {'*' * stars}" if stars else words


def parse_prototype(text: str) -> Prototype:
    """Parse one C declaration such as those in ``PROTOTYPES`` (no function
    pointers, no arrays). Raises ``ValueError`` when it is not one."""
    flat = " ".join(text.split())
    m = _DECL.match(flat)
    if m is None:
        raise ValueError(f"not a C function declaration: {text!r}")
    params: list[Param] = []
    body = m.group("params").strip()
    if body and body != "void":
        for k, raw in enumerate(body.split(",")):
            raw = raw.strip()
            pm = _PARAM.match(raw)
            if pm is None or not pm.group("type").strip():
                # an unnamed parameter: the whole text is its type
                params.append(Param(normalise_type(raw), f"arg{k}"))
            else:
                params.append(Param(normalise_type(pm.group("type")), pm.group("name")))
    return Prototype(m.group("name"), normalise_type(m.group("ret")), tuple(params), flat)


def parse_prototypes() -> dict[str, Prototype]:
    """``PROTOTYPES`` parsed, by function name."""
    out: dict[str, Prototype] = {}
    for text in PROTOTYPES:
        p = parse_prototype(text)
        out[p.name] = p
    return out


def names() -> frozenset[str]:
    """The names of the functions the binding loads."""
    return frozenset(parse_prototypes())
