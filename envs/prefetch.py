"""A cache-prefetch hint for numba kernels (LLVM's `llvm.prefetch`), which numba does not expose.

Hand-written because no library offers it for numba: the shading kernel reads one 32-byte record per
hit face, and a ScanNet++-sized mesh (~1M faces) keeps those records in tens of megabytes, so nearly
every read misses the caches; the kernel's body is long enough that the CPU cannot run far enough
ahead to overlap the misses by itself. Asking for the record of a pixel some iterations ahead hides
most of them: on the 840k-face mesh of `tst bench render`, the kernel right after a cast went from
~1.27 to ~0.73 ms at 128 px, and a whole frame from 1.70 to 1.3-1.5x the bare cast's time. A prefetch
never faults and never changes a result.
"""

from __future__ import annotations

import llvmlite.binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_READ, _KEEP_IN_ALL_LEVELS, _DATA = 0, 3, 1  # llvm.prefetch's rw, locality and cache-type arguments
# The intrinsic's name carries its pointer type: "p0" once LLVM has opaque pointers (LLVM 15+).
_NAME = "llvm.prefetch.p0" if llvmlite.binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, array, flat_index):
    """Start loading the cache line holding element `flat_index` of a C-contiguous array (the index into
    array.ravel()); returns nothing and has no effect on any value."""
    if not (isinstance(array, types.Array) and array.layout == "C" and isinstance(flat_index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array_type, index_type = signature.args
        data = context.make_array(array_type)(context, builder, args[0]).data
        index = context.cast(builder, args[1], index_type, types.intp)
        byte = ir.IntType(8).as_pointer()
        item_bytes = context.get_abi_sizeof(context.get_data_type(array_type.dtype))
        address = builder.gep(builder.bitcast(data, byte), [builder.mul(index, context.get_constant(types.intp, item_bytes))])
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]), _NAME)
        builder.call(function, [address, i32(_READ), i32(_KEEP_IN_ALL_LEVELS), i32(_DATA)])
        return context.get_dummy_value()

    return types.void(array, flat_index), codegen
