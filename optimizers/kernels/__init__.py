"""Native CPU kernels of the sparse path (DESIGN.md section 3.1).

TensorFlow ops in one shared library, built from `cc/` on first use
(`optimizers.kernels.build` says where and how):

- `EmbedoptDedup`: sums the rows of repeated ids (sorted, deterministic);
- `EmbedoptSparseApply`: dedup + gather + update rule + scatter in one pass
  over the touched rows of a variable and its slots;
- `EmbedoptPooledLookup` / `EmbedoptPooledLookupGrad`: pooled lookup of bags
  of ids and its gradient, already deduplicated;
- `EmbedoptAllFinite`: whether a gradient holds no NaN or Inf, in one pass;
- `EmbedoptKeyIndex*`: `DynamicEmbedding`'s key -> row index, an
  open-addressing hash table kept as a resource: unique + lookup of a batch's
  keys in one op, and a step's removals and insertions in another;
- `EmbedoptDynamicPolicy`, `EmbedoptResidentLookup` (and its gradient),
  `EmbedoptFillRows`: the rest of `DynamicEmbedding`'s kernel path (a
  training step's admission, eviction, LRU log and new rows in one op, the
  lookup of the batch's rows through the unique op's grouping, slot resets
  in place).

`optimizers.kernels.ops` holds the Python wrappers. The TF-ops path stays the
fallback: callers ask `load()` or `status()` and take it when the kernels are
unavailable. `EMBEDOPT_KERNELS=off` turns them off. Tables and slots of 16 MB
or more are put on 2 MB pages the first time a kernel touches them (random
rows of a large table otherwise pay a TLB miss and a page walk each);
`EMBEDOPT_HUGE_PAGES=off` turns that off, `huge_pages()` says what applies.

Example:
    >>> from optimizers import kernels
    >>> available, reason = kernels.status()
"""

from __future__ import annotations

import logging
import os
import threading

import tensorflow as tf

from optimizers.kernels import build

_LOCK = threading.Lock()
_STATE: tuple | None = None  # (module or None, reason), set by the first load()
_OFF = ("off", "0", "false", "no")


def load():
    """Returns the loaded op module, or None when the kernels are unavailable.

    Builds the library on the first call in a process if no matching build is
    found (a few tens of seconds, once per machine), then loads it. The first
    time it is unavailable, one warning line says why.
    """
    global _STATE
    with _LOCK:
        if _STATE is None:
            _STATE = _load()
            if _STATE[0] is None:
                logging.getLogger(__name__).warning("embedopt kernels unavailable, using TF ops: %s", _STATE[1])
        return _STATE[0]


def status() -> tuple[bool, str]:
    """`(available, reason)`: whether the kernels load, and in one line why not.

    Calls `load()` (so the first call may build the library). When available,
    the reason names the loaded library.
    """
    module = load()
    return module is not None, _STATE[1]


def _load():
    setting = os.environ.get("EMBEDOPT_KERNELS", "").strip().lower()
    if setting in _OFF:
        return None, f"disabled by EMBEDOPT_KERNELS={setting}"
    try:
        path = build.find_or_build()
    except build.BuildError as error:
        return None, str(error)
    except OSError as error:  # an unwritable cache, a full disk
        return None, f"cannot build in {build.cache_root()}: {error}"
    try:
        module = tf.load_op_library(str(path))
    except (tf.errors.OpError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"cannot load {path}: {first_line}"
    from optimizers.kernels import ops  # noqa: F401  registers the pooled lookup's gradient with TensorFlow

    return module, f"loaded {path}"


HUGE_PAGES_ENV = "EMBEDOPT_HUGE_PAGES"
HUGE_PAGES_MIN_BYTES = 16 << 20  # common.h AdviseHugePages: smaller tables are within the TLB's reach
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages() -> str:
    """One line: whether the kernels put large tables on 2 MB pages here, and why (for `embedopt doctor`).

    The kernels advise every table and slot of 16 MB or more (MADV_HUGEPAGE,
    then MADV_COLLAPSE for the pages already there) the first time they
    touch it, unless `EMBEDOPT_HUGE_PAGES=off`; whether Linux honours it
    depends on its transparent-huge-page setting.
    """
    setting = os.environ.get(HUGE_PAGES_ENV, "").strip().lower()
    if setting in _OFF:
        return f"off ({HUGE_PAGES_ENV}={setting})"
    try:
        with open(_THP_SETTING, encoding="utf-8") as f:
            text = f.read()
        mode = text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        return "not available (no transparent huge pages on this system)"
    if mode == "never":
        return "no effect (transparent huge pages are 'never' here)"
    threshold = f"tables and slots of {HUGE_PAGES_MIN_BYTES >> 20} MB or more"
    if mode == "always":
        return f"on ({threshold}; transparent huge pages are 'always' here, so every large heap gets them anyway)"
    return f"on ({threshold} are advised; transparent huge pages: {mode})"


__all__ = ["HUGE_PAGES_ENV", "huge_pages", "load", "status"]
