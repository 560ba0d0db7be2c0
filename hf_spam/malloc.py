"""Keep freed memory in the process, so that a training step does not page-fault its tensors back in.

glibc's malloc serves a large block (over 128 KiB, a threshold that rises to at most 32 MiB as such blocks are
freed) with a fresh `mmap` and returns it to the kernel on `free`, and it trims the top of its heap once 128 KiB
or more lie free there. PyTorch's CPU allocator has no cache of its own, so a tensor that every step allocates
anew (the 28 MB of weight gradients of gpt2's last block, its activations, a trunk batch's hidden states) is
handed back to the kernel and then page-faulted and zeroed again, page by page: about 8,000 page faults per
training step of the tail, a quarter of its time. Raising both thresholds keeps freed blocks for reuse.

This is process-wide, which is why only entry points call it (`hf_spam.train.main`, `hf-spam predict`,
`hf-spam bench`). The cost: up to `RETAIN_BYTES` of freed memory stays mapped at the top of the heap until
the process exits.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>
RETAIN_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to `RETAIN_BYTES`; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl's mallopt accepts the call and does nothing
        return False
    applied = all(libc.mallopt(option, RETAIN_BYTES) == 1 for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))
    logger.debug("glibc malloc keeps freed blocks up to %d bytes: %s", RETAIN_BYTES, applied)
    return applied
