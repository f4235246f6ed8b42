// XXH3 for the container's hashes (SPEC.md "Conventions"), through xxHash's
// x86 dispatcher where the library has one: the same values, computed with
// AVX2 or AVX-512 when the CPU has them instead of the SSE2 baseline the
// library is built for (about 3x on cached data). Every chunk's bytes are
// hashed twice on extraction (the chunk's raw hash, the section's content
// hash), so this is what keeps the content hash check cheap. Only the
// one-shot and update functions dispatch; reset and digest work on the same
// state either way.
#pragma once

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>
#if defined(HOTBOOT_XXH_DISPATCH)
#include <xxh_x86dispatch.h>  // redefines XXH3_64bits, XXH3_128bits_update, ... to their _dispatch forms
#endif
